"""xml/domain_storage.py: block disks, the disks' optional fields, filesystems and
hostdevs: golden XML, round trips, and the compatibility rule (a manifest that does
not name a set or an optional field keeps what the domain has)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import preflight
from reconciler.diff import diff
from reconciler.hostpaths import HostPath, PathPolicy
from reconciler.model import Kind, SpecError, VirtualMachineSpec
from reconciler.preflight import HostFacts, check_host_devices
from reconciler.schema import validate_document
from reconciler.xml import domain, domain_tuning
from reconciler.xml.domain_storage import node_device_keys

from .xml_support import assert_golden, manifest

STORAGE = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: stor}
spec:
  type: qemu
  memory: 256MiB
  memoryBacking: {shared: true}
  iothreads: 1
  disks:
    - device: /dev/vg0/stor-data
      discard: unmap
      detectZeroes: unmap
      io: native
      cache: none
      shareable: true
      serial: BLK1
      bootIndex: 1
    - file: /var/lib/libvirt/images/stor.qcow2
      format: qcow2
      io: io_uring
      iothread: 1
      bootIndex: 2
  filesystems:
    - source: /srv/share
      target: share
    - driver: 9p
      source: /srv/ro
      target: ro
      readonly: true
      accessMode: mapped
  hostdevs:
    - {type: pci, address: "0000:03:00.0"}
    - {type: pci, address: "0000:04:00.1", managed: false}
    - {type: usb, vendor: "0x046D", product: "0xc52b"}
    - {type: usb, bus: 1, device: 4}
"""

# A domain as libvirt 9.0 writes it back, with a block disk, a share and a host device
# someone added by hand, and optional disk settings a manifest may not name.
HAND_MADE = """<domain type='qemu'>
  <name>stor</name>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <clock offset='utc'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap' io='threads'/>
      <source file='/var/lib/libvirt/images/stor.img'/>
      <target dev='vda' bus='virtio'/>
      <shareable/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sdz'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <source dir='/srv/share'/>
      <target dir='share'/>
    </filesystem>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source><vendor id='0x046d'/><product id='0xc52b'/></source>
      <address type='usb' bus='0' port='1'/>
    </hostdev>
    <serial type='pty'><target type='isa-serial' port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""

PLAIN = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: stor}
spec:
  type: qemu
  memory: 256MiB
  disks:
    - file: /var/lib/libvirt/images/stor.img
"""


def spec_of(text: str) -> VirtualMachineSpec:
    spec = manifest(text).spec
    assert isinstance(spec, VirtualMachineSpec)
    return spec


def planned(spec: VirtualMachineSpec, xml: str) -> list[str]:
    """The paths a plan shows for ``spec`` against ``xml`` (as planner/vm.py compares)."""
    observed = {**domain.observe(xml), **domain.declared_storage(spec, xml)}
    desired = domain.project(spec, machine_aliases={"pc": "pc-i440fx-7.2"})
    # tuning the manifest does not name is not compared (as planner/vm.py does)
    return [c.path for c in diff(desired, observed, ignore=domain_tuning.kept_paths(spec))]


def test_golden_render() -> None:
    assert_golden(domain.render("stor", spec_of(STORAGE)), "domain-storage.xml")


def test_render_reads_back_as_projected() -> None:
    spec = spec_of(STORAGE)
    xml = domain.render("stor", spec)
    assert planned(spec, xml) == ["machine"]  # pc: libvirt's alias, not in a bare render
    observed = domain.observe(xml, storage=True)
    assert observed["disks[/dev/vg0/stor-data].discard"] == "unmap"
    assert observed["hostdevs[usb 046d:c52b].vendor"] == "0x046d"
    assert observed["hostdevs[pci 0000:04:00.1].managed"] is False
    assert observed["filesystems[ro].driver"] == "9p"


def test_virtiofs_with_shared_memory_and_9p_without() -> None:
    xml = domain.render("stor", spec_of(STORAGE))
    assert "<access mode=\"shared\"/>" in xml and "<source type=\"memfd\"/>" in xml
    only_9p = spec_of(PLAIN + "  filesystems: [{driver: 9p, source: /srv/a, target: a}]\n")
    assert "memoryBacking" not in domain.render("stor", only_9p)


