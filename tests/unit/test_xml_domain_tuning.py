"""A VM's tuning (memoryBacking, cputune, numa, iothreads): loading and its checks,
golden XML, round trips, patching that keeps what is not named, the planner's live
pinning, preflight's host checks, and export."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reconciler import export
from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord, parse_capabilities
from reconciler.model import Kind, SpecError, VirtualMachineSpec, build_manifest
from reconciler.observe import Observed
from reconciler.plan import Op, PinCpus, SetVcpus
from reconciler.planner.vm import _pin_steps, _vm_live_updates
from reconciler.preflight import HostFacts, check_tuning
from reconciler.tuning import canonical_cpuset, parse_cpuset
from reconciler.xml import domain, domain_tuning
from reconciler.xml._fields import ChangeClass, parse

from .xml_support import assert_golden, read_data

TUNED = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: tuned}
spec:
  type: qemu
  memory: 512MiB
  maxMemory: 1GiB
  vcpus: 2
  maxVcpus: 4
  cpu: hypervisor-default
  memoryBacking:
    hugepages: {pageSize: 2MiB}
    shared: true
    locked: true
    nosharepages: true
  cputune:
    vcpupin:
      - {vcpu: 1, cpuset: "1"}
      - {vcpu: 0, cpuset: "0,1"}
    emulatorpin: "0"
    iothreadpin:
      - {iothread: 2, cpuset: "1"}
  numa:
    - {id: 0, cpus: "0-1", memory: 512MiB}
    - {id: 1, cpus: "2,3", memory: 512MiB, memAccess: shared}
  iothreads: 2
"""


def build(text: str = TUNED, **spec: Any) -> VirtualMachineSpec:
    document: Any = yaml.safe_load(text)
    for key, value in spec.items():
        if value is _GONE:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    built = build_manifest(document, SourcePosition("vm.yaml")).spec
    assert isinstance(built, VirtualMachineSpec)
    return built


_GONE = object()


def problems(**spec: Any) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        build(**spec)
    return [(".".join(map(str, p.path)), p.message) for p in caught.value.problems]


# --- loading ---------------------------------------------------------------------


def test_loading_gives_canonical_values() -> None:
    t = build().tuning
    assert t.memory_backing is not None and t.memory_backing.hugepages == "2MiB"
    assert t.memory_backing.shared and t.memory_backing.locked and t.memory_backing.nosharepages
    assert t.cputune is not None
    assert t.cputune.vcpupin == ((0, "0-1"), (1, "1"))  # by vCPU, as libvirt writes sets
    assert t.cputune.emulatorpin == "0"
    assert t.cputune.iothreadpin == ((2, "1"),)
    assert t.numa is not None and [(c.id, c.cpus, c.memory, c.mem_access) for c in t.numa] == [
        (0, "0-1", 512 * 1024**2, None), (1, "2-3", 512 * 1024**2, "shared")]  # fmt: skip
    assert t.iothreads == 2


def test_sections_not_named_are_none_and_named_empty_ones_are_not() -> None:
    bare = build(memoryBacking=_GONE, cputune=_GONE, numa=_GONE, iothreads=_GONE).tuning
    assert (bare.memory_backing, bare.cputune, bare.numa, bare.iothreads) == (None,) * 4
    empty = build(memoryBacking=None, cputune={}, numa=[], iothreads=0).tuning
    assert empty.memory_backing is not None and empty.cputune is not None
    assert empty.numa == () and empty.iothreads == 0
    assert build(memoryBacking={"hugepages": True}).tuning.memory_backing.hugepages == "default"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("0-2", {0, 1, 2}), ("0-3,^2", {0, 1, 3}), ("1,3,5-6", {1, 3, 5, 6}),
])  # fmt: skip
def test_cpusets_in_libvirts_syntax(text: str, cpus: set[int]) -> None:
    assert parse_cpuset(text) == cpus
    assert parse_cpuset(canonical_cpuset(text)) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "0,^0", "1-"])
