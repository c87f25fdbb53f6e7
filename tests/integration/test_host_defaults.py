"""A CPU as a mapping, the host's vmDefaults and the host probe, on the real libvirtd.

The run's probe (conftest ``host_probe``) says what this host can start; a test
that needs KVM proves its feature with KVM where the host has it, else with the
best it has (``type: qemu``) and says so in its assertion messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import yaml

from reconciler.hostdefaults import VmDefaults
from reconciler.plan import Op
from tests.integration.engine_support import (  # noqa: F401
    REPO,
    Workspace,
    action,
    assert_settled,
    describe,
    vm,
    ws_fixture,
)

AMD_QUIRK = {"cpu": {"features": {"arch-capabilities": "disable"}}}


def _cpu(ws: Workspace, name: str) -> ET.Element:
    import libvirt

    xml = ws.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    cpu = ET.fromstring(xml).find("cpu")
    assert cpu is not None, xml
    return cpu


def _features(cpu: ET.Element) -> dict[str, str]:
    return {str(f.get("name")): str(f.get("policy")) for f in cpu.findall("feature")}


def _with_config(ws: Workspace, **settings: Any) -> None:
    """The CLI's configuration: the host's allowed roots and these settings."""
    ws.config.write_text(yaml.safe_dump({"allowedDiskRoots": [str(ws.hostdir)], **settings}))


def test_probe_command_finds_what_starts_and_leaves_nothing(ws: Workspace,
                                                            host_probe: Any) -> None:  # fmt: skip
    config = ws.root / "probed.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "probe", "--connect", ws.uri,
         "--config", "/dev/null", "--write-config", str(config),
         "--name-prefix", ws.n("probe-")],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"probe: {host_probe.summary()}" in done.stdout, done.stdout
    left = [d.name() for d in ws.conn.listAllDomains(0)
            if d.name().startswith(ws.n("probe-"))]  # fmt: skip
    assert left == []
    if host_probe.defaults:  # this host needs defaults: they were written, and load back
        written = yaml.safe_load(config.read_text())["vmDefaults"]
        assert written == host_probe.defaults.as_config()
    else:
        assert "no vmDefaults needed" in done.stdout and not config.exists()


def test_host_defaults_are_applied_settle_and_say_where_they_came_from(
    ws: Workspace, host_probe: Any
) -> None:
    if not host_probe.kvm_usable:  # needs KVM: CPU defaults apply to type kvm only
        _with_config(ws, vmDefaults={"type": "qemu"})
        name = ws.n("tcg")
        ws.write("vm.yaml", vm(name))
        done = ws.cli("apply", "--yes", str(ws.directory))
        assert done.returncode == 0, done.stdout + done.stderr
        assert ws.domain(name).isActive(), "type qemu from vmDefaults must start here"
        return
    name = ws.n("amd")
    ws.write("vm.yaml", vm(name, cpu="host-model"))
    defaults = VmDefaults(**AMD_QUIRK)  # type: ignore[arg-type]
    merged = {**defaults.as_config()}
    merged["cpu"]["features"].update((host_probe.defaults.cpu or {}).get("features", {}))
    _with_config(ws, vmDefaults=merged)

    done = ws.cli("apply", "--yes", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "with host defaults: cpu.features.arch-capabilities=disable" in done.stdout
    assert _features(_cpu(ws, name)).get("arch-capabilities") == "disable"
    assert ws.domain(name).isActive()
    # part of the desired state: nothing to do the next time
    again = ws.cli("plan", str(ws.directory))
    assert again.returncode == 0, again.stdout + again.stderr

    # the host's default changes: the plan names it as the origin, restart pending
    merged["cpu"]["features"]["x2apic"] = "optional"
    _with_config(ws, vmDefaults=merged)
    code, plan = ws.cli_json("plan", str(ws.directory))
    assert code == 2, plan
    [vm_action] = [a for a in plan["actions"] if a["name"] == name]
    [change] = [c for c in vm_action["changes"] if c["path"] == "cpu"]
    assert "x2apic=optional" in change["new"] and "x2apic" in change["origin"]
    assert str(ws.config) in change["origin"]
    done = ws.cli("apply", "--yes", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _features(_cpu(ws, name))["x2apic"] == "optional"
    code, plan = ws.cli_json("plan", str(ws.directory))
    [vm_action] = [a for a in plan["actions"] if a["name"] == name]
    assert [c["path"] for c in vm_action["restartPending"]] == ["cpu"], plan

    # the manifest wins over the host: its own policy for the same feature
    ws.write("vm.yaml", vm(name, cpu={"features": {"x2apic": "require"}}))
    done = ws.cli("apply", "--yes", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _features(_cpu(ws, name))["x2apic"] == "require"

    # reverting the host default and the manifest clears the pending restart
    ws.write("vm.yaml", vm(name, cpu="host-model"))
    _with_config(ws, vmDefaults={**defaults.as_config(), "cpu": {"features": {
        "arch-capabilities": "disable", **(host_probe.defaults.cpu or {}).get("features", {})}}})
    done = ws.cli("apply", "--yes", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    code, plan = ws.cli_json("plan", str(ws.directory))
    assert code == 0 and not any(a["restartPending"] for a in plan["actions"]), plan


def test_cpu_mapping_runs_and_settles(ws: Workspace, host_probe: Any) -> None:
    """mode, features, topology and migratable reach the domain and compare by meaning
    (libvirt adds check, dies, migratable on). host-passthrough needs KVM; without it the
    same mapping is proven with mode maximum under TCG."""
    name = ws.n("cpu")
    kvm = host_probe.kvm_usable
    cpu: dict[str, Any] = {
        "mode": "host-passthrough" if kvm else "maximum",
        "features": {"vmx": "disable", **(host_probe.defaults.cpu or {}).get("features", {})},
        "topology": {"sockets": 1, "cores": 2, "threads": 1},
        "migratable": False,
    }
    ws.write("vm.yaml", vm(name, maxVcpus=2, cpu=cpu, **({} if kvm else {"type": "qemu"})))
    result = ws.converge()
    assert action(result.plan, "VirtualMachine", name).op is Op.CREATE, describe(result)
    element = _cpu(ws, name)
    assert (element.get("mode"), element.get("migratable")) == (cpu["mode"], "off")
    topology = element.find("topology")
    assert topology is not None and topology.get("cores") == "2"
    assert _features(element)["vmx"] == "disable"
    assert ws.domain(name).isActive(), f"kvm usable: {kvm}; {host_probe.summary()}"
    assert_settled(ws)
    # exported, it comes back as the same mapping
    done = ws.cli("export", name, state=False)
    assert done.returncode == 0, done.stderr
    [exported] = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert exported["spec"]["cpu"]["mode"] == cpu["mode"]
    assert exported["spec"]["cpu"]["features"] == cpu["features"]
    assert exported["spec"]["cpu"]["topology"] == {"sockets": 1, "dies": 1, "cores": 2,
                                                   "threads": 1}  # fmt: skip
    assert exported["spec"]["cpu"]["migratable"] is False


def test_plan_json_of_a_fresh_vm_is_stable(ws: Workspace) -> None:
    """origin is part of every change in -o json (null when the manifest said it)."""
    name = ws.n("json")
    ws.write("vm.yaml", vm(name, state="stopped"))
    ws.converge()
    ws.write("vm.yaml", vm(name, state="stopped", memory="96MiB"))
    code, plan = ws.cli_json("plan", str(ws.directory))
    assert code == 2
    [vm_action] = [a for a in plan["actions"] if a["name"] == name]
    assert all("origin" in c for c in vm_action["changes"]), json.dumps(vm_action)
    assert [c["origin"] for c in vm_action["changes"] if c["path"] == "memory"] == [None]


def test_a_probe_killed_mid_way_leaves_no_domain(ws: Workspace) -> None:
    """The throwaway domain is transient and autodestroyed with the probe's connection."""
    import time

    prefix = ws.n("kill-")
    probe = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "probe", "--connect", ws.uri, "--config",
         "/dev/null", "--name-prefix", prefix],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip

    def ours() -> list[str]:
        return [d.name() for d in ws.conn.listAllDomains(0) if d.name().startswith(prefix)]

    deadline = time.monotonic() + 60
    while not ours():  # wait until its domain runs
        assert probe.poll() is None, "the probe ended before its domain was seen"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    probe.kill()
    probe.wait()
    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ours() == []