def test_a_manifest_naming_none_of_it_keeps_everything_and_plans_nothing() -> None:
    spec = spec_of(PLAIN)
    assert planned(spec, HAND_MADE) == []
    patched = domain.patch(HAND_MADE, spec, machine_aliases={"pc": "pc-i440fx-7.2"})
    for kept in ("/dev/sdz", "<filesystem", "<hostdev", "discard=\"unmap\"", "io=\"threads\"",
                 "<shareable/>", "memoryBacking"):  # fmt: skip
        assert kept in patched, kept


def test_declaring_a_block_disk_makes_block_disks_an_exact_set() -> None:
    spec = spec_of(PLAIN + "    - device: /dev/sdy\n")
    assert {"disks[/dev/sdz].target", "disks[/dev/sdy].target"} <= set(planned(spec, HAND_MADE))
    patched = domain.patch(HAND_MADE, spec)
    assert "/dev/sdz" not in patched and "/dev/sdy" in patched
    # the file disk keeps its element and its options
    assert "discard=\"unmap\"" in patched and "<shareable/>" in patched


def test_naming_the_sets_makes_them_exact() -> None:
    spec = spec_of(PLAIN + "  filesystems: []\n  hostdevs: []\n")
    assert {"filesystems[share].source", "hostdevs[usb 046d:c52b].vendor"} <= set(
        planned(spec, HAND_MADE))
    patched = domain.patch(HAND_MADE, spec)
    assert "<filesystem" not in patched and "<hostdev" not in patched


def test_a_named_optional_disk_field_is_compared_and_set_alone() -> None:
    spec = spec_of(PLAIN.replace("stor.img\n", "stor.img\n      discard: ignore\n"))
    assert planned(spec, HAND_MADE) == ["disks[/var/lib/libvirt/images/stor.img].discard"]
    patched = domain.patch(HAND_MADE, spec)
    assert "discard=\"ignore\"" in patched
    assert "io=\"threads\"" in patched and "<shareable/>" in patched  # not named: kept
    assert "slot=\"0x04\"" in patched  # the disk kept its element


def test_hostdev_and_share_keys_are_the_host_identity() -> None:
    spec = spec_of(PLAIN + "  memoryBacking: {shared: true}\n"
                   "  filesystems: [{source: /srv/share, target: share}]\n"
                   "  hostdevs: [{type: usb, vendor: '0x046d', product: '0xC52B'}]\n")
    assert planned(spec, HAND_MADE) == []


@pytest.mark.parametrize(("extra", "where", "says"), [
    ("  disks: [{file: /a.img, io: native}]\n", "disks[0].io", "cache none or directsync"),
    ("  disks: [{file: /a.img, bus: sata, iothread: 1}]\n", "disks[0].iothread", "virtio disks"),
    ("  boot: [disk]\n  disks: [{file: /a.img, bootIndex: 1}]\n", "boot", "bootIndex"),
    ("  disks: [{file: /a.img, bootIndex: 1}, {file: /b.img, bootIndex: 1}]\n",
     "disks[1].bootIndex", "already disks[0]"),
    ("  filesystems: [{source: /a, target: t}]\n", "filesystems[0].driver",
     "memory shared"),
    ("  iothreads: 1\n  disks: [{file: /a.img, iothread: 2}]\n", "disks[0].iothread",
     "iothreads: 1"),
    ("  filesystems: [{source: /a, target: t, readonly: true}]\n", "filesystems[0].readonly",
     "read-only virtiofs"),
    ("  filesystems: [{source: /a, target: t, accessMode: mapped}]\n",
     "filesystems[0].accessMode", "passthrough"),
    ("  filesystems: [{driver: 9p, source: /a, target: t}, {driver: 9p, source: /b, target: t}]\n",
     "filesystems[1].target", "already"),
    ("  hostdevs: [{type: pci, address: '0000:03:00.0'}, {type: pci, address: '0000:03:00.0'}]\n",
     "hostdevs[1]", "already"),
])  # fmt: skip
def test_contradictions_are_one_clear_problem(extra: str, where: str, says: str) -> None:
    text = "apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: v}\n" \
        "spec:\n  memory: 64MiB\n" + extra
    with pytest.raises(SpecError) as caught:
        manifest(text)
    found = [(p.path, p.message) for p in caught.value.problems]
    assert any(".".join(map(str, path)).replace(".[", "[").startswith("spec") and
               _dotted(path) == where and says in message
               for path, message in found), found  # fmt: skip


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path[1:]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def test_a_bootindex_leaves_boot_empty() -> None:
    spec = spec_of(PLAIN.replace("stor.img\n", "stor.img\n      bootIndex: 1\n"))
    assert spec.boot == ()
    assert "<boot order=\"1\"/>" in domain.render("stor", spec)