def test_a_cpuset_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpuset(text)


def test_numa_cells_must_add_up_to_max_memory() -> None:
    found = problems(numa=[{"id": 0, "cpus": "0-3", "memory": "768MiB"}])
    assert found == [("spec.numa", "the cells' memory adds up to 768MiB, but maxMemory is 1GiB"
                      " (libvirt makes the VM's memory the sum of its cells)")]  # fmt: skip


def test_numa_cells_must_hold_each_vcpu_once() -> None:
    found = dict(problems(numa=[{"id": 0, "cpus": "0-1", "memory": "512MiB"},
                                {"id": 1, "cpus": "1", "memory": "512MiB"}]))  # fmt: skip
    assert found["spec.numa.1.cpus"] == "vCPU 1 is in cells 0 and 1"
    assert found["spec.numa"] == ("vCPU 2-3 in no cell: the cells must cover vCPUs 0-3"
                                  " (maxVcpus 4)")  # fmt: skip
    found = dict(problems(numa=[{"id": 0, "cpus": "0-4", "memory": "512MiB"},
                                {"id": 2, "cpus": "5", "memory": "512MiB"}]))  # fmt: skip
    assert "cell 0 has vCPU 4, but the VM has vCPUs 0-3" in found["spec.numa.0.cpus"]
    assert found["spec.numa"].startswith("cell ids are 0, 2; libvirt needs 0 to 1")


def test_pins_must_name_vcpus_the_vm_has_once() -> None:
    found = problems(cputune={"vcpupin": [{"vcpu": 4, "cpuset": "0"}, {"vcpu": 0, "cpuset": "0"},
                                          {"vcpu": 0, "cpuset": "1"}]})  # fmt: skip
    assert found == [
        ("spec.cputune.vcpupin.0.vcpu", "vCPU 4 is pinned, but the VM has vCPUs 0-3 (maxVcpus 4)"),
        ("spec.cputune.vcpupin.2.vcpu", "vCPU 0 is pinned twice"),
    ]
    assert problems(cputune={"emulatorpin": "2-1"}) == [
        ("spec.cputune.emulatorpin", "'2-1': the range 2-1 runs backwards")]


def test_iothread_pins_must_name_threads_the_vm_has() -> None:
    pins = {"iothreadpin": [{"iothread": 3, "cpuset": "0"}]}
    assert problems(cputune=pins) == [("spec.cputune.iothreadpin.0.iothread",
                                       "I/O thread 3 is pinned, but the VM's are 1 to 2"
                                       " (iothreads: 2)")]  # fmt: skip
    assert problems(cputune=pins, iothreads=0) == [("spec.cputune.iothreadpin.0.iothread",
                                                    "I/O thread 3 is pinned, but the VM's are"
                                                    " none (iothreads: 0)")]  # fmt: skip
    # iothreads not named: the domain's are not known here, and libvirt checks at define
    assert build(cputune=pins, iothreads=_GONE).tuning.cputune.iothreadpin == ((3, "0"),)  # type: ignore[union-attr]


# --- XML ---------------------------------------------------------------------------


def test_render_golden() -> None:
    assert_golden(domain.render("tuned", build()), "domain-tuning.xml")


def test_render_reads_back_as_projected() -> None:
    spec = build()
    assert domain.observe(domain.render("tuned", spec)) == domain.project(spec)


def test_libvirts_readback_reads_as_projected() -> None:
    # what libvirt 9.0 returned for domain-tuning.xml (virsh dumpxml --inactive)
    projected = domain.project(build(), machine_aliases={"pc": "pc-i440fx-7.2"})
    assert domain.observe(read_data("domain-tuning-libvirt.xml")) == projected


