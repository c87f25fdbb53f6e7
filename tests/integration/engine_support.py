"""Support for the engine tests (test_engine_*.py): manifests on disk, the engine on top.

A ``Workspace`` is one test's world: a manifest directory, a state directory
(the inventory), a host directory readable by QEMU (mode 0755, for pools,
image files and ISOs) and a name prefix unique to the test. It writes
manifests from dicts or text, runs one reconcile pass in-process (what
``reconciler plan``/``apply`` do) or the CLI as a subprocess, and removes
every libvirt object named with its prefix when the test ends, pass or fail.

The ``ws`` fixture is defined on ``ws_fixture``, so test modules import it
without shadowing the parameter name::

    from tests.integration.engine_support import ws_fixture  # noqa: F401

Manifest builders (``vm``, ``network``, ``pool``, ``volume``) return plain
dicts with the smallest spec that starts fast (no OS, no PXE ROM: the engine
disables it, a 1 s shutdown timeout since no guest answers ACPI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.hostdefaults import VmDefaults, merge_vm_spec
from reconciler.hypervisor import Hypervisor
from reconciler.plan import Action, Plan
from reconciler.reconcile import PassOptions, PassResult, Reconciler
from reconciler.report import render_plan, render_results, render_unsettled

REPO = Path(__file__).resolve().parents[2]
API = "reconciler/v1"

# --- manifest builders ---------------------------------------------------------


def doc(kind: str, name: str, spec: Mapping[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, **metadata},
            "spec": dict(spec)}  # fmt: skip


def vm(name: str, **spec: Any) -> dict[str, Any]:
    """A VirtualMachine: 64 MiB, 1 vCPU, no disks, no graphics, running, 1 s shutdown timeout."""
    base: dict[str, Any] = {"memory": "64MiB", "vcpus": 1, "shutdownTimeout": "1s"}
    base.update(spec)
    return doc("VirtualMachine", name, {k: v for k, v in base.items() if v is not None})


def network(name: str, **spec: Any) -> dict[str, Any]:
    return doc("Network", name, {k: v for k, v in spec.items() if v is not None})


def pool(name: str, path: str | Path, **spec: Any) -> dict[str, Any]:
    return doc("StoragePool", name, {"type": "dir", "path": str(path), **spec})


def volume(name: str, pool_name: str, capacity: str = "16MiB", **spec: Any) -> dict[str, Any]:
    return doc("Volume", name, {"pool": pool_name, "capacity": capacity, **spec})


# --- addresses and bridges, unique per session ------------------------------------


@functools.cache
def _counters(run_id: str) -> tuple[Iterator[int], Iterator[int]]:
    return itertools.count(int(run_id[:2], 16)), itertools.count(20)


def _used_subnets() -> set[int]:
    """Third octets of 10.254.x.0/24 already routed on this host (other sessions, tools)."""
    out = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False)
    return {int(m) for m in re.findall(r"\b10\.254\.(\d+)\.", out.stdout)}


def next_subnet(run_id: str) -> ipaddress.IPv4Network:
    """A free 10.254.x.0/24, derived from the run id, never one the host already routes."""
    octets, _ = _counters(run_id)
    used = _used_subnets()
    for _ in range(254):
        x = next(octets) % 254 + 1
        if x not in used:
            return ipaddress.IPv4Network(f"10.254.{x}.0/24")
    raise RuntimeError("no free 10.254.x.0/24 subnet")


def next_bridge(run_id: str) -> str:
    """A bridge name (<= 15 chars) in the session's ``rct<id>-<n>`` family."""
    _, numbers = _counters(run_id)
    name = f"rct{run_id}-{next(numbers)}"
    assert len(name) <= 15, name
    return name


# --- libvirt clean-up ------------------------------------------------------------