def test_a_cpu_edited_out_of_band_and_booted_is_restart_pending(ws: Workspace,
                                                                host_probe: Any) -> None:  # fmt: skip
    """virsh define of an edited topology keeps our ownership record (and its declared
    cpu); the running CPU itself shows the edit, so the plan does not say in sync."""
    import libvirt

    name = ws.n("oob")
    features = {"vmx": "disable", **(host_probe.defaults.cpu or {}).get("features", {})}
    cpu = {"features": features, "topology": {"sockets": 1, "cores": 2, "threads": 1}}
    ws.write("vm.yaml", vm(name, maxVcpus=2, cpu=cpu,
                           **({} if host_probe.kvm_usable else {"type": "qemu"})))  # fmt: skip
    ws.converge()
    dom = ws.domain(name)
    edited = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(
        "sockets='1' dies='1' cores='2'", "sockets='2' dies='1' cores='1'")
    assert "sockets='2'" in edited
    ws.conn.defineXML(edited)
    dom.destroy()
    dom.create()
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is not Op.NOOP, describe_plan(plan)
    ws.converge()  # the definition is put back; the running guest keeps 2 sockets
    after = action(ws.plan(), "VirtualMachine", name)
    assert [c.path for c in after.restart_pending] == ["cpu"], after
    assert "running: topology 2s/1d/1c/1t" in str(after.restart_pending[0].old)


def describe_plan(plan: Any) -> str:
    from reconciler.report import render_plan

    return str(render_plan(plan, verbose=True))