def test_a_vm_without_tuning_renders_none() -> None:
    xml = domain.render("plain", build(memoryBacking=_GONE, cputune=_GONE, numa=_GONE,
                                       iothreads=_GONE))  # fmt: skip
    for tag in ("memoryBacking", "cputune", "numa", "iothreads"):
        assert tag not in xml


def test_fields_carry_their_change_class() -> None:
    live = {f.path for f in domain_tuning.FIELDS if f.change is ChangeClass.LIVE}
    assert live == {"cputune.vcpupin", "cputune.emulatorpin", "cputune.iothreadpin"}
    assert all(f.change is not ChangeClass.REPLACE for f in domain_tuning.FIELDS)


HAND = """<domain type='qemu'>
  <name>hand</name>
  <memory unit='KiB'>1048576</memory>
  <memoryBacking>
    <hugepages/>
    <allocation mode='immediate'/>
  </memoryBacking>
  <vcpu placement='static'>4</vcpu>
  <iothreads>4</iothreads>
  <cputune>
    <shares>2048</shares>
    <vcpupin vcpu='3' cpuset='1'/>
    <emulatorpin cpuset='1'/>
  </cputune>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <clock offset='utc'/>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <numa>
      <cell id='0' cpus='0-3' memory='1048576' unit='KiB'>
        <distances><sibling id='0' value='10'/></distances>
      </cell>
    </numa>
  </cpu>
</domain>
"""


def hand_spec(**spec: Any) -> VirtualMachineSpec:
    base = {"memoryBacking": _GONE, "cputune": _GONE, "numa": _GONE, "iothreads": _GONE,
            "memory": "1GiB", "maxMemory": "1GiB", "vcpus": 4}  # fmt: skip
    return build(**{**base, **spec})


def test_patch_keeps_every_section_the_manifest_does_not_name() -> None:
    patched = domain.patch(HAND, hand_spec())
    for kept in ("<shares>2048</shares>", "<vcpupin vcpu=\"3\" cpuset=\"1\"/>",
                 "<iothreads>4</iothreads>", "<allocation mode=\"immediate\"/>",
                 "<sibling id=\"0\" value=\"10\"/>"):  # fmt: skip
        assert kept in patched.replace("'", '"'), patched
    assert "cputune.vcpupin" in domain_tuning.kept_paths(hand_spec())


def test_patch_sets_named_sections_and_keeps_the_rest_of_them() -> None:
    spec = hand_spec(cputune={"vcpupin": [{"vcpu": 0, "cpuset": "0"}]}, iothreads=0,
                     memoryBacking={"shared": True})  # fmt: skip
    root = parse(domain.patch(HAND, spec))
    tune = root.find("cputune")
    assert tune is not None
    assert [(e.tag, dict(e.attrib)) for e in tune] == [
        ("shares", {}), ("vcpupin", {"vcpu": "0", "cpuset": "0"})]  # emulatorpin gone
    assert root.find("iothreads") is None
    backing = root.find("memoryBacking")
    assert backing is not None
    assert [e.tag for e in backing] == ["source", "access", "allocation"]  # hugepages gone
    observed = domain.observe(root)
    projected = domain.project(spec)
    for path in domain_tuning.FIELDS_BY_PATH:
        if path not in domain_tuning.kept_paths(spec):
            assert observed[path] == projected[path], path


def test_a_changed_cpu_keeps_the_numa_cells_a_manifest_does_not_name() -> None:
    spec = hand_spec(cpu={"mode": "custom", "model": "Nehalem"})
    root = parse(domain.patch(HAND, spec))
    assert root.findtext("cpu/model") == "Nehalem"
    assert root.find("cpu/numa/cell/distances") is not None


def test_numa_changed_with_the_cpu() -> None:
    cells = [{"id": 0, "cpus": "0-1", "memory": "512MiB"}, {"id": 1, "cpus": "2-3",
                                                             "memory": "512MiB"}]
    spec = hand_spec(cpu={"mode": "custom", "model": "Nehalem"}, numa=cells)
    observed = domain.observe(domain.patch(HAND, spec))
    assert observed["numa"] == domain.project(spec)["numa"]
    assert observed["cpu"] == domain.project(spec)["cpu"]