def remove_prefixed(conn: Any, prefix: str) -> None:
    """Destroy and undefine every domain, volume, pool and network named with ``prefix``."""
    import libvirt

    def quietly(fn: Callable[[], object]) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            fn()

    def remove_domain(dom: Any) -> None:
        if dom.isActive():
            quietly(dom.destroy)  # about 1.5 s each: done in parallel
        quietly(lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                          | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE))  # fmt: skip

    ours = [d for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    if ours:
        with ThreadPoolExecutor(max_workers=8) as pool_:
            list(pool_.map(remove_domain, ours))
    for p in conn.listAllStoragePools(0):
        if not p.isActive():
            continue
        quietly(functools.partial(p.refresh, 0))
        try:
            vols = p.listAllVolumes(0)
        except libvirt.libvirtError:
            continue
        for v in vols:
            if p.name().startswith(prefix) or v.name().startswith(prefix):
                quietly(functools.partial(v.delete, 0))
    for p in conn.listAllStoragePools(0):
        if p.name().startswith(prefix):
            if p.isActive():
                quietly(p.destroy)
            quietly(p.undefine)
    for n in conn.listAllNetworks(0):
        if n.name().startswith(prefix):
            if n.isActive():
                quietly(n.destroy)
            quietly(n.undefine)


# --- the workspace ---------------------------------------------------------------


@dataclass
class Workspace:
    """One test's manifests, state, host files and libvirt objects."""

    root: Path  # the test's tmp_path
    prefix: str  # every libvirt object name starts with it
    uri: str
    run_id: str
    conn: Any  # libvirt.virConnect, for checks behind the engine's back
    hostdir: Path  # mode 0755, readable by QEMU
    bridges: list[str] = field(default_factory=list)  # host bridges made with `ip link`
    vm_defaults: VmDefaults = field(default_factory=VmDefaults)  # this host's, from the run's probe
    _hv: Hypervisor | None = None

    @property
    def directory(self) -> Path:
        return self.root / "manifests"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def n(self, suffix: str) -> str:
        """A libvirt name for this test: ``<session prefix><test tag>-<suffix>``."""
        return self.prefix + suffix

    # -- files --------------------------------------------------------------------

    def write(self, filename: str, *docs: Mapping[str, Any] | str) -> Path:
        """Write one manifest file (documents joined with ``---``); returns its path."""
        path = self.directory / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = [d if isinstance(d, str) else yaml.safe_dump(dict(d), sort_keys=False)
                 for d in docs]  # fmt: skip
        path.write_text("---\n".join(texts), encoding="utf-8")
        return path

    def remove(self, filename: str) -> None:
        (self.directory / filename).unlink()

    def file(self, name: str, size: str = "1M", fmt: str = "raw") -> Path:
        """An image file in the host directory, made with qemu-img."""
        path = self.hostdir / name
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
        path.chmod(0o644)
        return path

    def iso(self, name: str, label: str = "RCTEST") -> Path:
        """A small ISO 9660 image (genisoimage/xorriso), or zeros when neither exists."""
        path = self.hostdir / name
        content = self.hostdir / f".{name}.d"
        content.mkdir()
        (content / "README.TXT").write_text(f"{name}\n")
        tool = shutil.which("genisoimage") or shutil.which("mkisofs")
        if tool:
            cmd = [tool, "-quiet", "-V", label, "-o", str(path), str(content)]
        elif shutil.which("xorriso"):
            cmd = ["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-o", str(path),
                   str(content)]  # fmt: skip
        else:
            cmd = ["dd", "if=/dev/zero", f"of={path}", "bs=64k", "count=16", "status=none"]
        subprocess.run(cmd, check=True)
        path.chmod(0o644)
        return path

    def subdir(self, name: str) -> Path:
        path = self.hostdir / name
        path.mkdir(mode=0o755)
        path.chmod(0o755)
        return path

    def subnet(self) -> ipaddress.IPv4Network:
        return next_subnet(self.run_id)

    def bridge_name(self) -> str:
        return next_bridge(self.run_id)

    def host_bridge(self) -> str:
        """A Linux bridge made with ``ip link`` (deleted when the test ends)."""
        name = self.bridge_name()
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
        self.bridges.append(name)
        return name

    def isolated_network(self, name: str, *, dhcp: bool = False, **spec: Any) -> dict[str, Any]:
        """An isolated Network manifest on a fresh subnet with its own bridge name."""
        net = self.subnet()
        hosts = list(net.hosts())
        ipv4: dict[str, Any] = {"address": str(hosts[0]), "prefix": 24}
        if dhcp:
            ipv4["dhcp"] = {"start": str(hosts[99]), "end": str(hosts[199])}
        base: dict[str, Any] = {"mode": "isolated", "bridge": self.bridge_name(), "ipv4": ipv4}
        base.update(spec)
        return network(name, **base)

    # -- the engine, in-process ------------------------------------------------------

    @property
    def hypervisor(self) -> Hypervisor:
        if self._hv is None:
            self._hv = Hypervisor.open(self.uri)
        return self._hv

    @property
    def config(self) -> Path:
        """The configuration file the CLI is given: disk paths may lie in ``hostdir``."""
        path = self.root / "config.yaml"
        if not path.exists():
            settings: dict[str, Any] = {"allowedDiskRoots": [str(self.hostdir)],
                                        "allowedSecretRoots": [str(self.hostdir)]}
            if self.vm_defaults:
                settings["vmDefaults"] = self.vm_defaults.as_config()
            path.write_text(yaml.safe_dump(settings))
        return path

    def options(self, **overrides: Any) -> PassOptions:
        base: dict[str, Any] = {"directory": self.directory, "state_dir": self.state_dir,
                                "host": None}  # fmt: skip
        if "allowed_roots" in PassOptions.__dataclass_fields__:
            base["allowed_roots"] = (self.hostdir,)  # as the CLI gets from self.config
        base["vm_defaults"] = self.vm_defaults  # as the CLI gets from self.config
        if "allowed_secret_roots" in PassOptions.__dataclass_fields__:
            base["allowed_secret_roots"] = (self.hostdir,)
        if "instance" in PassOptions.__dataclass_fields__:
            # this state directory's instance id, as the CLI's apply makes and uses it
            from reconciler import statedir

            self.state_dir.mkdir(parents=True, exist_ok=True)
            base["instance"] = statedir.instance_id(self.state_dir, create=True)
        base.update(overrides)
        if "allow_replace" in base:
            base["allow_replace"] = frozenset(base["allow_replace"])
        return PassOptions(**base)

    def reconciler(self, **overrides: Any) -> Reconciler:
        return Reconciler(self.hypervisor, self.options(**overrides))

    def plan(self, **overrides: Any) -> Plan:
        """What ``reconciler plan`` computes (nothing is touched)."""
        return self.reconciler(**overrides).plan()[2]

    def apply(self, **overrides: Any) -> PassResult:
        """What ``reconciler apply --yes`` does: plan, then carry it out (if it changes anything)."""
        r = self.reconciler(**overrides)
        load, observed, plan = r.plan()
        if not plan.has_changes:
            return PassResult(load, plan, after=plan)
        return r.apply(plan, observed, load)

    def converge(self, **overrides: Any) -> PassResult:
        """Apply and insist that it worked and settled."""
        result = self.apply(**overrides)
        assert not result.load.problems, "\n".join(str(p) for p in result.load.problems)
        assert not result.failed, describe(result)
        return result

    # -- the engine, as a command ------------------------------------------------------

    def cli(self, *args: str, state: bool = True, stdin: int | None = subprocess.DEVNULL,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """``python -m reconciler ARGS --connect URI [--state-dir STATE]`` (stdin not a TTY)."""
        command = [sys.executable, "-m", "reconciler", *args, "--connect", self.uri,
                   "--config", str(self.config)]  # fmt: skip
        if state:
            command += ["--state-dir", str(self.state_dir)]
        env = {**os.environ, "NO_COLOR": "1", "RECONCILER_LOG_FORMAT": "json"}
        return subprocess.run(command, capture_output=True, text=True, stdin=stdin,
                              timeout=timeout, cwd=REPO, env=env, check=False)  # fmt: skip

    def cli_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        done = self.cli(*args, "-o", "json")
        try:
            return done.returncode, json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"not JSON (rc={done.returncode}):\n{done.stdout}\n"
                                 f"{done.stderr}") from None  # fmt: skip

    # -- observations -------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        path = self.state_dir / "inventory.json"
        if not path.exists():
            return {}
        objects: dict[str, Any] = json.loads(path.read_text())["objects"]
        return objects

    def virsh(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def domain(self, name: str) -> Any:
        return self.conn.lookupByName(name)

    # -- hand-made domains (virsh define), as this host can start them -----------------

    @property
    def domain_type(self) -> str:
        """``kvm``, or ``qemu`` on a host whose probe found no usable KVM."""
        return str(merge_vm_spec({}, self.vm_defaults)[0].get("type", "kvm"))

    def cpu_xml(self, cpu: str | Mapping[str, Any] = "host-model") -> str:
        """The ``<cpu>`` element of a hand-made kvm domain with this host's vmDefaults
        merged in (as the product merges them), e.g. ``<cpu mode="host-model"/>``."""
        return hand_made_cpu_xml(cpu, self.vm_defaults)

    def close(self) -> None:
        if self._hv is not None:
            self._hv.close()
            self._hv = None


def hand_made_cpu_xml(cpu: str | Mapping[str, Any], defaults: VmDefaults) -> str:
    """``<cpu>`` for a domain made by hand on this host: ``cpu`` with ``defaults`` merged
    under it by the product's merge, rendered by the product's domain XML ('' for a
    host that runs only type qemu)."""
    from lxml import etree as ET

    from reconciler.model import cpu_from_manifest
    from reconciler.xml import domain as domain_xml

    merged = merge_vm_spec({"cpu": cpu}, defaults)[0]
    if merged.get("type", "kvm") != "kvm":
        return ""
    root = ET.Element("domain")
    domain_xml.FIELDS_BY_PATH["cpu"].place.write(root, cpu_from_manifest(merged["cpu"]))
    element = root.find("cpu")
    assert element is not None
    return ET.tostring(element, encoding="unicode")


def for_this_host(spec: Any, defaults: VmDefaults) -> Any:
    """A ``VirtualMachineSpec`` built in a test, as this host can start it: the host's
    vmDefaults merged under its type and CPU by the product's merge (a kvm spec becomes
    type qemu, with the hypervisor's CPU, on a host without usable KVM)."""
    from reconciler.model import cpu_from_manifest, cpu_manifest

    raw: dict[str, Any] = {} if spec.cpu is None else {"cpu": cpu_manifest(spec.cpu)}
    if spec.type != "kvm":
        return spec
    merged = merge_vm_spec(raw, defaults)[0]
    if merged.get("type", "kvm") != "kvm":
        return dataclasses.replace(spec, type="qemu", cpu=None)
    cpu = cpu_from_manifest(merged["cpu"]) if "cpu" in merged else spec.cpu
    return dataclasses.replace(spec, cpu=cpu)


def describe(result: PassResult) -> str:
    """A failed or unsettled pass, for assertion messages."""
    parts = [render_plan(result.plan), render_results(result.results)]
    if result.unsettled:
        parts.append(render_unsettled(result.unsettled))
    if result.after is not None:
        parts.append("plan after apply:\n" + render_plan(result.after, verbose=True))
    return "\n".join(parts)


def action(plan: Plan, kind: str, name: str) -> Action:
    """The plan's action for one object (fails if there is none)."""
    found = [a for a in plan.actions if a.kind.value == kind and a.name == name]
    assert found, f"no action for {kind}/{name} in:\n{render_plan(plan, verbose=True)}"
    return found[0]


def changed(plan: Plan) -> list[Action]:
    return [a for a in plan.actions if a.changes_anything]


def paths(a: Action) -> set[str]:
    return {c.path for c in a.changes}


def assert_settled(ws: Workspace, *, allow_restart_pending: bool = False,
                   **overrides: Any) -> Plan:  # fmt: skip
    """A fresh plan changes nothing (and, unless allowed, has no restart pending)."""
    plan = ws.plan(**overrides)
    assert not plan.has_changes and not plan.has_errors, render_plan(plan, verbose=True)
    if not allow_restart_pending:
        pending = [a for a in plan.actions if a.restart_pending]
        assert not pending, render_plan(plan, verbose=True)
    return plan


def only(plan: Plan, kind: str, name: str) -> Action:
    """The one action that changes anything, which must be ``kind/name``."""
    moving = changed(plan)
    assert [(a.kind.value, a.name) for a in moving] == [(kind, name)], render_plan(plan)
    return moving[0]


# --- fixtures ----------------------------------------------------------------------

_tags = itertools.count()


def open_connection(uri: str, wait: float = 20.0) -> Any:
    """A fresh libvirt connection, waiting a little if libvirtd is restarting."""
    import libvirt

    deadline = time.monotonic() + wait
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(name="ws")
def ws_fixture(tmp_path: Path, prefix: str, libvirt_uri: str, run_id: str,
               vm_defaults: VmDefaults) -> Iterator[Workspace]:  # fmt: skip
    # Its own connection, not the session's: a libvirtd restart elsewhere costs one test.
    conn = open_connection(libvirt_uri)
    tag = f"e{next(_tags):02d}-"
    hostdir = Path(tempfile.mkdtemp(prefix=prefix + tag, dir="/var/tmp"))
    hostdir.chmod(0o755)
    ws = Workspace(tmp_path, prefix + tag, libvirt_uri, run_id, conn, hostdir,
                   vm_defaults=vm_defaults)
    ws.directory.mkdir()
    try:
        yield ws
    finally:
        ws.close()
        try:
            remove_prefixed(conn, ws.prefix)
        except Exception:  # libvirtd went away: the session clean-up retries
            remove_prefixed(open_connection(libvirt_uri), ws.prefix)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            for bridge in ws.bridges:
                subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
            shutil.rmtree(hostdir, ignore_errors=True)
