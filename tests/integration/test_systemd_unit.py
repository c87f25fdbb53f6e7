"""``systemd/reconciler.service`` under a real systemd (issue 14, "Under a real systemd").

systemd boots as PID 1 of a container of its own: ``systemd-nspawn --boot`` over a
minimal Debian tree (debootstrap ``minbase`` of the host's release, from the mirror
apt uses, plus systemd, libvirt0, python3 and qemu-utils), built once and kept in
``/var/cache/reconciler-test`` (``RECONCILER_TEST_CACHE``). The tree is never
written: ``--volatile=overlay`` boots it under a tmpfs that goes with the container.
Never the machine's own root: systemd's boot-time tmpfiles clean-up would empty
``/tmp`` for everything running.

Bound into the container, at the same paths as on the host:

* ``/run/libvirt``: the host's libvirtd sockets, so the daemon in the container
  drives the host's libvirtd;
* the repository and this test's virtualenv, read-only; the daemon runs as
  ``/usr/local/bin/reconciler``, a launcher that puts the virtualenv's
  site-packages on the container's ``/usr/bin/python3`` (the venv's own
  interpreter may live under ``/root``, which ``ProtectHome=yes`` hides);
* a storage directory ``/var/lib/libvirt/<prefix>unit-storage`` (a pool, a
  volume imported from an image there by the daemon's own ``qemu-img``);
* a manifest directory, at ``/etc/reconciler/manifests``.

The unit is ``systemd/reconciler.service`` exactly as ``scripts/install-daemon.sh``
installs it with its defaults (nothing rewritten, not even ``WatchdogSec``), the
configuration ``/etc/reconciler/config.yaml`` written into the container. The
container shares the host's network (metrics on a free loopback port, fetched from
the host) and its libvirt objects are named with the session's prefix.

The tests share one booted container and each begins by starting the unit if it
is not running. The watchdog test waits for the shipped ``WatchdogSec=60s``:
about 90 s. The first run pays for debootstrap (about a minute with a near
mirror); later runs boot in a few seconds.

Skipped, with the reason, only when this host lacks what the test needs to boot a
container (root, ``systemd-nspawn``, ``debootstrap`` when no tree is cached); a
container that does not boot is a failure with nspawn's output.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.engine_support import REPO, pool, remove_prefixed, vm, volume

pytestmark = pytest.mark.systemd

CACHE = Path(os.environ.get("RECONCILER_TEST_CACHE", "/var/cache/reconciler-test"))
# What minbase lacks: systemd as init (and dbus for logind), libvirt-python's
# library, the interpreter, and qemu-img for volumes with a source.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libvirt0", "python3", "qemu-utils")
DEBOOTSTRAP_TIMEOUT = 1200.0
BOOT_TIMEOUT = 120.0
UNIT = "reconciler"
UNIT_FILE = REPO / "systemd" / "reconciler.service"
CONTAINER_SRC = "/opt/reconciler-test-src"  # where the checkout is bound in the container
CONTAINER_MANIFESTS = "/etc/reconciler/manifests"
CONVERGE_TIMEOUT = 60.0


# --- what the host needs -----------------------------------------------------------


def _release() -> str:
    """The host's Debian codename (the tree is the same release as the host)."""
    values = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value.strip().strip('"')
    return values.get("VERSION_CODENAME") or "bookworm"


def _tree_path(release: str) -> Path:
    key = hashlib.sha256(" ".join((release, *PACKAGES)).encode()).hexdigest()[:10]
    return CACHE / f"debian-{release}-{key}"


def _missing() -> str | None:
    """Why this host cannot boot the container, or None."""
    if os.geteuid() != 0:
        return "needs root: systemd-nspawn boots a container"
    if shutil.which("systemd-nspawn") is None:
        return ("systemd-nspawn is missing (Debian package systemd-container; "
                "scripts/setup-host.sh installs it)")  # fmt: skip
    if shutil.which("nsenter") is None:
        return "nsenter is missing (Debian package util-linux)"
    if not (_tree_path(_release()) / "sbin" / "init").exists():
        if shutil.which("debootstrap") is None:
            return (f"debootstrap is missing and no Debian tree is cached in {CACHE} "
                    "(Debian package debootstrap; scripts/setup-host.sh installs it)")  # fmt: skip
        if shutil.which("apt-get") is None:
            return "apt-get is missing: the tree is built from the mirror apt is configured with"
    return None


