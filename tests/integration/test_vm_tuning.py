"""A VM's tuning against the real libvirtd: memoryBacking, cputune, numa, iothreads.

Each VM is defined through the engine (what ``reconciler apply`` does), planned again
(no changes) and started: pinning is changed on the running VM (``virsh vcpupin``
shows it, no restart is pending), a VM on 2 MiB huge pages really starts (a few
pages are reserved for it and the host's count put back, pass or fail), and a VM
tuned by hand is exported and adopted without a change to its definition.

Pins stay within the host's CPUs, read from ``/sys`` (this machine has 2).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.plan import Op, PinCpus
from reconciler.report import render_plan
from reconciler.xml import domain
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    vm,
    ws_fixture,
)
from tests.unit.test_xml_domain_tuning import build
from tests.unit.xml_support import DATA

HUGE_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")


def host_cpus() -> list[int]:
    """The host's online CPUs (``/sys/devices/system/cpu/online``: ``0-1``)."""
    text = Path("/sys/devices/system/cpu/online").read_text().strip()
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus += range(int(first), int(last or first) + 1)
    return cpus


def last_cpu() -> int:
    return host_cpus()[-1]


def vcpupin(ws: Workspace, name: str) -> dict[int, str]:
    """``virsh vcpupin NAME`` of the running domain: vCPU -> its CPU affinity."""
    out = ws.virsh("vcpupin", name)
    return {int(v): a for v, a in re.findall(r"^\s*(\d+)\s+(\S+)\s*$", out, re.M)}


def iothreadpin(ws: Workspace, name: str) -> dict[int, str]:
    """``virsh iothreadinfo NAME`` of the running domain: I/O thread -> its CPU affinity."""
    out = ws.virsh("iothreadinfo", name)
    return {int(t): a for t, a in re.findall(r"^\s*(\d+)\s+(\S+)\s*$", out, re.M)}


def emulatorpin(ws: Workspace, name: str) -> str:
    """``virsh emulatorpin NAME`` of the running domain: the emulator's CPU affinity."""
    out = ws.virsh("emulatorpin", name).split()
    assert out, "virsh emulatorpin printed nothing"
    return out[-1]


def tuned(ws: Workspace, name: str, **spec: Any) -> dict[str, Any]:
    return vm(name, memory="128MiB", vcpus=2, **spec)


def test_tuned_vm_is_defined_planned_again_empty_and_runs(ws: Workspace) -> None:
    top = last_cpu()
    name = ws.n("vm")
    ws.write("vm.yaml", tuned(
        ws, name,
        memoryBacking={"shared": True, "nosharepages": True},
        cputune={"vcpupin": [{"vcpu": 0, "cpuset": "0"}, {"vcpu": 1, "cpuset": f"0-{top}"}],
                 "emulatorpin": "0", "iothreadpin": [{"iothread": 2, "cpuset": str(top)}]},
        numa=[{"id": 0, "cpus": "0", "memory": "64MiB"},
              {"id": 1, "cpus": "1", "memory": "64MiB", "memAccess": "shared"}],
        iothreads=2,
    ))  # fmt: skip
    ws.converge()
    assert_settled(ws)  # planned again: no changes, nothing pending
    dom = ws.domain(name)
    assert dom.isActive()
    inactive = ws.virsh("dumpxml", "--inactive", name)
    assert "<iothreads>2</iothreads>" in inactive
    assert "<access mode='shared'/>" in inactive and "<source type='memfd'/>" in inactive
    assert "<nosharepages/>" in inactive
    assert re.search(r"<cell id='1' cpus='1' memory='65536' unit='KiB' memAccess='shared'/>",
                     inactive), inactive  # fmt: skip
    assert vcpupin(ws, name) == {0: "0", 1: f"0-{top}"}
    assert emulatorpin(ws, name) == "0"
    assert iothreadpin(ws, name) == {1: f"0-{top}", 2: str(top)}


