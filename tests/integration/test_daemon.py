"""``reconciler run`` as a real process against the real libvirtd (SPEC §3-§5).

Each test starts the daemon as a subprocess (``python -m reconciler
--log-format json run DIR --state-dir S --debounce 300ms --resync-interval
1h``), writes manifests into a root-owned 0755 directory (atomically: a
hidden temporary file renamed into place) and follows the daemon through its
JSON log lines (stderr, kept in a file) and through libvirt. The hour-long
resync means anything healed within a test was healed by a file or libvirt
event, not by the timer.

Measurements (write→converged latency, the reconciles caused by a burst of
writes, idle CPU and memory with 200 objects) are printed and, when
``RECONCILER_BENCH_OUT`` names a file, merged into it as JSON for
docs/performance.md. Nothing here asserts on a timing; the only bounds are
sanity checks that a daemon waiting for libvirtd does not spin.

One test stops and restarts libvirtd itself (``pkill -x libvirtd``, then
``libvirtd -d``): other clients of this libvirtd lose their connections for
about 15 s. It restores libvirtd in a ``finally`` and re-opens the session's
``conn`` in place, so later tests keep working.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.hostdefaults import VmDefaults
from reconciler.settings import ENVIRONMENT_VARIABLES
from tests.integration.engine_support import (
    REPO,
    network,
    next_bridge,
    next_subnet,
    remove_prefixed,
    vm,
)

CONVERGE_TIMEOUT = 20.0
DEBOUNCE = "300ms"
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_SECONDS = 30.0
IDLE_OBJECTS = 200
PASS_ENDS = ("reconcile.done", "reconcile.failed")  # a pass that fails as a whole is retried

_tags = itertools.count()


# --- the daemon process --------------------------------------------------------------


class Daemon:
    """One ``reconciler run`` subprocess, its stderr (JSON lines) kept in a file."""

    def __init__(self, command: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=REPO, env=dict(env))  # fmt: skip
        self._events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- the log ------------------------------------------------------------------------

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """Log lines parsed so far (a line that is not JSON becomes ``{"event": "raw"}``)."""
        with self.log_path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError
            except ValueError:
                event = {"event": "raw", "text": line.decode(errors="replace")}
            self._events.append(event)
        return self._events[since:]

    def mark(self) -> int:
        """An index into the events: pass it as ``since`` to look at later lines only."""
        return len(self.events())

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool], *, since: int = 0,
                 timeout: float = CONVERGE_TIMEOUT) -> dict[str, Any]:  # fmt: skip
        """The first log event since ``since`` that ``match``es; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(since):
                if match(event):
                    return event
            if not self.alive():
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n"
                            f"{self.tail()}", pytrace=False)  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} in the daemon's log after {timeout:g}s:\n{self.tail()}",
                            pytrace=False)  # fmt: skip
            time.sleep(0.02)

    def passes(self, since: int = 0) -> list[dict[str, Any]]:
        """The passes that ended since ``since``, done or failed as a whole."""
        return [e for e in self.events(since) if e.get("event") in PASS_ENDS]

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 60.0) -> None:
        """Wait until the daemon is idle: its last line ends a pass that no libvirt event
        arrived during (each asks for one more pass), and nothing came for ``quiet`` s.

        (A pass logs nothing until it has a plan, and only its end when nothing changes;
        any pass other than one our own file writes caused follows a logged line.)
        """
        deadline = time.monotonic() + timeout
        count, since = len(self.events()), time.monotonic()
        while True:
            events = self.events()
            if len(events) != count:
                count, since = len(events), time.monotonic()
            elif time.monotonic() - since >= quiet and _idle(events):
                return
            if not self.alive():
                pytest.fail(f"daemon exited ({self.proc.returncode}):\n{self.tail()}",
                            pytrace=False)  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"the daemon never went quiet:\n{self.tail()}", pytrace=False)
            time.sleep(0.05)

    # -- /proc ----------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon and its reaped children (git, qemu-img), in seconds."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return sum(int(v) for v in fields[11:15]) / CLK_TCK

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # -- ending ---------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL if it does not come)."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                pytest.fail(f"daemon ignored signal {sig} for {timeout:g}s:\n{self.tail()}",
                            pytrace=False)  # fmt: skip
        self._log.close()
        raw = [e["text"] for e in self.events() if e.get("event") == "raw"]
        assert not raw, "the daemon wrote lines that are not JSON logs:\n" + "\n".join(raw)
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