def _mirror(release: str) -> str:
    """The mirror apt uses for ``release``'s main component."""
    out = subprocess.run(["apt-get", "indextargets", "--format",
                          "$(REPO_URI) $(RELEASE) $(COMPONENT)", "Identifier: Packages"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in out.splitlines():
        uri, rel, component = [*line.split(), "", "", ""][:3]
        if rel == release and component == "main":
            return uri
    pytest.fail(f"apt has no source for {release} main (apt-get indextargets):\n{out}",
                pytrace=False)  # fmt: skip


def debian_tree() -> Path:
    """The cached tree, built first if absent (under a lock: sessions may run at once)."""
    release = _release()
    tree = _tree_path(release)
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / "sbin" / "init").exists():
            return tree
        work = tree.with_name(tree.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        mirror = _mirror(release)
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                   release, str(work), mirror]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=DEBOOTSTRAP_TIMEOUT, check=False)  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            pytest.fail(f"{' '.join(command)} failed ({done.returncode}):\n"
                        f"{done.stdout[-3000:]}{done.stderr[-3000:]}", pytrace=False)  # fmt: skip
        os.replace(work, tree)
        print(f"\ndebootstrap {release} from {mirror}: {time.monotonic() - started:.0f}s -> {tree}")
        return tree


# --- the container -----------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _container_init(nspawn: int) -> int | None:
    """The PID (on the host) of the container's PID 1: a descendant of nspawn that is
    PID 1 in its own PID namespace."""
    todo = _children(nspawn)
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    if len(ids) > 1 and ids[-1] == "1":
                        return pid
        todo += _children(pid)
    return None


