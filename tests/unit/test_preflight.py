"""Preflight (reconciler/preflight.py) with hand-made host facts: each check, each hint,
each placed at the field's file:line:col; and the parsing of libvirt's capabilities."""

from __future__ import annotations

import stat
import textwrap
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import preflight
from reconciler.hostpaths import PathPolicy
from reconciler.hypervisor import (
    DomainRecord,
    NetworkRecord,
    PoolRecord,
    parse_capabilities,
    parse_domain_capabilities,
)
from reconciler.manifests import LoadResult, drop_findings, load_text
from reconciler.model import FieldProblem, Manifest
from reconciler.preflight import (
    DirFacts,
    FactsWanted,
    HostAddress,
    HostFacts,
    MachineCaps,
    PathFacts,
    QemuUser,
)
from reconciler.snapshot import Observed

MACHINES = frozenset({"pc", "pc-i440fx-7.2", "pc-i440fx-7.1", "pc-i440fx-2.9", "q35",
                      "pc-q35-7.2", "isapc", "microvm"})  # fmt: skip
GiB = 1024**3
ROOT_DIR = DirFacts("/", stat.S_IFDIR | 0o755, 0, 0)
IMAGES = DirFacts("/var/lib/libvirt/images", stat.S_IFDIR | 0o711, 0, 0)
QEMU = QemuUser(64055, 64055, frozenset({64055, 107}), "libvirt-qemu")


def caps(machine: str, **kw: object) -> MachineCaps:
    base: dict[str, object] = {"max_vcpus": 255, "firmware": frozenset({"efi"}),
                               "loaders": ("/usr/share/OVMF/OVMF_CODE_4M.fd",)}  # fmt: skip
    base.update(kw)
    return MachineCaps(machine, **base)  # type: ignore[arg-type]


FACTS = HostFacts(
    uri="qemu:///system",
    memory=4 * GiB,
    machines={("x86_64", "qemu"): MACHINES, ("x86_64", "kvm"): MACHINES},
    machine_caps={
        ("x86_64", "pc", "qemu"): caps("pc-i440fx-7.2"),
        ("x86_64", "pc", "kvm"): caps("pc-i440fx-7.2"),
        ("x86_64", "q35", "qemu"): caps("pc-q35-7.2", max_vcpus=288),
    },
    qemu_user=QEMU,
    paths={
        "/var/lib/libvirt/images/a.img": PathFacts(True, (ROOT_DIR, IMAGES)),
        "/var/lib/libvirt/images/gone.img": PathFacts(False, (ROOT_DIR, IMAGES)),
        "/root/a.iso": PathFacts(True, (ROOT_DIR, DirFacts("/root", stat.S_IFDIR | 0o700, 0, 0))),
        "/srv/kvm/a.iso": PathFacts(True, (ROOT_DIR, DirFacts("/srv/kvm", stat.S_IFDIR | 0o750,
                                                               0, 107))),
    },
    bridges=frozenset({"br0", "virbr0"}),
    interfaces=frozenset({"br0", "virbr0", "eth0", "lo"}),
    addresses=(HostAddress("lo", "127.0.0.1/8"), HostAddress("eth0", "192.0.2.2/24"),
               HostAddress("virbr-lab", "10.100.0.1/24")),
)


def vm(extra: str = "", *, name: str = "web", head: str = "") -> str:
    """A VM manifest; ``extra`` lines go under spec (indented by two spaces)."""
    body = textwrap.indent(textwrap.dedent(extra).strip("\n"), "  ")
    return (f"apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n"
            f"{head}spec:\n  type: qemu\n  memory: 256MiB\n  vcpus: 1\n{body}\n")  # fmt: skip


def manifests(*texts: str) -> tuple[Manifest, ...]:
    errors: list[object] = []
    found = load_text("---\n".join(texts), "m/vm.yaml", errors)  # type: ignore[arg-type]
    assert not errors, errors
    return tuple(found)