def _when(event: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _idle(events: list[dict[str, Any]]) -> bool:
    """Whether the log ends with a pass and no libvirt event came while it ran."""
    if not events or events[-1].get("event") not in PASS_ENDS:
        return False
    last = events[-1]
    started = _when(last) - float(last.get("duration") or 0) - 0.05
    handled = set(last.get("reasons") or ())  # events the pass ran for (it took them in)
    for event in reversed(events[:-1]):
        if event.get("event") in PASS_ENDS:
            break
        if event.get("event") == "libvirt.event" and _when(event) >= started:
            reason = f"{event.get('kind')} {event.get('name')} {event.get('change')}"
            if reason not in handled and len(handled) < 20:  # the daemon keeps 20 at most
                return False
    return True


# --- one test's world ----------------------------------------------------------------


@dataclass
class Env:
    root: Path  # tmp_path: config, logs, state
    prefix: str  # every libvirt object of this test starts with it
    uri: str
    run_id: str
    conn: Any
    vm_defaults: VmDefaults = field(default_factory=VmDefaults)  # this host's, from the run's probe
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def manifests(self) -> Path:
        return self.root / "repo" / "manifests"  # its parent holds nothing else

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def n(self, suffix: str) -> str:
        return self.prefix + suffix

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
        return {**env, "RECONCILER_CONFIG": str(self.config), "NO_COLOR": "1"}

    def write_config(self, **extra: Any) -> None:
        # metrics on a free port: every test's daemon serves them, none takes 9731
        settings = {"allowedDiskRoots": ["/var/lib/libvirt", "/var/tmp"],
                    "metricsAddress": "127.0.0.1:0", **extra}  # fmt: skip
        if self.vm_defaults:  # what this host needs to start a VM, as setup-host writes it
            settings.setdefault("vmDefaults", self.vm_defaults.as_config())
        self.config.write_text(yaml.safe_dump(settings))

    # -- manifests --------------------------------------------------------------------

    def put(self, filename: str, *docs: Mapping[str, Any]) -> float:
        """Write a manifest file atomically (hidden temporary, rename); returns when."""
        path = self.manifests / filename
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("---\n".join(yaml.safe_dump(dict(d), sort_keys=False) for d in docs))
        tmp.chmod(0o644)
        os.replace(tmp, path)
        return time.monotonic()

    def delete(self, filename: str) -> float:
        (self.manifests / filename).unlink()
        return time.monotonic()

    def network(self, name: str, **spec: Any) -> dict[str, Any]:
        """An isolated network on a free 10.254.x.0/24."""
        subnet = next_subnet(self.run_id)
        base: dict[str, Any] = {
            "mode": "isolated",
            "bridge": next_bridge(self.run_id),
            "ipv4": {"address": str(next(subnet.hosts())), "prefix": 24},
        }
        return network(name, **{**base, **spec})

    # -- processes --------------------------------------------------------------------

    def start(self, *extra: str) -> Daemon:
        command = [sys.executable, "-m", "reconciler", "--log-format", "json", "run",
                   str(self.manifests), "--state-dir", str(self.state), "--connect", self.uri,
                   "--debounce", DEBOUNCE, "--resync-interval", "1h", *extra]  # fmt: skip
        daemon = Daemon(command, self.env(), self.root / f"daemon-{len(self.daemons)}.log")
        self.daemons.append(daemon)
        return daemon

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=timeout, cwd=REPO,
                              env=self.env(), check=False)  # fmt: skip

    # -- libvirt ----------------------------------------------------------------------

    def domains(self) -> dict[str, Any]:
        return {
            d.name(): d for d in self.conn.listAllDomains(0) if d.name().startswith(self.prefix)
        }

    def domain(self, name: str) -> Any | None:
        import libvirt

        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return None

    def active_network(self, name: str) -> bool | None:
        import libvirt

        try:
            return bool(self.conn.networkLookupByName(name).isActive())
        except libvirt.libvirtError:
            return None

    def inventory(self) -> dict[str, Any]:
        """state/inventory.json, which must always parse."""
        data = json.loads((self.state / "inventory.json").read_text())
        assert data["version"] == 1
        objects: dict[str, Any] = data["objects"]
        return objects


def wait_until(what: str, check: Callable[[], bool], *, timeout: float = CONVERGE_TIMEOUT,
               daemon: Daemon | None = None) -> float:  # fmt: skip
    """Poll ``check`` until it holds; returns the monotonic time it first did."""
    import libvirt

    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return time.monotonic()
        except libvirt.libvirtError:
            pass  # an object being defined or undefined while we look
        if daemon is not None and not daemon.alive():
            pytest.fail(f"daemon exited ({daemon.proc.returncode}) while waiting until {what}:\n"
                        f"{daemon.tail()}", pytrace=False)  # fmt: skip
        if time.monotonic() > deadline:
            log = f":\n{daemon.tail()}" if daemon is not None else ""
            pytest.fail(f"not converged after {timeout:g}s: {what}{log}", pytrace=False)
        time.sleep(0.02)