def test_a_pin_to_every_host_cpu_is_no_pin() -> None:
    live = {"cputune.vcpupin": "0:0-1 1:1", "cputune.emulatorpin": "0-1"}
    assert domain_tuning.without_full_pins(live, frozenset({0, 1})) == {
        "cputune.vcpupin": "1:1", "cputune.emulatorpin": None}
    assert domain_tuning.without_full_pins(live, None) == live
    assert domain_tuning.without_full_pins(live, frozenset({0, 1, 2}))["cputune.vcpupin"] == \
        "0:0-1 1:1"  # fmt: skip


# --- the planner ----------------------------------------------------------------------


def test_pinning_is_done_to_the_running_domain() -> None:
    desired = {"cputune.vcpupin": "0:1 1:0", "cputune.emulatorpin": None, "vcpus": 2,
               "maxVcpus": 4}  # fmt: skip
    live = {"cputune.vcpupin": "0:0", "cputune.emulatorpin": "0", "vcpus": 2, "maxVcpus": 4}
    steps, pending, applied = _vm_live_updates(desired, desired, live, lambda: "", "<domain/>",
                                               host_cpus=frozenset({0, 1}))  # fmt: skip
    assert pending == []
    assert steps == [PinCpus("cputune.emulatorpin", "0-1"), PinCpus("cputune.vcpupin", "1", 0),
                     PinCpus("cputune.vcpupin", "0", 1)]  # fmt: skip
    assert {c.path for c in applied} == {"cputune.vcpupin", "cputune.emulatorpin"}
    assert all(c.live for c in applied)


def test_iothread_pins_are_done_to_the_running_domain_that_has_the_thread() -> None:
    desired = {"cputune.iothreadpin": "1:1 2:0", "iothreads": 2}
    live = {"cputune.iothreadpin": "1:0-1", "iothreads": 2}
    steps, pending, _ = _vm_live_updates(desired, desired, live, lambda: "", "<domain/>",
                                         host_cpus=frozenset({0, 1}))  # fmt: skip
    assert pending == []
    assert steps == [PinCpus("cputune.iothreadpin", "1", iothread=1),
                     PinCpus("cputune.iothreadpin", "0", iothread=2)]  # fmt: skip
    live = {"cputune.iothreadpin": None, "iothreads": 1}  # thread 2 comes with a restart
    steps, pending, _ = _vm_live_updates({**desired}, desired, live, lambda: "", "<domain/>",
                                         host_cpus=frozenset({0, 1}))  # fmt: skip
    assert steps == [] and {c.path for c in pending} == {"cputune.iothreadpin", "iothreads"}


def test_pinning_waits_for_a_restart_when_it_cannot_be_done_live() -> None:
    desired = {"cputune.vcpupin": "3:1", "vcpus": 2}
    live = {"cputune.vcpupin": None, "vcpus": 2}
    changes = [c for c in _diff(desired, live)]
    assert _pin_steps(changes, desired, live, frozenset({0, 1}), frozenset()) is None  # vCPU 3 off
    assert _pin_steps(changes, {"cputune.vcpupin": "1:1"}, live, None, frozenset()) is None
    assert _pin_steps(changes, {"cputune.vcpupin": "1:1"}, live, frozenset({0, 1}),
                      frozenset()) == [PinCpus("cputune.vcpupin", "1", 1)]  # fmt: skip
    steps, pending, _ = _vm_live_updates(desired, desired, live, lambda: "", "<domain/>",
                                         refused=frozenset({"cputune.vcpupin"}),
                                         host_cpus=frozenset({0, 1}))  # fmt: skip
    assert steps == [] and [c.path for c in pending] == ["cputune.vcpupin"]