def test_a_block_device_needs_its_own_root(tmp_path: Path) -> None:
    policy = PathPolicy(disk_roots=(tmp_path,), secret_roots=None)
    refusal = policy.refusal(HostPath("disks[0].device", "/dev/null"))
    assert refusal is not None
    assert "outside allowedDiskRoots" in refusal and "block device needs a root of its own" \
        in refusal  # fmt: skip
    allowed = PathPolicy(disk_roots=(Path("/dev/null"),), secret_roots=None)
    assert allowed.refusal(HostPath("disks[0].device", "/dev/null")) is None


def test_hot_plug_keys_find_the_device() -> None:
    xml = domain.render("stor", spec_of(STORAGE))
    for section, key in (("disks", "/dev/vg0/stor-data"), ("filesystems", "share"),
                         ("hostdevs", "pci 0000:03:00.0"), ("hostdevs", "usb 1.4")):
        found = domain.device_xml(xml, section, key)
        assert found is not None, (section, key)


@pytest.mark.parametrize(("item", "field"), [
    ({"disks": [{"device": "/dev/sdb", "file": "/a.img"}]}, "disks"),
    ({"hostdevs": [{"type": "usb", "address": "0000:03:00.0"}]}, "hostdevs"),
    ({"hostdevs": [{"type": "pci", "address": "3:0.0"}]}, "hostdevs"),
    ({"hostdevs": [{"type": "usb", "vendor": "0x046d"}]}, "hostdevs"),
    ({"filesystems": [{"source": "/a", "target": "t", "driver": "nfs"}]}, "filesystems"),
    ({"disks": [{"file": "/a.img", "discard": "yes"}]}, "disks"),
])  # fmt: skip
def test_the_schema_refuses_what_libvirt_cannot_be_told(item: dict[str, object],
                                                        field: str) -> None:  # fmt: skip
    document = {"apiVersion": "reconciler/v1", "kind": "VirtualMachine",
                "metadata": {"name": "v"}, "spec": {"memory": "64MiB", **item}}  # fmt: skip
    problems = validate_document(Kind.VIRTUAL_MACHINE, document)
    assert problems and all(field in str(p) for p in problems), problems


PCI_NODE = """<device><name>pci_0000_03_00_0</name><capability type='pci'>
<domain>0</domain><bus>3</bus><slot>0</slot><function>0</function>
<product id='0x0d57'/><vendor id='0x8086'/></capability></device>"""
USB_NODE = """<device><name>usb_1_4</name><capability type='usb_device'>
<bus>1</bus><device>4</device><product id='0xC52B'/><vendor id='0x046d'/></capability></device>"""


def test_node_devices_answer_to_the_manifest_keys() -> None:
    assert node_device_keys(PCI_NODE) == ("pci 0000:03:00.0",)
    assert node_device_keys(USB_NODE) == ("usb 046d:c52b", "usb 1.4")
    assert node_device_keys("<device><capability type='net'/></device>") == ()


@pytest.mark.parametrize(("state", "problems"), [("running", 1), ("stopped", 0)])
def test_preflight_names_a_missing_host_device_of_a_vm_to_run(state: str, problems: int) -> None:
    m = manifest(PLAIN + f"  state: {state}\n  hostdevs:\n"
                 "    - {type: pci, address: '0000:03:00.0'}\n"
                 "    - {type: usb, vendor: '0x046d', product: '0xc52c'}\n")
    assert isinstance(m.spec, VirtualMachineSpec)
    facts = HostFacts(host_devices=frozenset(node_device_keys(PCI_NODE) + node_device_keys(USB_NODE)))
    found = list(check_host_devices(m, m.spec, facts, None))  # type: ignore[arg-type]
    assert len(found) == problems
    if found:
        assert found[0].path == ("spec", "hostdevs", 1)
        assert "no USB device 046d:c52c" in found[0].message
    assert preflight.wanted([m]).host_devices is (state == "running")