def test_pinning_changes_live_without_a_restart(ws: Workspace) -> None:
    top = last_cpu()
    name = ws.n("vm")
    manifest = tuned(ws, name, iothreads=1, cputune={"vcpupin": [{"vcpu": 0, "cpuset": "0"}],
                                                     "emulatorpin": "0"})  # fmt: skip
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    dom_id = ws.domain(name).ID()
    assert vcpupin(ws, name)[0] == "0"

    manifest["spec"]["cputune"] = {"vcpupin": [{"vcpu": 0, "cpuset": str(top)},
                                               {"vcpu": 1, "cpuset": "0"}],
                                   "emulatorpin": f"0-{top}",
                                   "iothreadpin": [{"iothread": 1, "cpuset": "0"}]}  # fmt: skip
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE, render_plan(plan)
    assert all(c.live for c in a.changes), render_plan(plan)
    assert {(s.vcpu, s.iothread, s.cpuset) for s in a.steps if isinstance(s, PinCpus)} == {
        (0, None, str(top)), (1, None, "0"), (None, None, f"0-{top}"), (None, 1, "0")
    }, a.steps  # fmt: skip
    ws.converge()
    after = assert_settled(ws)  # no changes and no restart pending
    assert not action(after, "VirtualMachine", name).restart_pending
    assert vcpupin(ws, name) == {0: str(top), 1: "0"}
    assert emulatorpin(ws, name) == f"0-{top}"
    assert iothreadpin(ws, name) == {1: "0"}
    assert ws.domain(name).ID() == dom_id  # never restarted

    # cputune: {} unpins everything: live, a pin to every host CPU (libvirt keeps one)
    manifest["spec"]["cputune"] = {}
    ws.write("vm.yaml", manifest)
    ws.converge()
    after = assert_settled(ws)
    assert not action(after, "VirtualMachine", name).restart_pending
    everything = f"0-{top}" if top else "0"
    assert set(vcpupin(ws, name).values()) == {everything}
    assert iothreadpin(ws, name) == {1: everything}
    assert "vcpupin" not in ws.virsh("dumpxml", "--inactive", name)
    assert ws.domain(name).ID() == dom_id

    # a manifest without cputune keeps what the domain has (pinned by hand)
    ws.virsh("vcpupin", name, "0", "0", "--live", "--config")
    del manifest["spec"]["cputune"]
    ws.write("vm.yaml", manifest)
    a = action(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.NOOP and not a.restart_pending, (a.changes, a.restart_pending)


def test_a_pin_to_a_cpu_the_host_lacks_is_a_plan_error(ws: Workspace) -> None:
    count = len(host_cpus())
    name = ws.n("vm")
    ws.write("vm.yaml", tuned(ws, name, cputune={"vcpupin": [{"vcpu": 1,
                                                               "cpuset": f"0-{count + 2}"}]}))
    load, _, plan = ws.reconciler().plan()
    text = "\n".join(str(p) for p in load.problems)
    assert "vm.yaml" in text and "cputune.vcpupin[0].cpuset" in text, text
    assert f"no CPU {count}-{count + 2}" in text and f"its CPUs are 0-{count - 1}" in text, text
    assert all(a.name != name or a.op is Op.NOOP for a in plan.actions), render_plan(plan)
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    assert f"its CPUs are 0-{count - 1}" in done.stdout + done.stderr


@contextlib.contextmanager
def reserved_hugepages(pages: int) -> Iterator[int]:
    """``pages`` more 2 MiB huge pages reserved for the test; the host's count is put
    back afterwards, pass or fail. Yields how many are free."""
    count = HUGE_2M / "nr_hugepages"
    before = int(count.read_text())
    try:
        count.write_text(str(before + pages))
        yield int((HUGE_2M / "free_hugepages").read_text())
    finally:
        count.write_text(str(before))
        assert int(count.read_text()) == before


def test_a_vm_on_hugepages_starts(ws: Workspace) -> None:
    if not HUGE_2M.is_dir() or not os.access(HUGE_2M / "nr_hugepages", os.W_OK):
        pytest.skip("no 2 MiB huge pages to reserve here (needs root and hugetlbfs)")
    name = ws.n("vm")
    with reserved_hugepages(40) as free:  # the VM's 64 MiB take 32 pages of 2 MiB
        if free < 32:
            pytest.skip(f"the host reserved only {free} free 2 MiB pages (of 40 asked)")
        ws.write("vm.yaml", vm(name, memory="64MiB",
                               memoryBacking={"hugepages": {"pageSize": "2MiB"}}))
        try:
            ws.converge()
            assert_settled(ws)
            assert ws.domain(name).isActive()
            live = ws.virsh("dumpxml", name)
            assert "<page size='2048' unit='KiB'/>" in live
            free_now = int((HUGE_2M / "free_hugepages").read_text())
            reserved = int((HUGE_2M / "resv_hugepages").read_text())
            assert free - free_now + reserved >= 32, (free, free_now, reserved)
        finally:
            with contextlib.suppress(Exception):
                ws.virsh("destroy", name, check=False)


def test_a_hand_tuned_vm_exports_and_is_adopted_unchanged(ws: Workspace) -> None:
    top = last_cpu()
    name = ws.n("hand")
    kind = ws.domain_type
    cpu = ws.cpu_xml() if kind == "kvm" else "<cpu>"
    cpu = cpu.replace("/>", ">", 1) if cpu.endswith("/>") else cpu.replace("</cpu>", "")
    xml = f"""<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='KiB'>131072</memory>
  <memoryBacking><nosharepages/><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>2</vcpu>
  <iothreads>1</iothreads>
  <cputune>
    <shares>512</shares>
    <vcpupin vcpu='0' cpuset='0'/>
    <vcpupin vcpu='1' cpuset='{top}'/>
    <emulatorpin cpuset='0'/>
    <iothreadpin iothread='1' cpuset='{top}'/>
  </cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {cpu}<numa><cell id='0' cpus='0-1' memory='131072' unit='KiB'/></numa></cpu>
</domain>"""
    path = ws.root / "hand.xml"
    path.write_text(xml)
    ws.virsh("define", str(path))
    ws.virsh("start", name)
    dom_id = ws.domain(name).ID()
    before = ws.virsh("dumpxml", "--inactive", name)

    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [doc] = [d for p in out.rglob("*.yaml") for d in yaml.safe_load_all(p.read_text())]
    spec = doc["spec"]
    assert spec["memoryBacking"] == {"shared": True, "nosharepages": True}
    assert spec["cputune"] == {"vcpupin": [{"vcpu": 0, "cpuset": "0"},
                                           {"vcpu": 1, "cpuset": str(top)}],
                               "emulatorpin": "0",
                               "iothreadpin": [{"iothread": 1, "cpuset": str(top)}]}  # fmt: skip
    assert spec["numa"] == [{"id": 0, "cpus": "0-1", "memory": "128MiB"}]
    assert spec["iothreads"] == 1
    kept = [line for line in done.stderr.splitlines() if "kept as defined" in line]
    assert all("vcpupin" not in line and "iothreads" not in line and "numa" not in line
               and "nosharepages" not in line for line in kept), done.stderr  # fmt: skip
    # cputune shares, which no manifest field says, is in the escape hatch (not kept)
    assert not any("shares" in line for line in kept), done.stderr
    assert {"xpath": "./cputune", "add": "<shares>512</shares>"} in spec["xml"], spec["xml"]
    assert not any(w in str(spec["xml"]) for w in ("vcpupin", "emulatorpin", "iothreadpin",
                                                   "<numa", "<memoryBacking")), spec["xml"]
    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr

    ws.directory.rmdir()
    os.symlink(out, ws.directory)
    a = action(ws.plan(), "VirtualMachine", name)
    assert [(c.path, c.old, c.new) for c in a.changes] == [("ownership", "unmanaged", "managed")]
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending
    done = ws.cli("apply", str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert action(ws.plan(), "VirtualMachine", name).op is Op.NOOP
    assert ws.domain(name).ID() == dom_id

    def without_metadata(text: str) -> str:
        return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)

    assert without_metadata(ws.virsh("dumpxml", "--inactive", name)) == \
        without_metadata(before)  # fmt: skip


def test_the_golden_xml_is_valid_and_libvirt_reads_it_back_as_projected(
    ws: Workspace, tmp_path: Path
) -> None:
    golden = DATA / "domain-tuning.xml"
    done = subprocess.run(["virt-xml-validate", str(golden), "domain"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = ws.n("golden")
    path = tmp_path / "golden.xml"
    path.write_text(golden.read_text().replace("<name>tuned</name>", f"<name>{name}</name>"))
    ws.virsh("define", str(path))
    aliases = domain.machine_aliases_from_capabilities(ws.conn.getCapabilities())
    readback = ws.virsh("dumpxml", "--inactive", name)
    assert domain.observe(readback) == domain.project(build(), machine_aliases=aliases)


def test_a_locked_vm_is_defined_and_runs_where_memory_can_be_locked(ws: Workspace) -> None:
    name = ws.n("vm")
    manifest = vm(name, memory="64MiB", state="stopped", memoryBacking={"locked": True})
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    assert "<locked/>" in ws.virsh("dumpxml", "--inactive", name)
    # libvirt raises QEMU's RLIMIT_MEMLOCK for <locked/>: a host that caps it below the
    # VM's memory (a container without CAP_SYS_RESOURCE: 8 MiB here) cannot run it
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * 64 * 1024**2:
        pytest.skip(f"locked memory is capped at {hard} bytes here: defined, not started")
    manifest["spec"]["state"] = "running"
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    assert ws.domain(name).isActive()