def kvm(name: str, **spec: Any) -> dict[str, Any]:
    """A VirtualMachine that starts in well under a second: no OS, no disks, no NICs; of the
    default type (kvm), or what this host's vmDefaults make of it (type qemu without KVM)."""
    return vm(name, **spec)


def _xml_memory(xml: str) -> int:
    import xml.etree.ElementTree as ET

    text = ET.fromstring(xml).findtext("currentMemory")
    return int(text or 0)


def record_bench(key: str, value: Any) -> None:
    """Merge ``{key: value}`` into the JSON file named by $RECONCILER_BENCH_OUT, if set."""
    out = os.environ.get("RECONCILER_BENCH_OUT")
    if not out:
        return
    path = Path(out)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def env(tmp_path: Path, prefix: str, libvirt_uri: str, run_id: str, conn: Any,
        vm_defaults: VmDefaults) -> Iterator[Env]:  # fmt: skip
    import libvirt

    e = Env(tmp_path, f"{prefix}d{next(_tags):02d}-", libvirt_uri, run_id, conn,
            vm_defaults=vm_defaults)
    e.manifests.mkdir(parents=True)
    for directory in (e.manifests, e.manifests.parent):
        directory.chmod(0o755)
    e.write_config()
    try:
        yield e
    finally:
        for daemon in e.daemons:  # first: a live daemon would heal what we remove
            if daemon.alive():
                daemon.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    daemon.proc.wait(20)
            daemon.kill()
        fresh = libvirt.open(libvirt_uri)  # not `conn`: it may have seen libvirtd restart
        try:
            remove_prefixed(fresh, e.prefix)
        finally:
            fresh.close()


# --- 1. add, change, delete: each converges; write→converged latency ------------------