@dataclass
class Machine:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    leader: int = 0

    def run(self, *command: str, input: str | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``command`` inside the container (all its namespaces, as its root)."""
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *command],
                              input=input, capture_output=True, text=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              check=False)  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(f"in the container: {' '.join(command)} exited {done.returncode}:\n"
                        f"{done.stdout}{done.stderr}\n{self.journal()}", pytrace=False)  # fmt: skip
        return done

    def put(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("install", "-D", "-m", mode, "/dev/stdin", path, input=text)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=120)

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        out = self.run("journalctl", "-u", UNIT, "-n", "0", "--show-cursor").stdout
        return out.strip().rsplit("cursor: ", 1)[-1] if "cursor: " in out else ""

    def journal(self, after: str = "", lines: int = 60) -> str:
        args = ["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]
        args += [f"--after-cursor={after}"] if after else ["-n", str(lines)]
        done = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *args],
                              capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        return done.stdout

    def wait_journal(self, what: str, after: str, timeout: float = CONVERGE_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.journal(after)
            if what in text:
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"no {what!r} in the unit's journal after {timeout:g}s:\n{text}",
                            pytrace=False)  # fmt: skip
            time.sleep(0.5)

    def wait_show(self, what: str, ok: Callable[[dict[str, str]], bool], *props: str,
                  timeout: float) -> dict[str, str]:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            state = self.show(*props)
            if ok(state):
                return state
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not after {timeout:g}s ({state}):\n{self.journal()}",
                            pytrace=False)  # fmt: skip
            time.sleep(0.5)

    def ensure_running(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "active":
            self.systemctl("start", UNIT)


def _boot(tree: Path, name: str, binds: list[str], log: Path) -> Machine:
    command = ["systemd-nspawn", "--boot", "--quiet",
               # no machined and no systemd as PID 1 on a CI host: nothing to register
               # with, and no scope to make (nspawn would ask systemd over D-Bus)
               "--register=no", "--keep-unit",
               "--console=passive", "--volatile=overlay",
               f"--directory={tree}", f"--machine={name}", *binds]  # fmt: skip
    handle = log.open("wb")
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle)
    machine = Machine(name, proc, log)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while not machine.leader:
        if proc.poll() is not None:
            pytest.fail(f"{' '.join(command)} exited {proc.returncode}:\n{log.read_text()}",
                        pytrace=False)  # fmt: skip
        if time.monotonic() > deadline:
            _shutdown(machine)
            pytest.fail(f"no container init after {BOOT_TIMEOUT:g}s:\n{log.read_text()}",
                        pytrace=False)  # fmt: skip
        leader = _container_init(proc.pid)
        # nspawn's own child is PID 1 until it executes the tree's init
        with contextlib.suppress(OSError):
            if leader and Path(f"/proc/{leader}/comm").read_text().strip() == "systemd":
                machine.leader = leader
        time.sleep(0.1)
    # "running", or "degraded" when some unit of the minimal tree failed: either way booted
    state = ""
    while state not in ("running", "degraded") and time.monotonic() < deadline:
        done = machine.run("systemctl", "is-system-running", "--wait", check=False,
                           timeout=BOOT_TIMEOUT)  # fmt: skip
        state = done.stdout.strip() or done.stderr.strip()
        if state not in ("running", "degraded"):
            time.sleep(0.2)
    if state not in ("running", "degraded"):
        failed = machine.run("systemctl", "--failed", "--no-pager", check=False).stdout
        _shutdown(machine)
        pytest.fail(f"the container's systemd is {state!r}:\n{failed}\n{log.read_text()}",
                    pytrace=False)  # fmt: skip
    return machine


def _shutdown(machine: Machine) -> None:
    """SIGTERM makes nspawn power the container off cleanly; SIGKILL after a minute."""
    if machine.proc.poll() is None:
        machine.proc.send_signal(signal.SIGTERM)
        try:
            machine.proc.wait(60)
        except subprocess.TimeoutExpired:
            machine.proc.kill()
            machine.proc.wait(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fixtures ----------------------------------------------------------------------


@dataclass
class Setup:
    machine: Machine
    storage: Path
    manifests: Path
    metrics_port: int
    config: dict[str, Any]
    names: dict[str, str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, prefix: str, conn: Any,
          vm_defaults: Any, libvirt_uri: str) -> Iterator[Setup]:  # fmt: skip
    reason = _missing()
    if reason:
        pytest.skip(f"cannot boot systemd in a container here: {reason}")
    if not libvirt_uri.startswith("qemu:///"):
        pytest.skip(f"binds the local libvirtd's socket; {libvirt_uri} is not local")
    tree = debian_tree()
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not (tree / "usr" / "bin" / python).exists():
        pytest.fail(f"the container's python3 is not {python}, the virtualenv's: the venv's "
                    f"compiled modules (libvirt-python) would not load there", pytrace=False)  # fmt: skip

    root = tmp_path_factory.mktemp("systemd-unit")
    base = prefix + "unit-"
    names = {"pool": base + "pool", "disk": base + "disk", "vm": base + "vm"}
    storage = Path("/var/lib/libvirt") / (base + "storage")
    storage.mkdir(mode=0o755)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, storage, ignore_errors=True)
        cleanup.callback(remove_prefixed, conn, base)
        yield from _container(root, base, names, storage, tree, libvirt_uri, vm_defaults)


def _container(root: Path, base: str, names: dict[str, str], storage: Path, tree: Path,
               libvirt_uri: str, vm_defaults: Any) -> Iterator[Setup]:  # fmt: skip
    """Boot the container, install the unit and its configuration; shut down after."""
    storage.chmod(0o755)
    manifests = root / "manifests"
    manifests.mkdir()
    manifests.chmod(0o755)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(storage / "source.qcow2"),
                    "8M"], check=True)  # fmt: skip

    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    hidden = [p for p in site if p.startswith(("/root/", "/home/", "/run/user/"))]
    if hidden:
        pytest.fail(f"the virtualenv ({', '.join(hidden)}) is where ProtectHome=yes hides it "
                    "from the daemon: make it elsewhere (VENV=...)", pytrace=False)  # fmt: skip
    # The checkout is bound at a fixed path outside /tmp: the unit's PrivateTmp=yes hides
    # the container's /tmp from the daemon, and CI may clone into /tmp.
    def inside(path: str) -> str:
        return CONTAINER_SRC + path[len(str(REPO)):] if Path(path).is_relative_to(REPO) else path

    binds = ["--bind=/run/libvirt", f"--bind-ro={REPO}:{CONTAINER_SRC}", f"--bind={storage}",
             f"--bind={manifests}:{CONTAINER_MANIFESTS}"]  # fmt: skip
    binds += [f"--bind-ro={sys.prefix}"] if not Path(sys.prefix).is_relative_to(REPO) else []
    launcher = "\n".join([
        "#!/usr/bin/python3",
        "# The test's virtualenv on the container's interpreter (test_systemd_unit.py).",
        "import site, sys",
        *(f"site.addsitedir({inside(p)!r})" for p in sorted(site)),
        f"sys.path.insert(0, {CONTAINER_SRC!r})",
        "from reconciler.cli import main",
        "sys.exit(main())",
        "",
    ])  # fmt: skip
    port = _free_port()
    config: dict[str, Any] = {
        "uri": libvirt_uri,
        "manifestDir": CONTAINER_MANIFESTS,
        "metricsAddress": f"127.0.0.1:{port}",
        "allowedDiskRoots": ["/var/lib/libvirt"],
        "debounce": "300ms",
    }
    if vm_defaults:
        config["vmDefaults"] = vm_defaults.as_config()

    machine = _boot(tree, base + "ct", binds, root / "nspawn.log")
    try:
        machine.put("/usr/local/bin/reconciler", launcher, "0755")
        machine.put("/etc/reconciler/config.yaml", yaml.safe_dump(config))
        machine.put(f"/etc/systemd/system/{UNIT}.service", UNIT_FILE.read_text())
        machine.systemctl("daemon-reload")
        yield Setup(machine, storage, manifests, port, config, names)
    finally:
        with contextlib.suppress(Exception):
            print(f"\n--- {UNIT} journal ---\n{machine.journal(lines=40)}")
        _shutdown(machine)


def _put_manifests(s: Setup) -> None:
    n = s.names
    docs = [pool(n["pool"], s.storage),
            volume(n["disk"], n["pool"], "16MiB", format="qcow2",
                   source=str(s.storage / "source.qcow2")),
            vm(n["vm"], disks=[{"volume": n["disk"]}])]  # fmt: skip
    tmp = s.manifests / ".unit.yaml.tmp"
    tmp.write_text("---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs))
    tmp.chmod(0o644)
    os.replace(tmp, s.manifests / "unit.yaml")


# --- the tests ---------------------------------------------------------------------


def test_ready_status_and_libvirt_through_the_hardening(setup: Setup, conn: Any) -> None:
    """READY (``start`` of a Type=notify unit returns once READY=1 came), STATUS, and a
    pass that defines a pool, imports a volume with the daemon's own qemu-img into the
    storage path, and starts a VM on the host's libvirtd, all under the unit's sandbox."""
    m = setup.machine
    started = time.monotonic()
    m.systemctl("start", UNIT)
    ready = time.monotonic() - started
    assert m.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "active"
    state = m.show("Type", "NotifyAccess", "StatusText", "MainPID", "WatchdogUSec")
    assert state["Type"] == "notify"
    assert state["WatchdogUSec"] == "1min"  # the shipped WatchdogSec=60s
    status = state["StatusText"]
    print(f"\nsystemctl start -> active (READY=1): {ready:.2f}s; StatusText={status!r}")

    cursor = m.cursor()
    _put_manifests(setup)
    m.wait_journal('"event": "reconcile.done"', cursor)
    state = m.wait_show("StatusText says 3 in sync", lambda s: s["StatusText"] ==
                        "3 objects: 3 in sync", "StatusText", timeout=CONVERGE_TIMEOUT)  # fmt: skip
    print(f"StatusText after the pass: {state['StatusText']!r}")

    dom = conn.lookupByName(setup.names["vm"])
    assert dom.isActive()
    disk = setup.storage / setup.names["disk"]
    assert disk.is_file()
    assert f"volume='{setup.names['disk']}'" in dom.XMLDesc(0)
    journal = m.journal(cursor)
    assert "imported" in journal and "verified" in journal, journal

    # the metrics endpoint, on the host's loopback (AF_INET through RestrictAddressFamilies)
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.metrics_port}/metrics",
                                timeout=10) as response:  # fmt: skip
        body = response.read().decode()
    assert "reconciler_objects" in body

    score = m.run("systemd-analyze", "security", UNIT, "--no-pager", check=False).stdout
    exposure = next((line for line in score.splitlines() if "exposure" in line), "?")
    print(f"systemd-analyze security (in the container): {exposure.strip()}")


def test_reload_rereads_the_configuration(setup: Setup) -> None:
    """``systemctl reload``: SIGHUP (ExecReload), the daemon logs config.reloaded and
    reports READY again, so the reload job succeeds."""
    m = setup.machine
    m.ensure_running()
    pid = m.show("MainPID")["MainPID"]
    m.put("/etc/reconciler/config.yaml", yaml.safe_dump({**setup.config, "debounce": "400ms"}))
    cursor = m.cursor()
    started = time.monotonic()
    m.systemctl("reload", UNIT)
    took = time.monotonic() - started
    text = m.wait_journal('"event": "config.reloaded"', cursor)
    assert "Reloaded reconciler.service" in m.wait_journal("Reloaded", cursor), text
    state = m.show("MainPID", "ActiveState", "NRestarts")
    assert state["MainPID"] == pid and state["ActiveState"] == "active"
    print(f"\nsystemctl reload: {took:.2f}s, same PID {pid}")


def test_watchdog_pings_and_a_hung_daemon_is_restarted(setup: Setup, conn: Any) -> None:
    """WATCHDOG=1 pings move WatchdogTimestamp; a SIGSTOPped daemon sends none, and
    systemd kills it (SIGABRT) after WatchdogSec and restarts it (Restart=on-failure)."""
    m = setup.machine
    m.ensure_running()
    props = ("WatchdogTimestampMonotonic", "WatchdogUSec", "NRestarts", "MainPID",
             "ActiveState", "SubState", "StatusText")  # fmt: skip
    before = m.show(*props)
    watchdog = int(before["WatchdogTimestampMonotonic"])
    assert before["WatchdogUSec"] == "1min", before  # the shipped WatchdogSec=60s
    limit = 60.0
    m.wait_show("a watchdog ping", lambda s: int(s["WatchdogTimestampMonotonic"]) > watchdog,
                *props, timeout=limit / 2 + 15)  # fmt: skip

    cursor = m.cursor()
    m.systemctl("kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)
    stopped = time.monotonic()
    after = m.wait_show(
        "restarted by the watchdog",
        lambda s: int(s["NRestarts"]) > int(before["NRestarts"]) and s["ActiveState"] == "active"
        and s["SubState"] == "running" and s["MainPID"] not in ("0", before["MainPID"]),
        *props, timeout=limit + 60)  # fmt: skip
    took = time.monotonic() - stopped
    journal = m.journal(cursor)
    assert "Watchdog timeout" in journal, journal
    assert "Failed with result 'watchdog'" in journal, journal
    print(f"\nSIGSTOP -> restarted by the watchdog in {took:.1f}s "
          f"(WatchdogSec {limit:g}s, RestartSec 5s); NRestarts {before['NRestarts']} -> "
          f"{after['NRestarts']}, PID {before['MainPID']} -> {after['MainPID']}")  # fmt: skip
    m.wait_show("the restarted daemon in sync", lambda s: s["StatusText"] ==
                "3 objects: 3 in sync", *props, timeout=CONVERGE_TIMEOUT)  # fmt: skip
    assert conn.lookupByName(setup.names["vm"]).isActive()


def test_stop_exits_cleanly(setup: Setup, conn: Any) -> None:
    """``systemctl stop``: SIGTERM, the daemon finishes and exits 0; the VMs stay."""
    m = setup.machine
    m.ensure_running()
    cursor = m.cursor()
    started = time.monotonic()
    m.systemctl("stop", UNIT)
    took = time.monotonic() - started
    state = m.show("ActiveState", "Result", "ExecMainStatus")
    assert state["ActiveState"] == "inactive"
    assert state["Result"] == "success", state
    assert state["ExecMainStatus"] == "0", state
    journal = m.journal(cursor)
    assert '"event": "daemon.stopped"' in journal, journal
    assert conn.lookupByName(setup.names["vm"]).isActive()
    print(f"\nsystemctl stop: {took:.2f}s, Result=success, exit status 0")