def _diff(desired: dict[str, object], live: dict[str, object]) -> list[Any]:
    from reconciler.diff import diff

    return diff(desired, live)


def _plan(spec_changes: dict[str, Any], xml: str, *, host_cpus: frozenset[int] | None,
          active: bool = True) -> Any:  # fmt: skip
    from reconciler.manifests import LoadResult
    from reconciler.planner import PlanOptions, make_plan

    document: Any = yaml.safe_load(TUNED)
    document["metadata"]["name"] = "hand"
    document["spec"].update({"memory": "1GiB", "maxMemory": "1GiB", "vcpus": 4, "adopt": True,
                             "serial": "none", "machine": "pc-i440fx-7.2"})  # fmt: skip
    for key in ("memoryBacking", "cputune", "numa", "iothreads"):
        document["spec"].pop(key)
    document["spec"].update(spec_changes)
    m = build_manifest(document, SourcePosition("vm.yaml"))
    record = DomainRecord("hand", "u", active, False, xml, xml if active else None)
    load = LoadResult(root="/m", manifests=(m,), problems=(), files=("/m/vm.yaml",))
    return make_plan(load, Observed(domains={"hand": record}, host_cpus=host_cpus),
                     PlanOptions())


def test_a_manifest_without_tuning_plans_as_before_on_a_tuned_domain() -> None:
    plan = _plan({}, HAND, host_cpus=frozenset({0, 1}))
    [a] = plan.actions
    assert [c.path for c in a.changes] == ["ownership"], a.changes
    assert not a.restart_pending


def test_a_running_domains_pins_change_live() -> None:
    plan = _plan({"cputune": {"vcpupin": [{"vcpu": 3, "cpuset": "0"}], "emulatorpin": "1"}},
                 HAND, host_cpus=frozenset({0, 1}))  # fmt: skip
    [a] = plan.actions
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending
    assert [s for s in a.steps if isinstance(s, PinCpus)] == [PinCpus("cputune.vcpupin", "0", 3)]
    assert not any(isinstance(s, SetVcpus) for s in a.steps)
    plan = _plan({"iothreads": 1}, HAND, host_cpus=frozenset({0, 1}))
    [a] = plan.actions
    assert a.op is Op.UPDATE_RESTART and [c.path for c in a.restart_pending] == ["iothreads"]


# --- preflight --------------------------------------------------------------------------


# what this machine's `virsh capabilities` says of its CPUs and pages (2 CPUs)
CAPS = """<capabilities><host>
  <cpu><arch>x86_64</arch><pages unit='KiB' size='4'/><pages unit='KiB' size='2048'/>
    <pages unit='KiB' size='1048576'/></cpu>
  <topology><cells num='1'><cell id='0'><cpus num='2'>
    <cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0'/>
    <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1'/>
  </cpus></cell></cells></topology>
</host></capabilities>"""


def test_capabilities_give_the_hosts_cpus_and_page_sizes() -> None:
    caps = parse_capabilities(CAPS)
    assert caps.cpus == frozenset({0, 1})
    assert caps.page_sizes == frozenset({4096, 2 * 1024**2, 1024**3})
    assert domain_tuning.host_cpus_from_capabilities(CAPS) == caps.cpus
    assert parse_capabilities("<capabilities/>").cpus is None