def test_manifest_changes_converge(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import libvirt

    keep, a, b, net = env.n("keep"), env.n("a"), env.n("b"), env.n("net")
    env.put("keep.yaml", kvm(keep, state="stopped"))  # the directory is never empty
    daemon = env.start()
    wait_until("keep defined", lambda: env.domain(keep) is not None, daemon=daemon)
    daemon.wait_quiet()

    a_spec: dict[str, Any] = {"memory": "64MiB", "maxMemory": "256MiB", "vcpus": 1,
                              "maxVcpus": 2}  # fmt: skip
    b_spec: dict[str, Any] = {"state": "stopped"}
    samples: list[dict[str, Any]] = []

    def dom(name: str) -> Any:
        d = env.domain(name)
        assert d is not None
        return d

    def step(label: str, write: Callable[[], float], converged: Callable[[], bool]) -> None:
        written = write()
        done = wait_until(label, converged, daemon=daemon)
        samples.append({"step": label, "seconds": round(done - written, 3)})
        daemon.wait_quiet(0.5)  # measure each write alone, not behind the previous pass

    step(
        "add running VM",
        lambda: env.put("a.yaml", kvm(a, **a_spec)),
        lambda: env.domain(a) is not None and dom(a).isActive() == 1,
    )
    step(
        "add stopped VM",
        lambda: env.put("b.yaml", kvm(b, **b_spec)),
        lambda: env.domain(b) is not None and dom(b).isActive() == 0,
    )
    a_spec["autostart"] = True
    step(
        "VM autostart on",
        lambda: env.put("a.yaml", kvm(a, **a_spec)),
        lambda: dom(a).autostart() == 1,
    )
    a_spec["memory"] = "96MiB"
    step(
        "VM memory 64→96MiB (live)",
        lambda: env.put("a.yaml", kvm(a, **a_spec)),
        lambda: _xml_memory(dom(a).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == 96 * 1024,
    )
    a_spec["vcpus"] = 2
    step(
        "VM vcpus 1→2 (live)",
        lambda: env.put("a.yaml", kvm(a, **a_spec)),
        lambda: dom(a).vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2,
    )
    b_spec["state"] = "running"
    step("VM start", lambda: env.put("b.yaml", kvm(b, **b_spec)), lambda: dom(b).isActive() == 1)
    b_spec["state"] = "stopped"
    step(
        "VM stop (ACPI, then force off after 1 s)",
        lambda: env.put("b.yaml", kvm(b, **b_spec)),
        lambda: dom(b).isActive() == 0,
    )
    net_doc = env.network(net, autostart=False)
    step(
        "add network", lambda: env.put("net.yaml", net_doc), lambda: env.active_network(net) is True
    )
    net_doc["spec"]["autostart"] = True
    step(
        "network autostart on",
        lambda: env.put("net.yaml", net_doc),
        lambda: env.conn.networkLookupByName(net).autostart() == 1,
    )
    step("delete stopped VM", lambda: env.delete("b.yaml"), lambda: env.domain(b) is None)
    step("delete network", lambda: env.delete("net.yaml"), lambda: env.active_network(net) is None)
    step("delete running VM", lambda: env.delete("a.yaml"), lambda: env.domain(a) is None)
    assert set(env.domains()) == {keep}
    assert set(env.inventory()) == {f"VirtualMachine/{keep}"}
    assert daemon.stop() == 0, daemon.tail()

    seconds = [s["seconds"] for s in samples]
    median = statistics.median(seconds)
    record_bench("write_to_converged", {"samples": samples, "median_seconds": median,
                                        "debounce": DEBOUNCE})  # fmt: skip
    with capsys.disabled():
        print(
            f"\nwrite→converged over {len(seconds)} writes: median {median:.3f}s, "
            f"min {min(seconds):.3f}s, max {max(seconds):.3f}s (debounce {DEBOUNCE})"
        )
        for s in samples:
            print(f"  {s['seconds']:7.3f}s  {s['step']}")


# --- 2. a burst of writes: at most two passes ------------------------------------------


def test_burst_of_writes_is_debounced(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    import libvirt

    names = [env.n(f"burst{i}") for i in range(3)]
    for i, name in enumerate(names):
        env.put(f"b{i}.yaml", kvm(name, state="stopped"))
    daemon = env.start()
    wait_until("3 VMs defined", lambda: len(env.domains()) == 3, daemon=daemon)
    daemon.wait_quiet()

    mark = daemon.mark()
    started = time.monotonic()
    writes = 300
    for k in range(writes):  # like a checkout: files rewritten in place, many times
        i = k % 3
        memory = "80MiB" if k >= writes - 3 else f"{72 + 4 * (k % 2)}MiB"
        text = yaml.safe_dump(kvm(names[i], state="stopped", memory=memory), sort_keys=False)
        with (env.manifests / f"b{i}.yaml").open("w") as handle:
            handle.write(text[: len(text) // 2])  # a half-written file, for a moment
            handle.flush()
            handle.write(text[len(text) // 2 :])
        time.sleep(max(0.0, started + (k + 1) / writes - time.monotonic()))  # over ~1 s
    burst = time.monotonic() - started

    def converged() -> bool:
        return all(_xml_memory(env.conn.lookupByName(n).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                   == 80 * 1024 for n in names)  # fmt: skip

    wait_until("the last write of each file applied", converged, daemon=daemon)
    daemon.wait_quiet(1.5)
    file_passes = [p for p in daemon.passes(mark)
                   if any(r.startswith("file ") for r in p["reasons"])]  # fmt: skip
    problems = [e for e in daemon.events(mark) if e.get("event") == "manifest.problem"]
    record_bench("burst", {"writes": writes, "seconds": round(burst, 3),
                           "file_reconciles": len(file_passes),
                           "all_reconciles": len(daemon.passes(mark))})  # fmt: skip
    with capsys.disabled():
        print(
            f"\nburst of {writes} writes in {burst:.2f}s: {len(file_passes)} reconcile(s) "
            f"for file changes, {len(daemon.passes(mark))} in all"
        )
    assert 1 <= len(file_passes) <= 2, json.dumps(daemon.passes(mark), indent=1)
    if len(file_passes) == 1:
        assert not problems, problems  # the one pass came after the writes settled
    deleted = [
        e
        for e in daemon.events(mark)
        if e.get("event") == "apply.action" and e.get("action") in ("delete", "replace")
    ]
    assert not deleted, deleted  # a half-written file is never a reason to delete
    assert set(env.domains()) == set(names)
    assert daemon.stop() == 0, daemon.tail()


# --- 3. out-of-band drift is healed from libvirt events --------------------------------


def test_destroyed_vm_is_started_again_at_once(env: Env) -> None:
    name = env.n("run")
    env.put("vm.yaml", kvm(name))
    daemon = env.start()
    wait_until("VM running", lambda: (d := env.domain(name)) is not None and d.isActive() == 1,
               daemon=daemon)  # fmt: skip
    daemon.wait_quiet()
    dom = env.domain(name)
    assert dom is not None
    first_id = dom.ID()

    mark = daemon.mark()
    dom.destroy()  # what `virsh destroy` does
    wait_until("destroyed VM running again", lambda: dom.isActive() == 1 and dom.ID() != first_id,
               timeout=10, daemon=daemon)  # fmt: skip
    drift = daemon.wait_for(
        "a drift line naming the VM",
        lambda e: e.get("event") == "drift" and e.get("kind") == "VirtualMachine"
        and e.get("name") == name, since=mark, timeout=5,
    )  # fmt: skip
    assert "state" in drift["fields"], drift
    healing = daemon.wait_for("the healing pass", lambda e: e.get("event") == "reconcile.done",
                              since=mark, timeout=5)  # fmt: skip
    assert any(name in r for r in healing["reasons"]), healing
    assert "periodic resync" not in healing["reasons"], healing
    assert daemon.stop() == 0, daemon.tail()


# --- 4. libvirtd restarting -----------------------------------------------------------


def _libvirtd_pids() -> list[int]:
    """Live (not zombie) processes named libvirtd."""
    found = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True,
                           check=False).stdout.split()  # fmt: skip
    pids = []
    for pid in found:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            pids.append(int(pid))
    return pids


def _stop_libvirtd() -> None:
    subprocess.run(["pkill", "-x", "libvirtd"], check=False)
    deadline = time.monotonic() + 30
    while _libvirtd_pids():
        if time.monotonic() > deadline:
            raise AssertionError(f"libvirtd still running 30 s after SIGTERM: {_libvirtd_pids()}")
        time.sleep(0.1)


def _start_libvirtd(uri: str) -> None:
    import libvirt

    if not _libvirtd_pids():
        Path("/run/libvirtd.pid").unlink(missing_ok=True)
        subprocess.run(["libvirtd", "-d"], stdin=subprocess.DEVNULL, check=True, timeout=60)
    deadline = time.monotonic() + 60
    while True:
        try:
            libvirt.open(uri).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _revive(conn: Any, uri: str) -> None:
    """Point the session's connection, dead since libvirtd restarted, at a fresh one."""
    import libvirt

    try:
        conn.getLibVersion()
        return
    except libvirt.libvirtError:
        pass
    fresh = libvirt.open(uri)
    conn._o, fresh._o = fresh._o, conn._o  # libvirt-python keeps the C handle in _o
    with contextlib.suppress(libvirt.libvirtError):
        fresh.close()


def test_libvirtd_restart_reconnects_and_converges(env: Env, capsys: pytest.CaptureFixture[str]
                                                  ) -> None:  # fmt: skip
    import libvirt

    run, cold = env.n("run"), env.n("cold")
    env.put("run.yaml", kvm(run))
    env.put("cold.yaml", kvm(cold, state="stopped"))
    daemon = env.start()
    wait_until("VMs defined", lambda: (d := env.domain(run)) is not None and d.isActive() == 1
               and env.domain(cold) is not None, daemon=daemon)  # fmt: skip
    daemon.wait_quiet()
    run_id = env.domain(run).ID()  # type: ignore[union-attr]

    mark = daemon.mark()
    try:
        _stop_libvirtd()
        daemon.wait_for(
            "the loss of libvirtd logged",
            lambda e: e.get("event") in ("libvirt.connection_closed", "libvirt.connection_lost",
                                         "libvirt.unreachable"), since=mark, timeout=30,
        )  # fmt: skip
        env.put("cold.yaml", kvm(cold, state="stopped", memory="96MiB"))  # changed meanwhile
        cpu, wall = daemon.cpu_seconds(), time.monotonic()
        time.sleep(10)
        cpu, wall = daemon.cpu_seconds() - cpu, time.monotonic() - wall
        assert daemon.alive(), daemon.tail()
        status = json.loads((env.state / "status.json").read_text())
        attempts = [e for e in daemon.events(mark) if e.get("event") == "libvirt.unreachable"]
    finally:
        _start_libvirtd(env.uri)
        _revive(env.conn, env.uri)
    with capsys.disabled():
        print(
            f"\nlibvirtd down: daemon used {cpu:.2f}s CPU in {wall:.1f}s, "
            f"{len(attempts)} reconnect attempts"
        )
    record_bench("libvirtd_down", {"cpu_seconds": cpu, "wall_seconds": round(wall, 2),
                                   "reconnect_attempts": len(attempts)})  # fmt: skip
    assert cpu < 0.25 * wall, f"the daemon spins while libvirtd is down: {cpu:.2f}s CPU"
    assert 1 <= len(attempts) <= 8, [e.get("timestamp") for e in attempts]  # backoff, not a loop
    assert status["connected"] is False and status["last_error"], status

    daemon.wait_for("reconnected", lambda e: e.get("event") == "libvirt.connected",
                    since=mark, timeout=90)  # fmt: skip
    wait_until("the change made while libvirtd was down applied",
               lambda: _xml_memory(env.conn.lookupByName(cold).XMLDesc(
                   libvirt.VIR_DOMAIN_XML_INACTIVE)) == 96 * 1024, daemon=daemon)  # fmt: skip
    dom = env.domain(run)
    assert dom is not None and dom.isActive() == 1 and dom.ID() == run_id  # survived, untouched
    daemon.wait_quiet()
    status = json.loads((env.state / "status.json").read_text())
    assert status["connected"] is True and not status["last_error"], status
    assert daemon.stop() == 0, daemon.tail()


# --- 5. SIGTERM and SIGKILL in the middle of an apply --------------------------------


def _converged(env: Env, want: Mapping[str, bool]) -> Callable[[], bool]:
    """Exactly the VMs ``want`` names exist, running where it says True."""

    def check() -> bool:
        have = env.domains()
        return set(have) == set(want) and all(
            bool(d.isActive()) == want[name] for name, d in have.items()
        )

    return check


def _is_action(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == "apply.action" and e.get("name") == name


def test_sigterm_and_sigkill_mid_apply(env: Env) -> None:
    # 4 running VMs first (about a second each to start), then 20 stopped ones
    want = {env.n(f"a{i}"): True for i in range(4)} | {env.n(f"b{i:02d}"): False for i in range(20)}
    for name, running in want.items():
        env.put(f"{name}.yaml", kvm(name, state="running" if running else "stopped"))
    daemon = env.start()
    daemon.wait_for("the first VM created", _is_action(env.n("a0")), timeout=60)
    mark = daemon.mark()
    assert daemon.stop(signal.SIGTERM) == 0, daemon.tail()  # during the second VM's start
    assert any(e.get("event") == "daemon.stopped" for e in daemon.events(mark)), daemon.tail()
    [stopped] = daemon.passes()
    assert stopped["outcome"] == "interrupted", stopped
    made = set(env.domains())
    assert 1 <= len(made) < len(want), f"SIGTERM did not stop the apply: {sorted(made)}"
    assert set(env.inventory()) <= {f"VirtualMachine/{n}" for n in want}

    daemon = env.start()
    wait_until("the 24 VMs", _converged(env, want), timeout=90, daemon=daemon)
    daemon.wait_quiet()

    # while the daemon runs: remove a running VM and 4 stopped ones, add 2 running and
    # 8 stopped; SIGKILL it once the first new VM is up (the second is being started)
    mark = daemon.mark()
    for name in (env.n("a0"), *(env.n(f"b{i:02d}") for i in range(4))):
        env.delete(f"{name}.yaml")
        del want[name]
    added = {env.n(f"c{i}"): True for i in range(2)} | {env.n(f"d{i:02d}"): False for i in range(8)}
    for name, running in added.items():
        env.put(f"{name}.yaml", kvm(name, state="running" if running else "stopped"))
    want |= added
    daemon.wait_for("the first new VM created", _is_action(env.n("c0")), since=mark, timeout=90)
    daemon.proc.kill()
    daemon.proc.wait(10)
    env.inventory()  # still parses

    daemon = env.start()
    wait_until(f"the {len(want)} VMs", _converged(env, want), timeout=90, daemon=daemon)
    daemon.wait_quiet()
    assert set(env.inventory()) == {f"VirtualMachine/{n}" for n in want}
    plan = env.cli("plan", str(env.manifests), "--state-dir", str(env.state), "--connect", env.uri)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    status = json.loads((env.state / "status.json").read_text())
    assert {o["name"] for o in status["objects"]} == set(want), status
    assert {o["state"] for o in status["objects"]} <= {"in-sync", "healed"}, status
    assert daemon.stop() == 0, daemon.tail()


# --- 6. reconciler status ------------------------------------------------------------


def test_status_while_running_and_before_any_daemon(env: Env) -> None:
    empty = env.root / "empty-state"
    empty.mkdir()
    done = env.cli("status", "--state-dir", str(empty))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no daemon has run yet" in done.stdout, done.stdout
    done = env.cli("status", "--state-dir", str(empty), "-o", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["status"] is None and "no daemon has run yet" in data["message"], data

    name = env.n("vm")
    env.put("vm.yaml", kvm(name, state="stopped"))
    daemon = env.start()
    daemon.wait_quiet()
    done = env.cli("status", "--state-dir", str(env.state))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"daemon pid {daemon.pid} (running)" in done.stdout, done.stdout
    assert "libvirt connected" in done.stdout, done.stdout
    row = [line for line in done.stdout.splitlines() if name in line]
    assert row and row[0].split()[:3] == ["VirtualMachine", name, "in-sync"], done.stdout

    done = env.cli("status", "--state-dir", str(env.state), "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["daemon_pid"] == daemon.pid and data["connected"] is True, data
    assert data["reconcile_count"] >= 1 and data["last_error"] is None, data
    assert [(o["kind"], o["name"], o["state"]) for o in data["objects"]] == [
        ("VirtualMachine", name, "in-sync")
    ], data
    assert daemon.stop() == 0, daemon.tail()
    done = env.cli("status", "--state-dir", str(env.state))
    assert f"daemon pid {daemon.pid} (not running)" in done.stdout, done.stdout


# --- 7. one reconciler per state directory -------------------------------------------


def test_second_reconciler_on_the_same_state_dir_is_refused(env: Env) -> None:
    env.put("vm.yaml", kvm(env.n("vm"), state="stopped"))
    daemon = env.start()
    daemon.wait_quiet()
    holder = f"pid {daemon.pid}, "
    for args in (["run", str(env.manifests), "--debounce", DEBOUNCE],
                 ["apply", str(env.manifests), "--yes"]):  # fmt: skip
        done = env.cli(*args, "--state-dir", str(env.state), "--connect", env.uri, timeout=30)
        assert done.returncode == 1, f"{args[0]}: {done.stdout}{done.stderr}"
        assert "another reconciler holds" in done.stderr and holder in done.stderr, done.stderr
        assert "json run " in done.stderr, done.stderr  # the holder's command line
    assert daemon.alive(), daemon.tail()
    assert daemon.stop() == 0, daemon.tail()


# --- 8. idle with 200 objects: CPU and memory ---------------------------------------


def test_idle_daemon_with_200_objects(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.put("net.yaml", env.network(env.n("net")))
    for i in range(IDLE_OBJECTS):
        env.put(f"vm{i:03d}.yaml", kvm(env.n(f"i{i:03d}"), state="stopped"))
    total = IDLE_OBJECTS + 1
    started = time.monotonic()
    daemon = env.start()
    daemon.wait_for(f"{total} objects in sync",
                    lambda e: e.get("event") == "reconcile.done"
                    and e.get("summary") == f"{total} objects: {total} in sync",
                    timeout=180)  # fmt: skip
    converged = time.monotonic() - started
    daemon.wait_quiet(2.0)
    assert len(env.domains()) == IDLE_OBJECTS

    mark = daemon.mark()
    cpu, wall = daemon.cpu_seconds(), time.monotonic()
    time.sleep(IDLE_SECONDS)
    cpu, wall = daemon.cpu_seconds() - cpu, time.monotonic() - wall
    rss = daemon.rss_kib()
    idle_passes = len(daemon.passes(mark))
    percent = 100 * cpu / wall
    record_bench("idle", {"objects": total, "seconds": round(wall, 1), "cpu_seconds": cpu,
                          "cpu_percent": round(percent, 2), "rss_mib": round(rss / 1024, 1),
                          "passes_while_idle": idle_passes,
                          "first_convergence_seconds": round(converged, 1)})  # fmt: skip
    with capsys.disabled():
        print(
            f"\nidle with {total} objects over {wall:.0f}s: CPU {percent:.2f}% "
            f"({cpu:.2f}s), RSS {rss / 1024:.1f} MiB, {idle_passes} passes; "
            f"first convergence took {converged:.1f}s"
        )
    assert daemon.stop() == 0, daemon.tail()


# --- 9. SIGHUP reloads the configuration --------------------------------------------


def test_sighup_reloads_the_configuration(env: Env) -> None:
    keep, victim = env.n("keep"), env.n("victim")
    env.put("keep.yaml", kvm(keep, state="stopped"))
    env.put("victim.yaml", kvm(victim, state="stopped"))
    daemon = env.start()
    wait_until("both VMs defined", lambda: len(env.domains()) == 2, daemon=daemon)
    daemon.wait_quiet()

    mark = daemon.mark()
    env.write_config(prune=False)
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = daemon.wait_for("config.reloaded", lambda e: e.get("event") == "config.reloaded",
                               since=mark, timeout=10)  # fmt: skip
    assert reloaded["file"] == str(env.config), reloaded
    daemon.wait_for("a pass after the reload",
                    lambda e: e.get("event") in PASS_ENDS
                    and "configuration reloaded" in e["reasons"], since=mark)  # fmt: skip
    daemon.wait_quiet(0.5)

    mark = daemon.mark()
    env.delete("victim.yaml")  # prune is now off: the VM stays
    daemon.wait_for("the pass for the deleted file",
                    lambda e: e.get("event") in PASS_ENDS
                    and any(r.startswith("file ") for r in e["reasons"]), since=mark)  # fmt: skip
    assert victim in env.domains(), daemon.tail()

    mark = daemon.mark()
    env.config.write_text("prune: maybe\n")
    daemon.proc.send_signal(signal.SIGHUP)
    failed = daemon.wait_for("config.reload_failed",
                             lambda e: e.get("event") == "config.reload_failed",
                             since=mark, timeout=10)  # fmt: skip
    assert "prune" in failed["error"], failed
    daemon.wait_quiet(0.5)
    assert daemon.alive(), daemon.tail()
    assert daemon.stop() == 0, daemon.tail()


def test_a_storm_of_signals_neither_deadlocks_nor_kills_the_daemon(env: Env) -> None:
    """Signal handlers that take locks deadlock when the signal lands while the main
    thread holds the same lock (an Event's, the log's); this found such a deadlock."""
    env.put("vm.yaml", kvm(env.n("vm"), state="stopped"))
    daemon = env.start()
    daemon.wait_quiet(0.5)
    for burst in range(8):
        for _ in range(50):
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(0.002 * (burst % 3))
        mark = daemon.mark()
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("a reload after the burst",
                        lambda e: e.get("event") == "config.reloaded", since=mark,
                        timeout=15)  # fmt: skip
    assert daemon.stop() == 0, daemon.tail()


# --- 10. a failing object is retried with backoff; the others proceed ----------------


def test_failing_vm_is_retried_with_backoff(env: Env) -> None:
    good, bad = env.n("good"), env.n("bad")
    # A network defined by hand and not started: a reference preflight accepts (it
    # exists), and starting `bad` on it fails. (A missing bridge or disk file would be
    # refused by preflight before any start: a load problem, not a failing action.)
    idle = env.n("idle")
    subnet = next_subnet(env.run_id)
    env.conn.networkDefineXML(
        f"<network><name>{idle}</name><bridge name='{next_bridge(env.run_id)}'/>"
        f"<ip address='{next(subnet.hosts())}' prefix='24'/></network>"
    )
    env.put("good.yaml", kvm(good))
    env.put("bad.yaml", kvm(bad, interfaces=[{"network": idle}]))
    daemon = env.start()
    try:
        failed = daemon.wait_for(
            "the failed start", lambda e: e.get("event") == "apply.action" and e.get("name") == bad
        )
        assert failed["outcome"] == "failed", failed
        wait_until("the good VM running despite the bad one",
                   lambda: (d := env.domain(good)) is not None and d.isActive() == 1,
                   daemon=daemon)  # fmt: skip
        daemon.wait_quiet(0.5)  # the passes that follow (libvirt events) skip it: backoff
        status = json.loads((env.state / "status.json").read_text())
        states = {o["name"]: o["state"] for o in status["objects"]}
        assert states[good] == "in-sync", status
        assert states[bad] == "failed", status  # while it waits out its backoff: not pending
        done = env.cli("status", "--state-dir", str(env.state))
        assert done.returncode == 1, done.stdout  # a failing object: status says so
        env.conn.networkLookupByName(idle).create()
        # nothing else happens: only the retry timer (5 s after the failure) can start it
        wait_until("the bad VM retried and running",
                   lambda: (d := env.domain(bad)) is not None and d.isActive() == 1,
                   timeout=20, daemon=daemon)  # fmt: skip
        assert daemon.stop() == 0, daemon.tail()
    finally:
        daemon.kill()
        remove_prefixed(env.conn, env.prefix)


def test_a_pass_that_fails_as_a_whole_is_retried(env: Env) -> None:
    first, second = env.n("first"), env.n("second")
    env.put("first.yaml", kvm(first, state="stopped"))
    daemon = env.start()
    wait_until("first defined", lambda: env.domain(first) is not None, daemon=daemon)
    daemon.wait_quiet(0.5)
    inventory = env.state / "inventory.json"
    good = inventory.read_text()
    inventory.write_text("{not json")  # every pass now fails before planning

    mark = daemon.mark()
    env.put("second.yaml", kvm(second, state="stopped"))
    failed = daemon.wait_for(
        "the failed pass", lambda e: e.get("event") == "reconcile.failed", since=mark
    )
    assert "inventory" in failed["error"] and failed["retry_in"] > 0, failed
    assert any(r.startswith("file ") for r in failed["reasons"]), failed
    status = json.loads((env.state / "status.json").read_text())
    assert "inventory" in status["last_error"], status
    inventory.write_text(good)  # no file or libvirt event follows: only the retry can help
    wait_until("second defined by the retry", lambda: env.domain(second) is not None,
               daemon=daemon)  # fmt: skip
    daemon.wait_quiet(0.5)
    status = json.loads((env.state / "status.json").read_text())
    assert status["last_error"] is None, status
    assert daemon.stop() == 0, daemon.tail()
