#!/usr/bin/env bash
# Prepare this host for development and tests: Debian packages, /dev/kvm
# permissions, a running libvirtd answering at qemu:///system, and the
# project's virtualenv (editable install with the `dev` extra).
#
# Idempotent; safe to run repeatedly as root on a fresh Debian 12 machine.
#
#   scripts/setup-host.sh              everything
#   scripts/setup-host.sh --no-daemon  packages + venv only (no kvm/libvirtd)
#
# Environment:
#   VENV   virtualenv path (default: <repo>/.venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
URI="qemu:///system"

WITH_DAEMON=1
for arg in "$@"; do
    case "$arg" in
        --no-daemon) WITH_DAEMON=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "setup-host: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { echo "setup-host: $*"; }
die() { echo "setup-host: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# --------------------------------------------------------------------------
# 1. Debian packages
# --------------------------------------------------------------------------
PACKAGES=(
    libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
    qemu-system-x86 qemu-utils libxml2-utils ovmf genisoimage
    qemu-system-common               # /usr/lib/qemu/virtiofsd (no virtiofsd package in bookworm)
    swtpm swtpm-tools                # emulated TPM (a VM's tpm:, Windows 11)
    dnsmasq-base iproute2 iptables   # libvirt virtual networks
    lvm2 e2fsprogs parted            # logical (vgcreate...), fs (mkfs.ext4) and disk pools (parted mklabel)
    python3-venv python3-dev gcc     # venv + building libvirt-python
    prometheus                       # promtool (alert rules) and a real server for the metrics test
    # tests/integration/test_systemd_unit.py: systemd as PID 1 in a container over a
    # debootstrapped tree. Neither starts a service: debootstrap has no maintainer
    # scripts; systemd-container's postinst creates /var/lib/machines and enables
    # machines.target (a target, no daemon), starting it only under systemd; its
    # dbus dependency is held back by the policy-rc.d below.
    systemd-container debootstrap
)

missing=()
for p in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
    [[ "$status" == ii* ]] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    # Packages must not start services (prometheus's init script would listen on
    # every address, port 9090): without systemd, invoke-rc.d asks policy-rc.d,
    # and 101 means "do not start". One already there (a container's) is kept.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    rc=0
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null || rc=$?
    [ "$own_policy" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" -eq 0 ] || die "apt-get install ${missing[*]} failed"
    # installed here for its binaries only (the tests start their own, on loopback):
    # not at boot either, where it would listen on every address
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        if [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ]; then
            systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        else
            update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
else
    log "Debian packages present"
fi

# sshd for the git source's tests, which start their own `sshd -D -f CONFIG` on
# 127.0.0.1. Installing Debian's openssh-server must not start a system sshd on
# every address: with systemd, ssh.service and ssh.socket are masked first;
# without it, only where policy-rc.d forbids starting services (containers).
ssh_status="$(dpkg-query -W -f='${db:Status-Abbrev}' openssh-server 2>/dev/null || true)"
if [[ "$ssh_status" != ii* ]]; then
    if [ -d /run/systemd/system ]; then
        systemctl mask ssh.service ssh.socket >/dev/null
        ssh_ok=1
    elif [ -x /usr/sbin/policy-rc.d ] && { /usr/sbin/policy-rc.d ssh start >/dev/null 2>&1; [ $? -eq 101 ]; }; then
        ssh_ok=1
    else
        ssh_ok=0
        log "not installing openssh-server: it would start a system sshd (the ssh tests skip)"
    fi
    if [ "$ssh_ok" -eq 1 ]; then
        log "installing openssh-server (no system sshd is started)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends openssh-server </dev/null >/dev/null
    fi
fi

# --------------------------------------------------------------------------
# 2. /dev/kvm + 3. libvirtd
# --------------------------------------------------------------------------
virsh_ok() { timeout 10 virsh -c "$URI" version >/dev/null 2>&1 </dev/null; }

# running NAME: a live (not zombie) process called NAME exists. Zombies matter:
# without systemd, PID 1 may be slow to reap a killed daemon.
running() {
    local pid state
    for pid in $(pgrep -x "$1" 2>/dev/null); do
        state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
        [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] && return 0
    done
    return 1
}

# start_daemon NAME: start NAME -d unless it runs; clear a stale pid file first.
start_daemon() {
    local name="$1" pidfile="/run/$1.pid"
    running "$name" && return 0
    if [ -e "$pidfile" ]; then
        log "removing stale $pidfile"
        rm -f "$pidfile"
    fi
    log "starting $name"
    "$name" -d </dev/null || die "'$name -d' failed; run '$name' in the foreground to see why"
}

if [ "$WITH_DAEMON" -eq 1 ]; then
    if [ -e /dev/kvm ]; then
        getent group kvm >/dev/null || groupadd --system kvm
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
        log "/dev/kvm: $(stat -c '%A %U:%G' /dev/kvm)"
    else
        log "WARNING: /dev/kvm does not exist; only type=qemu domains can run"
    fi

    # swtpm's local CA (a VM's emulated TPM): libvirtd runs swtpm_setup as the tss
    # user when that user exists as libvirtd starts, else as root. A CA first used as
    # root (libvirtd started before swtpm-tools made the user) keeps root-owned files
    # that swtpm_setup as tss cannot lock ("Need read/write rights on
    # /var/lib/swtpm-localca/.lock.swtpm-localca for user tss"): every TPM VM then
    # fails to start. Give them back to tss, as swtpm-tools' postinst sets the folder.
    if getent passwd tss >/dev/null && [ -d /var/lib/swtpm-localca ]; then
        chown -R tss:root /var/lib/swtpm-localca
    fi

    if virsh_ok; then
        log "libvirtd answers at $URI"
    else
        if [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ]; then
            log "starting libvirtd via systemd"
            systemctl start virtlogd.socket libvirtd.service || true
        else
            mkdir -p /run/libvirt
            start_daemon virtlogd
            start_daemon libvirtd
        fi
        deadline=$((SECONDS + 30))
        until virsh_ok; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "setup-host: ERROR: libvirtd does not answer at $URI after 30 s." >&2
                echo "setup-host: 'virsh -c $URI version' says:" >&2
                timeout 10 virsh -c "$URI" version </dev/null >&2 || true
                echo "setup-host: check 'pgrep -a libvirtd' and run 'libvirtd' in the" \
                     "foreground to see why it does not start." >&2
                exit 1
            fi
            sleep 0.5
        done
        log "libvirtd answers at $URI"
    fi
fi

# --------------------------------------------------------------------------
# 4. virtualenv
# --------------------------------------------------------------------------
STAMP="$VENV/.reconciler-installed"
want="$(sha256sum <"$ROOT/pyproject.toml" | cut -d' ' -f1)"

if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "virtualenv $VENV is broken (its python does not run); recreating"
    rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
    log "creating virtualenv $VENV ($(python3 --version 2>&1))"
    python3 -m venv "$VENV"
fi

have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$have" = "$want" ]; then
    log "virtualenv up to date ($VENV)"
else
    log "installing reconciler[dev] into $VENV (takes a minute the first time)"
    (
        cd "$ROOT"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-input -e '.[dev]' </dev/null
    ) || die "pip install -e '.[dev]' failed (see pip's output above)"
    echo "$want" >"$STAMP"
    log "virtualenv ready"
fi

# --------------------------------------------------------------------------
# 5. What VMs this host can start (`reconciler probe`): throwaway domains find
#    out whether type kvm guests start as they are, only with a CPU feature
#    disabled (AMD under nested KVM: arch-capabilities), or not at all; the
#    defaults that make them start go into the host's configuration.
# --------------------------------------------------------------------------
if [ "$WITH_DAEMON" -eq 1 ]; then
    CONFIG="${RECONCILER_CONFIG:-/etc/reconciler/config.yaml}"
    if ! "$VENV/bin/reconciler" probe --connect "$URI" --config /dev/null \
            --write-config "$CONFIG" </dev/null 2>&1 | sed 's/^/setup-host: /'; then
        log "WARNING: 'reconciler probe' failed (see above): no VM starts here, or it could not write $CONFIG"
    fi
fi
