#!/usr/bin/env bash
# Install the reconciler daemon on this host (run as root, from the repository):
#
#   * the package, into its own virtualenv      /opt/reconciler/venv
#   * the command                               /usr/local/bin/reconciler
#   * the configuration, only if absent         /etc/reconciler/config.yaml (0644)
#   * the manifest directory, if absent         /etc/reconciler/manifests   (0755 root)
#   * the state directory                       /var/lib/reconciler         (0700 root)
#   * the systemd unit                          /etc/systemd/system/reconciler.service
#   * the template unit for remote hosts        /etc/systemd/system/reconciler@.service
#     and its folder of host files, if absent   /etc/reconciler/hosts       (0755 root)
#     (never enabled here: systemctl enable --now reconciler@HOST, see docs/fleet.md)
#
# then, when systemd runs this host (PID 1), daemon-reload and enable --now
# (restarting a daemon that already ran, so that it runs the new code).
# Otherwise it says how to start the daemon. Idempotent: run it again to
# upgrade; an existing config.yaml and manifests are never touched.
#
#   scripts/install-daemon.sh             install, enable and start
#   scripts/install-daemon.sh --no-start  install and enable; do not (re)start
#
# Environment (defaults above; for packaging or trying it out elsewhere):
#   PYTHON  VENV_DIR  BIN_LINK  CONFIG_DIR  STATE_DIR  UNIT_DIR
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-/opt/reconciler/venv}"
BIN_LINK="${BIN_LINK:-/usr/local/bin/reconciler}"
CONFIG_DIR="${CONFIG_DIR:-/etc/reconciler}"
STATE_DIR="${STATE_DIR:-/var/lib/reconciler}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
UNIT="reconciler.service"

START=1
for arg in "$@"; do
    case "$arg" in
        --no-start) START=0 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "install-daemon: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { echo "install-daemon: $*"; }
die() { echo "install-daemon: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the daemon runs as root and installs into system paths)"
[ -f "$ROOT/pyproject.toml" ] && [ -f "$ROOT/systemd/$UNIT" ] || die "run from the reconciler repository"

# --------------------------------------------------------------------------
# 1. Build prerequisites: venv, and what libvirt-python compiles against
# --------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is missing or older than 3.11"
if command -v apt-get >/dev/null && command -v dpkg-query >/dev/null; then
    missing=()
    for p in python3-venv python3-dev libvirt-dev pkg-config gcc; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)"
        [[ "$status" == ii* ]] || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq </dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
    fi
fi

# --------------------------------------------------------------------------
# 2. The package, in its own virtualenv
# --------------------------------------------------------------------------
if [ ! -x "$VENV_DIR/bin/python" ]; then
    log "creating virtualenv $VENV_DIR"
    install -d -m 0755 "$(dirname "$VENV_DIR")"
    "$PYTHON" -m venv "$VENV_DIR"
fi
log "installing reconciler from $ROOT into $VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip </dev/null
# Dependencies at their newest allowed versions, then this tree's code even
# when its version number did not change.
"$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$ROOT" </dev/null
"$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
    --force-reinstall --no-deps "$ROOT" </dev/null
"$VENV_DIR/bin/reconciler" --version >/dev/null || die "the installed reconciler does not run"

install -d -m 0755 "$(dirname "$BIN_LINK")"
ln -sfn "$VENV_DIR/bin/reconciler" "$BIN_LINK"
log "command: $BIN_LINK -> $VENV_DIR/bin/reconciler ($("$BIN_LINK" --version))"

# --------------------------------------------------------------------------
# 3. Configuration, manifests, state
# --------------------------------------------------------------------------
install -d -m 0755 -o root -g root "$CONFIG_DIR"
if [ -e "$CONFIG_DIR/config.yaml" ]; then
    log "keeping existing $CONFIG_DIR/config.yaml"
    if ! cmp -s "$ROOT/systemd/config.yaml" "$CONFIG_DIR/config.yaml"; then
        install -m 0644 -o root -g root "$ROOT/systemd/config.yaml" "$CONFIG_DIR/config.yaml.default"
        log "  (the documented defaults are in $CONFIG_DIR/config.yaml.default)"
    fi
else
    install -m 0644 -o root -g root "$ROOT/systemd/config.yaml" "$CONFIG_DIR/config.yaml"
    log "installed $CONFIG_DIR/config.yaml (all defaults)"
fi

if [ -d "$CONFIG_DIR/manifests" ]; then
    log "keeping existing $CONFIG_DIR/manifests"
    if [ -n "$(find "$CONFIG_DIR/manifests" -maxdepth 0 \( ! -user root -o -perm /022 \))" ]; then
        log "  WARNING: it is not root-only writable; the daemon will refuse it" \
            "(chown root: and chmod go-w it, or see allowWritableManifestDir)"
    fi
else
    install -d -m 0755 -o root -g root "$CONFIG_DIR/manifests"
    log "created $CONFIG_DIR/manifests (put manifests here, or point manifestDir elsewhere)"
fi

install -d -m 0700 -o root -g root "$STATE_DIR"
chmod 0700 "$STATE_DIR"

# reconciler@HOST.service reads /etc/reconciler/hosts/HOST.yaml (docs/fleet.md)
if [ ! -d "$CONFIG_DIR/hosts" ]; then
    install -d -m 0755 -o root -g root "$CONFIG_DIR/hosts"
    log "created $CONFIG_DIR/hosts (one HOST.yaml per remote host for reconciler@HOST)"
fi

# --------------------------------------------------------------------------
# 4. The systemd unit
# --------------------------------------------------------------------------
install -d -m 0755 "$UNIT_DIR"
unit_tmp="$(mktemp)"
trap 'rm -f "$unit_tmp"' EXIT
for unit in "$UNIT" reconciler@.service; do
    sed -e "s|^ExecStart=/usr/local/bin/reconciler |ExecStart=$BIN_LINK |" \
        -e "s|^ReadWritePaths=/var/lib/reconciler |ReadWritePaths=$STATE_DIR |" \
        -e "s|/var/lib/reconciler/%i|$STATE_DIR/%i|g" \
        -e "s|/etc/reconciler/hosts/|$CONFIG_DIR/hosts/|g" \
        "$ROOT/systemd/$unit" >"$unit_tmp"
    if cmp -s "$unit_tmp" "$UNIT_DIR/$unit"; then
        log "unit $UNIT_DIR/$unit is up to date"
    else
        install -m 0644 -o root -g root "$unit_tmp" "$UNIT_DIR/$unit"
        log "installed unit $UNIT_DIR/$unit"
    fi
done
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify "$UNIT_DIR/$UNIT" || log "WARNING: systemd-analyze verify reported problems"
fi

# --------------------------------------------------------------------------
# 5. Enable and start, when systemd runs this host
# --------------------------------------------------------------------------
if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
    was_active=0
    systemctl is-active --quiet "$UNIT" && was_active=1
    if [ "$START" -eq 1 ]; then
        systemctl enable --now "$UNIT"
        if [ "$was_active" -eq 1 ]; then
            log "restarting the running daemon onto the new code"
            systemctl restart "$UNIT"
        fi
        log "started; follow it with: journalctl -u reconciler -f   and: reconciler status"
    else
        systemctl enable "$UNIT"
        log "enabled; start it with: systemctl start reconciler"
    fi
else
    log "systemd is not managing this machine (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo '?'))," \
        "so nothing was enabled or started."
    log "on a systemd host: systemctl daemon-reload && systemctl enable --now reconciler"
    log "here, run the daemon in the foreground:  $BIN_LINK run"
fi
log "done"