def problems(*texts: str, facts: HostFacts = FACTS, observed: Observed | None = None) -> list[str]:
    ms = manifests(*texts)
    load = LoadResult("m", ms, (), ("m/vm.yaml",))
    checked = drop_findings(load, preflight.check(ms, facts, observed or Observed()))
    return [str(p) for p in checked.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- machine type, vCPUs, firmware, KVM, memory ------------------------------------------


def test_a_good_vm_has_no_problem() -> None:
    assert problems(vm("machine: pc\nfirmware: uefi\nmaxVcpus: 4")) == []


def test_an_unknown_machine_type_is_placed_and_lists_close_ones() -> None:
    text = vm("machine: pc-i440fx-99.9")
    (found,) = problems(text)
    line = line_of(text, "machine:")
    assert found.startswith(f"m/vm.yaml:{line}:12: spec.machine: machine type 'pc-i440fx-99.9' "
                            "is not known to this host's QEMU (x86_64, type qemu); close ones: ")
    assert "pc-i440fx-7.2" in found and "pc-i440fx-7.1" in found


def test_a_machine_type_with_nothing_close_names_the_usual_ones() -> None:
    (found,) = problems(vm("machine: virt"))
    assert found.endswith("; e.g. pc or q35 (`virsh capabilities` lists them all)")


def test_max_vcpus_over_the_machine_limit() -> None:
    text = vm("machine: pc\nmaxVcpus: 4000")
    (found,) = problems(text)
    assert found == (f"m/vm.yaml:{line_of(text, 'maxVcpus')}:13: spec.maxVcpus: 4000 vCPUs: "
                     "machine pc-i440fx-7.2 (qemu) takes at most 255 vCPUs; lower it to 255 or "
                     "less, or use a machine type that takes more (q35: 288)")  # fmt: skip


def test_vcpus_over_the_limit_named_once_when_max_vcpus_is_not_written() -> None:
    text = vm("vcpus: 300").replace("  vcpus: 1\n", "")
    (found,) = problems(text)
    assert f"{line_of(text, 'vcpus')}:10: spec.vcpus: 300 vCPUs: machine pc-i440fx-7.2" in found


def test_q35_takes_more_vcpus_than_pc() -> None:
    assert problems(vm("machine: q35\nmaxVcpus: 288")) == []


def test_uefi_without_efi_firmware() -> None:
    bare = {("x86_64", "pc", "qemu"): caps("pc-i440fx-7.2", firmware=frozenset(), loaders=())}
    text = vm("firmware: uefi")
    (found,) = problems(text, facts=replace(FACTS, machine_caps=bare))
    assert found == (f"m/vm.yaml:{line_of(text, 'firmware')}:13: spec.firmware: uefi needs EFI "
                     "firmware, and this host's QEMU offers none for machine pc-i440fx-7.2; "
                     "install OVMF (apt install ovmf), or use firmware: bios")  # fmt: skip
    assert problems(vm("firmware: bios"), facts=replace(FACTS, machine_caps=bare)) == []


def test_kvm_on_a_host_without_kvm() -> None:
    no_kvm = replace(FACTS, machines={("x86_64", "qemu"): MACHINES})
    text = vm().replace("type: qemu", "type: kvm")
    (found,) = problems(text, facts=no_kvm)
    assert found == (f"m/vm.yaml:{line_of(text, 'type:')}:9: spec.type: this host has no KVM: "
                     "libvirt offers no kvm domain for x86_64; use type: qemu (emulation, "
                     "slow), or enable virtualisation (/dev/kvm)")  # fmt: skip
    assert problems(text) == []


def test_memory_and_max_memory_over_the_host_memory() -> None:
    text = vm("maxMemory: 6GiB").replace("256MiB", "5GiB")
    found = problems(text)
    assert found == [
        f"m/vm.yaml:{line_of(text, 'memory: 5')}:11: spec.memory: 5GiB is more than this "
        "host's memory (4GiB); lower it, or place the VM on a larger host (metadata.hosts)",
        f"m/vm.yaml:{line_of(text, 'maxMemory')}:14: spec.maxMemory: 6GiB is more than this "
        "host's memory (4GiB); lower it, or place the VM on a larger host (metadata.hosts)",
    ]
    odd = replace(FACTS, memory=4792213504)
    assert "host's memory (4.5GiB)" in problems(text, facts=odd)[0]


def test_unknown_facts_skip_their_checks() -> None:
    nothing = HostFacts(local=True)
    text = vm("machine: nope\nmaxVcpus: 4000\nbridge: x\n"
              "disks: [{file: /var/lib/libvirt/images/gone.img}]").replace("256MiB", "99GiB")
    text = text.replace("  bridge: x\n", "  interfaces: [{bridge: nothere}]\n")
    assert problems(text, facts=nothing) == []


# --- files -----------------------------------------------------------------------------


def test_a_missing_disk_file() -> None:
    text = vm("disks:\n  - file: /var/lib/libvirt/images/gone.img")
    (found,) = problems(text)
    assert found == (f"m/vm.yaml:{line_of(text, 'gone.img')}:13: spec.disks[0].file: "
                     "/var/lib/libvirt/images/gone.img does not exist on this host; create it, "
                     "or fix the path")  # fmt: skip


def test_a_missing_file_the_stopped_domain_already_has_is_no_reason_to_refuse() -> None:
    # adoption (or any redefine) of a domain whose disk file is gone: the definition
    # already names it and nothing is started, so ownership can be recorded; asked to
    # run, or naming a file the definition does not have, it is refused as before
    defined = ("<domain type='qemu'><name>web</name><devices><disk type='file' device='disk'>"
               "<source file='/var/lib/libvirt/images/gone.img'/><target dev='vda'/></disk>"
               "</devices></domain>")  # fmt: skip
    obs = Observed(domains={"web": DomainRecord("web", "u", False, False, defined, None)})
    stopped = vm("state: stopped\ndisks:\n  - file: /var/lib/libvirt/images/gone.img")
    assert problems(stopped, observed=obs) == []
    running = vm("disks:\n  - file: /var/lib/libvirt/images/gone.img")
    assert "gone.img does not exist" in problems(running, observed=obs)[0]
    elsewhere = obs.domains["web"].config_xml.replace("gone.img", "a.img")
    moved = Observed(domains={"web": DomainRecord("web", "u", False, False, elsewhere, None)})
    assert "gone.img does not exist" in problems(stopped, observed=moved)[0]
    assert "gone.img does not exist" in problems(stopped)[0]  # no such domain


def test_a_file_qemu_cannot_reach_names_the_directory() -> None:
    text = vm("cdroms:\n  - file: /root/a.iso\nkernel: /var/lib/libvirt/images/a.img")
    (found,) = problems(text)
    assert found == (f"m/vm.yaml:{line_of(text, 'a.iso')}:13: spec.cdroms[0].file: QEMU runs as "
                     "libvirt-qemu and cannot reach /root/a.iso: directory /root (mode 0700, "
                     "owner 0:0) is not searchable for it; chmod o+x /root, or keep images "
                     "where QEMU can reach them (e.g. /var/lib/libvirt/images)")  # fmt: skip


def test_a_directory_searchable_through_a_group_of_qemu() -> None:
    assert problems(vm("cdroms:\n  - file: /srv/kvm/a.iso")) == []
    outsider = replace(FACTS, qemu_user=QemuUser(64055, 64055, frozenset({64055})))
    (found,) = problems(vm("cdroms:\n  - file: /srv/kvm/a.iso"), facts=outsider)
    assert "QEMU runs as uid 64055 and cannot reach /srv/kvm/a.iso" in found


def test_qemu_as_root_reaches_everything() -> None:
    as_root = replace(FACTS, qemu_user=QemuUser(0, 0))
    assert problems(vm("cdroms:\n  - file: /root/a.iso"), facts=as_root) == []


def test_kernel_and_initrd_are_checked() -> None:
    text = vm("kernel: /var/lib/libvirt/images/gone.img\ninitrd: /root/a.iso")
    found = problems(text)
    assert [f.split(": ")[1] for f in found] == ["spec.kernel", "spec.initrd"]


def test_files_of_a_remote_host_are_not_checked() -> None:
    remote = replace(FACTS, local=False, uri="qemu+ssh://kvm-2/system")
    assert problems(vm("disks:\n  - file: /var/lib/libvirt/images/gone.img"), facts=remote) == []


def test_a_file_a_volume_manifest_makes_is_not_missing() -> None:
    pool = ("apiVersion: reconciler/v1\nkind: StoragePool\nmetadata: {name: images}\n"
            "spec: {path: /var/lib/libvirt/images}\n")  # fmt: skip
    vol = ("apiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: gone.img}\n"
           "spec: {pool: images, capacity: 1GiB}\n")  # fmt: skip
    assert problems(pool, vol, vm("disks:\n  - file: /var/lib/libvirt/images/gone.img")) == []


def test_a_path_that_was_not_read_is_not_judged() -> None:
    assert problems(vm("disks:\n  - file: /elsewhere/x.img")) == []


# --- bridges ----------------------------------------------------------------------------


def test_a_missing_bridge_suggests_a_close_one() -> None:
    text = vm("interfaces:\n  - bridge: br1")
    (found,) = problems(text)
    assert found == (f"m/vm.yaml:{line_of(text, 'br1')}:15: spec.interfaces[0].bridge: no bridge "
                     "br1 on this host; did you mean br0? create it (ip link add br1 type "
                     "bridge), or use network: <a Network>")  # fmt: skip


def test_a_host_interface_that_is_not_a_bridge() -> None:
    (found,) = problems(vm("interfaces:\n  - bridge: eth0"))
    assert found.endswith("spec.interfaces[0].bridge: host interface eth0 is not a bridge; "
                          "make a bridge with eth0 in it and name that, or use a Network")


def test_a_bridge_a_network_makes_is_not_missing() -> None:
    net = ("apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: lab}\n"
           "spec: {mode: isolated, bridge: virbr-new}\n")  # fmt: skip
    assert problems(net, vm("interfaces:\n  - bridge: virbr-new")) == []
    live = NetworkRecord("other", "u", True, False, "<network><name>other</name>"
                         "<bridge name='virbr-old'/></network>", None)  # fmt: skip
    observed = Observed(networks={"other": live})
    assert problems(vm("interfaces:\n  - bridge: virbr-old"), observed=observed) == []


# --- display ports ----------------------------------------------------------------------


def domain(name: str, graphics: str, *, active: bool) -> DomainRecord:
    xml = f"<domain><name>{name}</name><devices>{graphics}</devices></domain>"
    return DomainRecord(name, "uuid-" + name, active, False, xml, xml if active else None)


def test_a_port_held_by_a_running_domain_names_it() -> None:
    text = vm("graphics: {type: vnc, port: 5902, listen: 0.0.0.0}")
    other = domain("db", "<graphics type='vnc' port='5902' autoport='yes' listen='127.0.0.1'/>",
                   active=True)  # fmt: skip
    (found,) = problems(text, observed=Observed(domains={"db": other}))
    assert found == (f"m/vm.yaml:{line_of(text, 'graphics')}:31: spec.graphics.port: port 5902 is "
                     "taken by domain 'db' (running, holds it); use port: auto, or another "
                     "free port")  # fmt: skip


def test_a_port_fixed_in_a_defined_domain() -> None:
    text = vm("graphics: {type: spice, port: 5930}")
    other = domain("old", "<graphics type=\"spice\" port=\"5930\" autoport=\"no\"/>", active=False)
    (found,) = problems(text, observed=Observed(domains={"old": other}))
    assert "port 5930 is taken by domain 'old' (defined with it fixed)" in found


def test_ports_that_do_not_collide() -> None:
    text = vm("graphics: {type: vnc, port: 5902, listen: 127.0.0.1}")
    domains = {
        "web": domain("web", "<graphics type='vnc' port='5902' autoport='no'/>", active=True),
        "auto": domain("auto", "<graphics type='vnc' port='5902' autoport='yes'/>", active=False),
        "else": domain("else", "<graphics type='vnc' port='5902' autoport='no' "
                               "listen='10.0.0.1'/>", active=True),
        "none": domain("none", "<graphics type='vnc' port='-1' autoport='yes'/>", active=True),
    }
    assert problems(text, observed=Observed(domains=domains)) == []


def test_display_ports_reads_start_tags_only() -> None:
    xml = ("<devices><graphics type='vnc' port='5901' autoport='yes' listen='0.0.0.0'>"
           "<listen type='address' address='0.0.0.0'/></graphics>"
           "<graphics type=\"spice\" port=\"5930\" autoport=\"no\"/></devices>")  # fmt: skip
    assert preflight.display_ports(xml) == [(5901, "0.0.0.0", False), (5930, "", True)]


# --- subnets ----------------------------------------------------------------------------


def net(name: str = "lab", address: str = "10.100.0.1", prefix: int = 24) -> str:
    return (f"apiVersion: reconciler/v1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n"
            f"  mode: isolated\n  bridge: virbr-{name}\n  ipv4:\n    address: {address}\n"
            f"    prefix: {prefix}\n")  # fmt: skip


def libvirt_net(name: str, subnet: str, *, active: bool = True, autostart: bool = False,
                bridge: str = "") -> NetworkRecord:  # fmt: skip
    address, _, prefix = subnet.partition("/")
    xml = (f"<network><name>{name}</name><bridge name='{bridge or 'virbr-' + name}'/>"
           f"<ip address='{address}' prefix='{prefix}'/></network>")  # fmt: skip
    return NetworkRecord(name, "u-" + name, active, autostart, xml, xml if active else None)


def test_a_subnet_overlapping_another_libvirt_network() -> None:
    text = net(address="10.50.1.1")
    other = libvirt_net("old", "10.50.0.1/16")
    (found,) = problems(text, observed=Observed(networks={"old": other}))
    assert found == (f"m/vm.yaml:{line_of(text, 'address')}:14: spec.ipv4.address: 10.50.1.0/24 "
                     "overlaps 10.50.0.0/16 of libvirt network 'old'; pick a free subnet")


def test_an_inactive_network_counts_only_when_autostarted() -> None:
    text = net(address="10.50.1.1")
    idle = libvirt_net("idle", "10.50.1.1/24", active=False)
    assert problems(text, observed=Observed(networks={"idle": idle})) == []
    booting = libvirt_net("boot", "10.50.1.1/24", active=False, autostart=True)
    assert len(problems(text, observed=Observed(networks={"boot": booting}))) == 1


def test_the_same_network_and_its_own_bridge_do_not_overlap() -> None:
    # live as this very network: libvirt has it, its bridge carries the address
    same = libvirt_net("lab", "10.100.0.1/24")
    assert problems(net(), observed=Observed(networks={"lab": same})) == []


def test_a_subnet_overlapping_a_subnet_on_a_host_interface() -> None:
    text = net("lan", address="192.0.2.129", prefix=25)
    (found,) = problems(text)
    assert found.endswith("spec.ipv4.address: 192.0.2.128/25 overlaps 192.0.2.0/24 on host "
                          "interface eth0; pick a free subnet")


# --- the rest: findings become load problems, wanted facts, the extension point ----------


def test_a_problem_drops_the_manifest_and_blocks_pruning() -> None:
    ms = manifests(vm("machine: nope", name="bad"), vm(name="good"))
    load = LoadResult("m", ms, (), ("m/vm.yaml",))
    checked = drop_findings(load, preflight.check(ms, FACTS, Observed()), ["preflight: x"])
    assert [m.name for m in checked.manifests] == ["good"]
    assert not checked.complete
    assert checked.notes == ("preflight: x",)


def test_wanted_names_only_what_the_checks_read() -> None:
    ms = manifests(vm("machine: q35\ncdroms: [{file: /srv/a.iso}, {file: /tmp/b.iso}]\n"
                      "interfaces: [{bridge: br0}]"), net())  # fmt: skip
    allowed = PathPolicy((Path("/srv"),), None).allows
    assert preflight.wanted(ms, allowed) == FactsWanted(
        guests=frozenset({("x86_64", "q35", "qemu")}),
        paths=frozenset({"/srv/a.iso"}),
        bridges=True,
        addresses=True,
    )
    assert preflight.wanted(manifests(vm())) == FactsWanted(
        guests=frozenset({("x86_64", "pc", "qemu")})
    )


def test_a_check_added_to_vm_checks_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension point a cpu check goes into."""

    def cpu_check(m: Manifest, spec: object, facts: HostFacts,
                  ctx: preflight.Context) -> Iterable[FieldProblem]:  # fmt: skip
        yield FieldProblem(("spec", "cpu"), "no such CPU model", "pick another")

    monkeypatch.setattr(preflight, "VM_CHECKS", (*preflight.VM_CHECKS, cpu_check))
    (found,) = problems(vm("cpu: Bogus"))
    assert found.endswith("spec.cpu: no such CPU model; pick another")


# --- allowed disk roots (validate, offline) -------------------------------------------------


def test_paths_outside_the_allowed_roots() -> None:
    text = vm("disks: [{file: /srv/a.img}, {file: /tmp/b.img}]\nserial: {file: /tmp/log}")
    vol = ("apiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: v}\n"
           "spec: {pool: p, capacity: 1GiB, source: /home/u/base.qcow2}\n")  # fmt: skip
    ms = manifests(text, vol)
    load = LoadResult("m", ms, (), ("m/vm.yaml",))
    policy = PathPolicy((Path("/srv"), Path("/opt")), (Path("/etc/reconciler/secrets"),))
    checked = drop_findings(load, preflight.path_problems(ms, policy))
    assert [str(p) for p in checked.problems] == [
        f"m/vm.yaml:{line_of(text, 'b.img')}:38: spec.disks[1].file: /tmp/b.img is outside "
        "allowedDiskRoots (/srv, /opt); move it under one of them, or add a root to "
        "allowedDiskRoots in the configuration",
        f"m/vm.yaml:{line_of(text, 'log')}:18: spec.serial.file: /tmp/log is outside "
        "allowedDiskRoots (/srv, /opt); move it under one of them, or add a root to allowedDiskRoots "
        "in the configuration",
        "m/vm.yaml:15:41: spec.source: /home/u/base.qcow2 is outside allowedDiskRoots "
        "(/srv, /opt); move it under one of them, or add a root to allowedDiskRoots in the "
        "configuration",
    ]
    assert preflight.path_problems(ms, PathPolicy(None, None)) == []


# --- libvirt's documents ------------------------------------------------------------------


CAPS = """<capabilities><host>
<topology><cells num='2'><cell id='0'><memory unit='KiB'>2097152</memory></cell>
<cell id='1'><memory unit='KiB'>2097152</memory></cell></cells></topology>
<secmodel><model>none</model></secmodel>
<secmodel><model>dac</model><baselabel type='kvm'>+64055:+107</baselabel>
<baselabel type='qemu'>+64055:+107</baselabel></secmodel></host>
<guest><os_type>hvm</os_type><arch name='x86_64'>
<machine maxCpus='255'>pc-i440fx-7.2</machine>
<machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
<domain type='qemu'/><domain type='kvm'><machine>kvm-only</machine></domain></arch></guest>
<guest><os_type>xen</os_type><arch name='x86_64'><machine>xenpv</machine>
<domain type='xen'/></arch></guest>
</capabilities>"""


def test_parse_capabilities() -> None:
    parsed = parse_capabilities(CAPS)
    assert parsed.machines == {
        ("x86_64", "qemu"): frozenset({"pc", "pc-i440fx-7.2"}),
        ("x86_64", "kvm"): frozenset({"pc", "pc-i440fx-7.2", "kvm-only"}),
    }
    assert parsed.memory == 4 * GiB
    assert parsed.dac_label == "+64055:+107"
    no_kvm = CAPS.replace("<domain type='kvm'><machine>kvm-only</machine></domain>", "")
    assert ("x86_64", "kvm") not in parse_capabilities(no_kvm).machines


def test_parse_domain_capabilities() -> None:
    text = """<domainCapabilities><machine>pc-q35-7.2</machine><vcpu max='288'/>
    <os supported='yes'><enum name='firmware'><value>efi</value></enum>
    <loader supported='yes'><value>/usr/share/OVMF/OVMF_CODE_4M.fd</value></loader></os>
    </domainCapabilities>"""
    found = parse_domain_capabilities(text, "q35")
    assert (found.machine, found.max_vcpus, found.firmware, found.loaders) == (
        "pc-q35-7.2", 288, frozenset({"efi"}), ("/usr/share/OVMF/OVMF_CODE_4M.fd",))
    bare = parse_domain_capabilities(
        "<domainCapabilities><os supported='yes'><loader supported='no'/></os>"
        "</domainCapabilities>", "pc")  # fmt: skip
    assert (bare.machine, bare.max_vcpus, bare.firmware, bare.loaders) == (
        "pc", None, frozenset(), ())


def test_pool_records_give_volume_paths() -> None:
    """A disk file that a Volume in an existing (unmanaged) pool will hold."""
    vol = ("apiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: gone.img}\n"
           "spec: {pool: images, capacity: 1GiB}\n")  # fmt: skip
    pool = PoolRecord("images", "u", True, True,
                      "<pool type='dir'><name>images</name><target>"
                      "<path>/var/lib/libvirt/images</path></target></pool>")  # fmt: skip
    observed = Observed(pools={"images": pool})
    assert problems(vol, vm("disks:\n  - file: /var/lib/libvirt/images/gone.img"),
                    observed=observed) == []  # fmt: skip


# --- Hypervisor.host_facts: read once per connection -----------------------------------------


class FakeConnection:
    """The libvirt calls host_facts makes, counted; domain capabilities of ``refused``
    machines fail as libvirt fails them."""

    def __init__(self, refused: frozenset[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.refused = refused

    def getCapabilities(self) -> str:
        self.calls.append("getCapabilities")
        return CAPS

    def getInfo(self) -> list[object]:
        self.calls.append("getInfo")
        return ["x86_64", 4096, 2]

    def getMemoryStats(self, cell: int, flags: int) -> dict[str, int]:
        self.calls.append("getMemoryStats")
        return {"total": 8 * 1024**2, "free": 4 * 1024**2}  # KiB

    def getDomainCapabilities(self, emulator: object, arch: str, machine: str,
                              virt_type: str, flags: int) -> str:  # fmt: skip
        import libvirt

        self.calls.append(f"getDomainCapabilities {machine} {virt_type}")
        if machine in self.refused:
            raise libvirt.libvirtError("operation forbidden: read only access")
        return (f"<domainCapabilities><machine>{machine}-canonical</machine><vcpu max='255'/>"
                "</domainCapabilities>")  # fmt: skip


def test_host_facts_are_read_once_per_connection() -> None:
    from reconciler.hypervisor import Hypervisor

    conn = FakeConnection()
    hv = Hypervisor(conn, "qemu:///system")
    want = FactsWanted(guests=frozenset({("x86_64", "pc", "qemu"), ("x86_64", "nope", "qemu")}))
    first = hv.host_facts(want)
    second = hv.host_facts(want)
    assert first == second
    assert conn.calls == ["getCapabilities", "getMemoryStats", "getDomainCapabilities pc qemu"]
    assert first.machine_caps[("x86_64", "pc", "qemu")].machine == "pc-canonical"
    # the NUMA cells say 4 GiB, MemTotal 8 GiB: the larger (a cell may not cover it all)
    assert first.memory == 8 * GiB and first.unknown == ()
    # a new machine type is read when first wanted, once
    hv.host_facts(FactsWanted(guests=frozenset({("x86_64", "pc", "kvm")})))
    hv.host_facts(FactsWanted(guests=frozenset({("x86_64", "pc", "kvm")})))
    assert conn.calls[3:] == ["getDomainCapabilities pc kvm"]
    # a new connection (libvirtd restarted, QEMU upgraded) reads again
    Hypervisor(conn, "qemu:///system").host_facts(want)
    assert conn.calls[4:] == ["getCapabilities", "getMemoryStats", "getDomainCapabilities pc qemu"]


def test_a_fact_libvirt_refuses_is_one_line_and_skips_its_checks() -> None:
    from reconciler.hypervisor import Hypervisor

    hv = Hypervisor(FakeConnection(refused=frozenset({"pc"})), "qemu:///system")
    facts = hv.host_facts(FactsWanted(guests=frozenset({("x86_64", "pc", "qemu")})))
    (line,) = facts.unknown
    assert line.startswith("vCPU limit and firmware not checked: reading domain capabilities "
                           "of pc (x86_64, qemu): ")  # fmt: skip
    assert "\n" not in line
    assert problems(vm("maxVcpus: 4000\nfirmware: uefi"), facts=facts) == []


def test_a_remote_host_reads_no_local_file() -> None:
    from reconciler.hypervisor import Hypervisor

    hv = Hypervisor(FakeConnection(), "qemu+ssh://kvm-2/system")
    facts = hv.host_facts(FactsWanted(paths=frozenset({"/etc/passwd"}), addresses=True))
    assert not facts.local and facts.paths == {} and facts.addresses is None
    assert facts.qemu_user is None


# --- the guest CPU ---------------------------------------------------------------------------

KVM64_CAPS = """<domainCapabilities><cpu>
  <mode name='host-passthrough' supported='yes'/>
  <mode name='host-model' supported='yes'><model fallback='forbid'>kvm64</model>
    <vendor>AMD</vendor><feature policy='require' name='x2apic'/>
    <feature policy='require' name='arch-capabilities'/></mode>
</cpu></domainCapabilities>"""
CPU_FACTS = replace(
    FACTS,
    machine_caps={**FACTS.machine_caps,
                  ("x86_64", "pc", "kvm"): caps("pc-i440fx-7.2", xml=KVM64_CAPS)},
    host_cpu_model="Broadwell",
    cpu_models=frozenset({"EPYC", "EPYC-Rome", "Nehalem", "Skylake-Server", "qemu64"}),
    cpu_features_unknown=frozenset({"arch-capabilites"}),
    cpu_verdicts={
        preflight.CpuQuestion("x86_64", "pc", "kvm", "Skylake-Server"):
            "the CPU is incompatible with host CPU: Host CPU does not provide required "
            "features: avx512f, pku",
        preflight.CpuQuestion("x86_64", "pc", "kvm", None, ("svm", "vmx")):
            "the CPU is incompatible with host CPU: Host CPU does not provide required "
            "features: vmx",
        preflight.CpuQuestion("x86_64", "pc", "kvm", "EPYC", ("svm",)): None,
    },
)  # fmt: skip


def kvm_vm(cpu: str) -> str:
    return vm(f"cpu: {cpu}").replace("type: qemu", "type: kvm")


def test_a_cpu_model_libvirt_does_not_know_lists_close_ones() -> None:
    text = kvm_vm("EPYC-Romee")
    assert problems(text, facts=CPU_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:8: spec.cpu: libvirt knows no CPU model "
        "'EPYC-Romee' for x86_64; close ones: EPYC-Rome, EPYC; or use cpu: host-model"]


def test_a_cpu_model_this_host_cannot_run_names_what_it_lacks() -> None:
    text = kvm_vm("{model: Skylake-Server}")
    assert problems(text, facts=CPU_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:16: spec.cpu.model: this host's CPU (Broadwell) "
        "cannot run CPU model Skylake-Server: it lacks avx512f, pku; use cpu: host-model, or "
        "disable what it lacks, or a model this host can run (`virsh domcapabilities` marks them "
        "usable='yes')"]


QEMU64 = "the CPU is incompatible with host CPU: Host CPU does not provide required features: svm"
QEMU64_FACTS = replace(CPU_FACTS, cpu_verdicts={
    # what libvirt answers this host (Broadwell): qemu64 has svm, unless it is disabled;
    # forbid does not take it out of the model; a forbidden feature the host has
    preflight.CpuQuestion("x86_64", "pc", "kvm", "qemu64"): QEMU64,
    preflight.CpuQuestion("x86_64", "pc", "kvm", "qemu64", ("x2apic",), ("svm", "pni")): None,
    preflight.CpuQuestion("x86_64", "pc", "kvm", "qemu64", (), (), ("svm",)): QEMU64,
    preflight.CpuQuestion("x86_64", "pc", "kvm", "qemu64", (), ("svm",), ("sse2",)):
        "the CPU is incompatible with host CPU: Host CPU provides forbidden features: sse2",
})  # fmt: skip


def test_a_feature_the_manifest_disables_is_not_asked_of_the_host() -> None:
    """What export writes for a VM running with QEMU's default CPU (q35, no <cpu>):
    the VM runs with it, so the plan must not refuse it."""
    exported = kvm_vm("{model: qemu64, features: {pni: disable, x2apic: require, svm: disable}}")
    assert problems(exported, facts=QEMU64_FACTS) == []
    question = preflight.cpu_question(manifests(exported)[0].spec)  # type: ignore[arg-type]
    assert question == preflight.CpuQuestion("x86_64", "pc", "kvm", "qemu64", ("x2apic",),
                                             ("pni", "svm"))  # fmt: skip
    assert preflight.cpu_compare_xml(question, None) == (
        '<cpu mode="custom" match="exact"><model>qemu64</model>'
        '<feature policy="require" name="x2apic" /><feature policy="disable" name="pni" />'
        '<feature policy="disable" name="svm" /></cpu>')  # fmt: skip


def test_a_forbidden_feature_is_checked_as_libvirt_checks_it() -> None:
    text = kvm_vm("{model: qemu64, features: {svm: forbid}}")
    assert problems(text, facts=QEMU64_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:16: spec.cpu.model: this host's CPU (Broadwell) "
        "cannot run CPU model qemu64: it lacks svm; write svm: disable (forbid keeps it "
        "required), or use cpu: host-model, or a model this host can run (`virsh "
        "domcapabilities` marks them usable='yes')"]
    text = kvm_vm("{model: qemu64, features: {svm: disable, sse2: forbid}}")
    assert problems(text, facts=QEMU64_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:55: spec.cpu.features.sse2: this host's CPU "
        "(Broadwell) provides sse2, which cpu.features forbids: libvirt refuses to start the VM "
        "on it; write sse2: disable to keep it from the guest on any host"]


def test_a_required_feature_the_host_lacks_is_placed_at_the_feature() -> None:
    text = kvm_vm("{mode: host-passthrough, features: {svm: require, vmx: require, x2apic: force}}")
    assert problems(text, facts=CPU_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:63: spec.cpu.features.vmx: this host's CPU "
        "(Broadwell) does not provide required feature vmx; set its policy to optional, or run this VM on "
        "a host that has it"]
    assert problems(kvm_vm("{model: EPYC, features: {svm: require}}"), facts=CPU_FACTS) == []


def test_a_feature_name_libvirt_does_not_know_suggests_the_right_one() -> None:
    text = kvm_vm("{features: {arch-capabilites: disable}}")
    assert problems(text, facts=CPU_FACTS) == [
        f"m/vm.yaml:{line_of(text, 'cpu:')}:38: spec.cpu.features.arch-capabilites: libvirt "
        "knows no CPU feature 'arch-capabilites'; did you mean 'arch-capabilities'?; names are "
        "as libvirt spells them (its cpu_map, x86_features.xml)"]


def test_cpu_checks_ask_only_what_they_need() -> None:
    ms = manifests(kvm_vm("host-model"), kvm_vm("{features: {vmx: optional}}"),
                   kvm_vm("{model: EPYC, features: {svm: require, x2apic: disable}}"))
    wanted = preflight.wanted(ms)
    assert wanted.cpu_questions == frozenset(
        {preflight.CpuQuestion("x86_64", "pc", "kvm", "EPYC", ("svm",), ("x2apic",))})
    assert wanted.cpu_features == frozenset({"vmx", "svm", "x2apic"})
    # nothing known about the host's CPU: nothing claimed
    assert problems(kvm_vm("{model: Skylake-Server}")) == []


def test_the_compared_cpu_is_libvirt_xml() -> None:
    question = preflight.CpuQuestion("x86_64", "pc", "kvm", None, ("svm",))
    assert preflight.cpu_compare_xml(question, None) is None
    assert preflight.cpu_compare_xml(question, "kvm64") == (
        '<cpu mode="custom" match="exact"><model>kvm64</model>'
        '<feature policy="require" name="svm" /></cpu>')
    assert preflight.host_cpu_model(KVM64_CAPS) == ("kvm64", ("x2apic", "arch-capabilities"))


def test_a_network_libvirt_returns_unreadable_stops_no_plan() -> None:
    """Another tool's network whose definition is not well-formed XML (a raw ``&``, as
    libvirt returned one here) is passed over, not a traceback for every plan."""
    from reconciler.preflight import _network_fields
    from reconciler.snapshot import ObservedNetwork

    bad = ObservedNetwork(
        "other", "9b0c5b5e-0000-4000-8000-000000000001", True, False,
        "<network><name>other</name><domain name='x&y.test'/></network>", None,
    )  # fmt: skip
    assert _network_fields(bad) is None
    good = replace(bad, config_xml="<network><name>other</name><bridge name='virbr9'/></network>")
    assert (_network_fields(good) or {}).get("bridge") == "virbr9"


# --- a file disk's format against its header ------------------------------------------------

QCOW2_FACTS = replace(FACTS, paths={
    **FACTS.paths,
    "/var/lib/libvirt/images/q.qcow2": PathFacts(True, (ROOT_DIR, IMAGES), image_format="qcow2"),
    "/var/lib/libvirt/images/r.img": PathFacts(True, (ROOT_DIR, IMAGES), image_format="raw"),
})


def test_a_qcow2_image_named_without_format_is_refused_at_its_file() -> None:
    text = vm("disks:\n  - file: /var/lib/libvirt/images/q.qcow2")
    (found,) = problems(text, facts=QCOW2_FACTS)
    line = line_of(text, "file:")
    assert found.startswith(f"m/vm.yaml:{line}:")
    assert "spec.disks[0].file: /var/lib/libvirt/images/q.qcow2 is a qcow2 image, but the " \
           "disk says format: raw (the default)" in found
    assert found.endswith("; set format: qcow2")


def test_a_qcow2_image_named_raw_is_refused_at_its_format() -> None:
    text = vm("disks:\n  - file: /var/lib/libvirt/images/q.qcow2\n    format: raw")
    (found,) = problems(text, facts=QCOW2_FACTS)
    assert f"m/vm.yaml:{line_of(text, 'format:')}:" in found
    assert "spec.disks[0].format:" in found and found.endswith("; set format: qcow2")


def test_a_raw_image_named_qcow2_is_refused() -> None:
    (found,) = problems(vm("disks:\n  - file: /var/lib/libvirt/images/r.img\n    format: qcow2"),
                        facts=QCOW2_FACTS)
    assert "has no qcow2 header, but the disk says format: qcow2" in found


def test_formats_that_match_their_header_are_no_problem() -> None:
    assert problems(vm("disks:\n  - file: /var/lib/libvirt/images/q.qcow2\n    format: qcow2\n"
                       "  - file: /var/lib/libvirt/images/r.img"), facts=QCOW2_FACTS) == []