def test_preflight_refuses_a_cpu_the_host_lacks() -> None:
    m = build_manifest(yaml.safe_load(TUNED), SourcePosition("vm.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    facts = HostFacts(cpus=frozenset({0}), page_sizes=frozenset({4096, 2 * 1024**2}))
    found = [(".".join(map(str, p.path)), p.message, p.hint)
             for p in check_tuning(m, m.spec, facts, None)]  # type: ignore[arg-type]
    assert found == [
        ("spec.cputune.vcpupin.0.cpuset", "this host has no CPU 1: its CPUs are 0", "pin within 0"),
        ("spec.cputune.vcpupin.1.cpuset", "this host has no CPU 1: its CPUs are 0", "pin within 0"),
        ("spec.cputune.iothreadpin.0.cpuset", "this host has no CPU 1: its CPUs are 0",
         "pin within 0"),
    ]
    facts = HostFacts(cpus=frozenset({0, 1}), page_sizes=frozenset({4096, 1024**3}))
    found = [(".".join(map(str, p.path)), p.message, p.hint)
             for p in check_tuning(m, m.spec, facts, None)]  # type: ignore[arg-type]
    assert found == [("spec.memoryBacking.hugepages.pageSize",
                      "this host offers no 2MiB huge pages", "use 1GiB")]  # fmt: skip


# --- export -----------------------------------------------------------------------------


def test_export_writes_the_tuning_a_domain_has_and_keeps_what_it_cannot_hold() -> None:
    obs = Observed(domains={"hand": DomainRecord("hand", "u", False, False, HAND, None)})
    [item] = export.export(obs, [export.Ref(Kind.VIRTUAL_MACHINE, "hand")])
    assert item.document is not None, item.notes
    spec = item.document["spec"]
    assert spec["memoryBacking"] == {"hugepages": True}
    assert spec["cputune"] == {"vcpupin": [{"vcpu": 3, "cpuset": "1"}], "emulatorpin": "1"}
    assert spec["numa"] == [{"id": 0, "cpus": "0-3", "memory": "1GiB"}]
    assert spec["iothreads"] == 4
    assert item.notes == ()
    lines = export.kept_lines(item.kept)
    # what no tuning field holds (cputune shares, memoryBacking allocation) is in the
    # escape hatch (export/hatch.py), neither kept nor lost; the typed sections are not
    carried = " ".join(str(e) for e in spec["xml"])
    assert "<shares>2048</shares>" in carried and "<allocation" in carried, carried
    assert not any("shares" in line or "allocation" in line for line in lines), lines
    assert not any("vcpupin" in line or "iothreads" in line for line in lines), lines
    assert "vcpupin" not in carried and "iothread" not in carried, carried


def test_export_leaves_out_cells_the_model_refuses() -> None:
    odd = HAND.replace("memory='1048576' unit='KiB'>", "memory='524288' unit='KiB'>")
    obs = Observed(domains={"hand": DomainRecord("hand", "u", False, False, odd, None)})
    [item] = export.export(obs, [export.Ref(Kind.VIRTUAL_MACHINE, "hand")])
    assert item.document is not None and "numa" not in item.document["spec"]
    assert item.notes == ()
    # the <cpu> that holds the cells is kept as defined (a redefine keeps its <numa>)
    assert "cpu" in {k.path for k in item.kept}, item.kept



def test_preflight_leaves_a_pin_the_domain_already_has_alone() -> None:
    from reconciler.preflight import _context

    document: Any = yaml.safe_load(TUNED)
    document["metadata"]["name"] = "hand"
    document["spec"].update({"memory": "1GiB", "maxMemory": "1GiB", "vcpus": 4})
    document["spec"]["cputune"] = {"vcpupin": [{"vcpu": 3, "cpuset": "1"}], "emulatorpin": "1",
                                   "iothreadpin": [{"iothread": 2, "cpuset": "1"}]}
    document["spec"]["iothreads"] = 4
    m = build_manifest(document, SourcePosition("vm.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    observed = Observed(domains={"hand": DomainRecord("hand", "u", False, False, HAND, None)})
    facts = HostFacts(cpus=frozenset({0}))
    found = [".".join(map(str, p.path))
             for p in check_tuning(m, m.spec, facts, _context([m], observed))]  # fmt: skip
    # vCPU 3 and the emulator are pinned to 1 already (adopted as they are); the I/O
    # thread's pin is new
    assert found == ["spec.cputune.iothreadpin.0.cpuset"]
