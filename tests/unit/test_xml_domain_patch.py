"""domain.patch: a redefinition is the current definition with only what changed set.

The domain below is what ``virsh dumpxml --inactive`` shows of a VM made by hand
(virt-install style): agent channel and its virtio-serial controller, rng, USB2
controllers, video, timers, ``<pm>``, hand-set PCI addresses, libosinfo metadata,
a block disk and a direct NIC the manifest cannot express.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lxml import etree

from reconciler.diff import diff
from reconciler.model import CpuSpec, VirtualMachineSpec
from reconciler.xml import domain
from reconciler.xml.domain import Ownership

from .xml_support import manifest

LIBOSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
OWNER = Ownership(manifest="/m/vm1.yaml", digest="sha256:abc")

HANDMADE = f"""<domain type='kvm'>
  <name>vm1</name>
  <uuid>8b7a2f0e-1111-4c3a-9d7e-0123456789ab</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="{LIBOSINFO}">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
    <vmport state='off'/>
  </features>
  <cpu mode='host-model' check='partial'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <pm>
    <suspend-to-mem enabled='no'/>
    <suspend-to-disk enabled='no'/>
  </pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool='images' volume='vm1-data'/>
      <target dev='vdb' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sdz'/>
      <target dev='vdc' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x08' slot='0x00' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'>
      <model name='pcie-root-port'/>
      <target chassis='1' port='0x10'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0' multifunction='on'/>
    </controller>
    <controller type='virtio-serial' index='0'>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:01'/>
      <source network='default'/>
      <model type='virtio'/>
      <rom enabled='no'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:aa:bb:99'/>
      <source dev='eth0' mode='bridge'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x09' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <input type='tablet' bus='usb'>
      <address type='usb' bus='0' port='1'/>
    </input>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='spice' autoport='yes'>
      <listen type='address' address='127.0.0.1'/>
      <image compression='off'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </video>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </memballoon>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
    </rng>
  </devices>
</domain>
"""

VM1 = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm1}
spec:
  type: kvm
  memory: 1GiB
  vcpus: 2
  machine: q35
  cpu: host-model
  disks:
    - {file: /var/lib/libvirt/images/vm1.qcow2, format: qcow2}
    - {volume: vm1-data}
  interfaces:
    - {network: default, mac: "52:54:00:aa:bb:01"}
  graphics: {type: spice}
  inputs: [tablet]
  adopt: true
"""
CONTEXT: dict[str, Any] = {
    "volume_pools": {"vm1-data": "images"},
    "volume_formats": {"vm1-data": "raw"},
    "machine_aliases": {"q35": "pc-q35-7.2"},
}


def _spec(text: str = VM1, **change: Any) -> VirtualMachineSpec:
    spec = manifest(text).spec
    assert isinstance(spec, VirtualMachineSpec)
    spec = dataclasses.replace(spec, **change)
    return domain.settle_targets(spec, HANDMADE)


def _patched(spec: VirtualMachineSpec, current: str = HANDMADE) -> str:
    return domain.patch(current, spec, ownership=OWNER, **CONTEXT)


def _canon(xml: str, *, drop_owner: bool = True) -> str:
    """The document as comparable text: whitespace and our ownership record aside."""
    root = etree.fromstring(xml.encode(), etree.XMLParser(remove_blank_text=True))
    if drop_owner:
        for owner in root.findall(f"metadata/{{{domain.OWNER_NAMESPACE}}}owner"):
            owner.getparent().remove(owner)  # type: ignore[union-attr]
    return etree.tostring(root, method="c14n").decode()


def _changed_elements(before: str, after: str) -> set[str]:
    """Top-level and device children whose canonical text differs (by tag and index)."""

    def parts(xml: str) -> dict[str, str]:
        root = etree.fromstring(_canon(xml).encode())
        out = {}
        for child in root:
            if child.tag == "devices":
                for j, device in enumerate(child):
                    out[f"devices/{device.tag}#{j}"] = etree.tostring(device).decode()
            else:
                out[str(child.tag)] = etree.tostring(child).decode()
        return out

    a, b = parts(before), parts(after)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_the_manifest_matches_the_handmade_domain() -> None:
    # the premise of the tests below: adoption plans only the ownership change
    spec = _spec()
    assert diff(domain.project(spec, **CONTEXT), domain.observe(HANDMADE)) == []


def test_adoption_keeps_everything_but_adds_the_ownership_record() -> None:
    patched = _patched(_spec())
    assert _canon(patched) == _canon(HANDMADE)
    assert domain.read_ownership(patched) == OWNER
    # the foreign namespace keeps its prefix (xml.etree would write ns0:)
    assert "<libosinfo:libosinfo" in patched and "ns0:" not in patched
    # the same patch twice is one record, replaced where it stands
    again = domain.patch(patched, _spec(), ownership=OWNER, **CONTEXT)
    assert again.count("<rc:owner") == 1 and _canon(again) == _canon(HANDMADE)


def test_a_restart_class_change_changes_only_that_field() -> None:
    cases: dict[str, tuple[dict[str, Any], set[str]]] = {
        "machine": ({"machine": "pc-q35-7.1"}, {"os"}),
        "cpu": ({"cpu": CpuSpec(mode="host-passthrough")}, {"cpu"}),
        "boot": ({"boot": ("cdrom", "disk")}, {"os"}),
        "memory": ({"max_memory": 2 * 1024**3}, {"memory"}),
    }
    for name, (change, expected) in cases.items():
        patched = _patched(_spec(**change))
        assert _changed_elements(HANDMADE, patched) == expected, name
    # and only that attribute or child: the boot change keeps <type> as it was
    boot = etree.fromstring(_patched(_spec(boot=("cdrom", "disk"))).encode())
    assert [b.get("dev") for b in boot.findall("os/boot")] == ["cdrom", "hd"]
    assert boot.find("os/type").get("machine") == "pc-q35-7.2"  # type: ignore[union-attr]


def test_removing_a_declared_disk_removes_only_that_element() -> None:
    spec = _spec()
    patched = _patched(dataclasses.replace(spec, disks=spec.disks[:1]))
    changed = _changed_elements(HANDMADE, patched)
    # one device fewer: every device after it shifts by one index, compare by content
    before = {etree.tostring(d) for d in etree.fromstring(_canon(HANDMADE).encode()).find("devices")}  # type: ignore[union-attr]
    after = {etree.tostring(d) for d in etree.fromstring(_canon(patched).encode()).find("devices")}  # type: ignore[union-attr]
    assert changed and before - after == {d for d in before if b"vm1-data" in d}
    assert after <= before


def test_a_bus_change_moves_only_that_disk() -> None:
    spec = _spec()
    data = dataclasses.replace(spec.disks[1], bus="sata")
    spec = domain.settle_targets(dataclasses.replace(spec, disks=(spec.disks[0], data)), HANDMADE)
    patched = _patched(spec)
    root = etree.fromstring(patched.encode())
    disks = {d.findtext("source[@volume]") or "": d for d in root.findall("devices/disk")}
    moved = next(d for d in root.findall("devices/disk") if d.find("source").get("volume"))  # type: ignore[union-attr]
    assert moved.find("target").attrib == {"dev": "sda", "bus": "sata"}  # type: ignore[union-attr]
    assert moved.find("address") is None  # a PCI address cannot fit a SATA disk
    assert moved.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    # every other device is as it was, address and all
    before = {etree.tostring(d) for d in etree.fromstring(_canon(HANDMADE).encode()).find("devices")}  # type: ignore[union-attr]
    after = {etree.tostring(d) for d in etree.fromstring(_canon(patched).encode()).find("devices")}  # type: ignore[union-attr]
    assert len(before - after) == 1 and len(after - before) == 1
    assert disks


def test_a_new_disk_takes_a_free_target_and_no_address() -> None:
    spec = _spec()
    extra = dataclasses.replace(spec.disks[0], file="/srv/new.img", format="raw",
                                target="vdb", target_declared=False)  # fmt: skip
    settled = domain.settle_targets(dataclasses.replace(spec, disks=(*spec.disks, extra)), HANDMADE)
    # vda, vdb are the manifest's, vdc the block disk the manifest does not manage
    assert [d.target for d in settled.disks] == ["vda", "vdb", "vdd"]
    patched = etree.fromstring(_patched(settled).encode())
    new = next(d for d in patched.findall("devices/disk") if d.find("source").get("file") == "/srv/new.img")  # type: ignore[union-attr]
    assert new.find("address") is None
    # the NIC keeps its slot
    nic = patched.find("devices/interface[@type='network']/address")
    assert nic is not None and nic.get("bus") == "0x01"
    # and no spare PCIe root ports come with it: the guest would meet new bridges
    ports = "devices/controller[@model='pcie-root-port']"
    assert len(patched.findall(ports)) == len(etree.fromstring(HANDMADE.encode()).findall(ports))


def test_undeclared_devices_of_a_managed_kind_go_others_stay() -> None:
    # a file disk attached out of band (virsh attach-disk --config) is drift: it goes;
    # the block disk and the direct NIC are kinds a manifest cannot say: they stay
    drifted = HANDMADE.replace("    <controller type='usb'", """    <disk type='file' device='disk'>
      <source file='/tmp/oob.img'/>
      <target dev='vde' bus='virtio'/>
    </disk>
    <controller type='usb'""")
    assert any(c.path.startswith("disks[/tmp/oob.img]") for c in
               diff(domain.project(_spec(), **CONTEXT), domain.observe(drifted)))  # fmt: skip
    patched = _patched(_spec(), drifted)
    assert "/tmp/oob.img" not in patched
    assert _canon(patched) == _canon(HANDMADE)


def test_settled_targets_follow_the_domain_not_the_list_position() -> None:
    # the manifest lists the data disk first: without a declared target the model
    # would give it vda; the domain has it at vdb, and there it stays
    text = VM1.replace(
        "    - {file: /var/lib/libvirt/images/vm1.qcow2, format: qcow2}\n    - {volume: vm1-data}",
        "    - {volume: vm1-data}\n    - {file: /var/lib/libvirt/images/vm1.qcow2, format: qcow2}",
    )
    spec = _spec(text)
    assert [(d.volume or d.file, d.target) for d in spec.disks] == [
        ("vm1-data", "vdb"), ("/var/lib/libvirt/images/vm1.qcow2", "vda")]  # fmt: skip
    assert _canon(_patched(spec)) == _canon(HANDMADE)


def test_a_replaced_image_takes_the_name_it_frees_on_a_stopped_domain() -> None:
    """The root image renamed (no target declared): on a stopped domain the new image
    is vda again, the guest's name for its root disk; on a running one vda is still
    held by the disk being unplugged, so the new image takes a free name."""
    text = VM1.replace("vm1.qcow2", "vm1-v2.qcow2")
    spec = manifest(text).spec
    assert isinstance(spec, VirtualMachineSpec)
    stopped = domain.settle_targets(spec, HANDMADE, reuse_freed=True)
    assert [(d.volume or d.file, d.target) for d in stopped.disks] == [
        ("/var/lib/libvirt/images/vm1-v2.qcow2", "vda"), ("vm1-data", "vdb")]  # fmt: skip
    running = domain.settle_targets(spec, HANDMADE)
    assert running.disks[0].target not in {"vda", "vdb", "vdc"}
    assert running.disks[1].target == "vdb"


def test_a_device_for_hot_plug_carries_no_foreign_namespace() -> None:
    xml = domain.device_xml(HANDMADE, "disks", "vm1-data")
    assert xml is not None and xml.startswith("<disk type=\"volume\"") and "libosinfo" not in xml


def test_the_parser_expands_no_entities() -> None:
    evil = """<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain><name>&x;</name></domain>"""
    root = domain.parse(evil)
    assert "root:" not in (root.findtext("name") or "")


def test_a_disk_the_plan_cannot_see_is_kept() -> None:
    # the manifest's image at a second target (hand-made): observe sees the image once,
    # so no plan line could show removing the second; the patch keeps it
    twice = HANDMADE.replace("    <disk type='block'", """    <disk type='volume' device='disk'>
      <source pool='images' volume='vm1-data'/>
      <target dev='vdf' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='block'""")
    assert _canon(_patched(_spec(), twice)) == _canon(twice)


def test_one_image_listed_twice_is_a_validation_error() -> None:
    import pytest

    from reconciler.model import SpecError

    text = VM1.replace("    - {volume: vm1-data}\n",
                       "    - {volume: vm1-data}\n    - {volume: vm1-data, bus: sata}\n")  # fmt: skip
    with pytest.raises(SpecError) as raised:
        manifest(text)
    [problem] = raised.value.problems
    assert problem.path == ("spec", "disks", 2, "volume")
    assert "already disks[1]" in problem.message


def test_an_image_spelled_another_way_is_the_same_disk() -> None:
    """``/x//./f.qcow2`` is ``/x/f.qcow2``: no change at all (it was a detach of vda and
    an attach at vdb of the same image on a running VM)."""
    import pytest

    from reconciler.model import SpecError

    odd = VM1.replace("/var/lib/libvirt/images/vm1.qcow2", "/var/lib//libvirt/./images/vm1.qcow2")
    assert _spec(odd) == _spec()
    assert diff(domain.project(_spec(odd), **CONTEXT), domain.observe(HANDMADE)) == []
    assert _canon(_patched(_spec(odd))) == _canon(_patched(_spec()))
    twice = VM1.replace("    - {volume: vm1-data}\n", "    - {volume: vm1-data}\n"
                        "    - {file: /var/lib/libvirt/images/./vm1.qcow2, bus: sata}\n")
    with pytest.raises(SpecError) as raised:  # the same image twice, whatever the spelling
        manifest(twice)
    assert "already disks[0]" in raised.value.problems[0].message


def test_a_changed_text_keeps_its_element_and_other_attributes() -> None:
    dumped = HANDMADE.replace("<memory unit='KiB'>1048576</memory>",
                              "<memory unit='KiB' dumpCore='on'>1048576</memory>")  # fmt: skip
    root = etree.fromstring(_patched(_spec(max_memory=2 * 1024**3), dumped).encode())
    memory = root.find("memory")
    assert memory is not None and memory.get("dumpCore") == "on" and memory.text == "2097152"
    assert root.index(memory) < root.index(root.find("currentMemory"))  # type: ignore[arg-type]


# --- what an adopted domain has that a new VM would not (issue 10, the corpus) --------

TCP_SERIAL = """    <serial type='tcp'>
      <source mode='bind' host='127.0.0.1' service='9999'/>
      <protocol type='telnet'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='tcp'>
      <source mode='bind' host='127.0.0.1' service='9999'/>
      <protocol type='telnet'/>
      <target type='serial' port='0'/>
    </console>
"""
PTY_SERIAL = HANDMADE[HANDMADE.index("    <serial type='pty'>"):HANDMADE.index("    <channel")]


def test_a_display_or_serial_port_a_manifest_cannot_hold_is_kept() -> None:
    # an SDL display beside the SPICE one, a tcp serial port: outside the managed sets,
    # so the manifest reads serial none and the SPICE display only, and a redefine keeps
    # them; a manifest saying no display at all removes only the SPICE one
    sdl = "    <graphics type='sdl' display=':0.1' fullscreen='yes'/>\n"
    current = HANDMADE.replace(PTY_SERIAL, TCP_SERIAL).replace("    <video>", sdl + "    <video>")
    observed = domain.observe(current)
    assert observed["serial"] == "none" and observed["graphics.type"] == "spice"
    spec = _spec(serial="none")
    assert diff(domain.project(spec, **CONTEXT), observed) == []
    assert _canon(_patched(spec, current)) == _canon(current)
    no_display = etree.fromstring(_patched(_spec(serial="none", graphics=None), current).encode())
    assert [g.get("type") for g in no_display.findall("devices/graphics")] == ["sdl"]
    assert no_display.find("devices/serial").get("type") == "tcp"  # type: ignore[union-attr]
    # declaring a serial port where the tcp one stands is refused, not a second port 0
    refusal = domain.refusal(_spec(), current)
    assert refusal is not None and "serial: none" in refusal
    assert domain.refusal(_spec(serial="none"), current) is None


def test_a_domain_ordering_boot_per_device_gets_no_os_boot() -> None:
    current = HANDMADE.replace("    <boot dev='hd'/>\n", "").replace(
        "<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/>\n      <boot order='1'/>"
    )
    assert "<boot order='1'/>" in current and domain.per_device_boot(current)
    assert domain.observe(current)["boot"] == ()
    refusal = domain.refusal(_spec(), current)  # boot: [disk], libvirt refuses both
    assert refusal is not None and "boot: []" in refusal
    spec = _spec(boot=())
    assert domain.refusal(spec, current) is None
    assert diff(domain.project(spec, **CONTEXT), domain.observe(current)) == []
    assert _canon(_patched(spec, current)) == _canon(current)


def test_boot_by_device_order_needs_a_device_that_still_carries_one() -> None:
    """boot: [] where the patch replaces the disk carrying the boot order: refused
    (libvirt would add <boot dev='hd'/>, and the definition never settles), naming
    the device and the fix; boot: [disk] is then what the redefinition may carry."""
    current = HANDMADE.replace("    <boot dev='hd'/>\n", "").replace(
        "<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/>\n      <boot order='1'/>"
    )
    spec = _spec(boot=())
    assert domain.boot_order_refusal(spec, current, _patched(spec, current)) is None
    moved = _spec(VM1.replace("vm1.qcow2", "other.qcow2"), boot=())
    refusal = domain.boot_order_refusal(moved, current, _patched(moved, current))
    assert refusal is not None and refusal.startswith("boot: []"), refusal
    assert "disk vda" in refusal and "boot: [disk]" in refusal
    # with boot: [disk] the replaced disk's order goes with it: not refused
    listed = _spec(VM1.replace("vm1.qcow2", "other.qcow2"))
    assert domain.refusal(listed, current, lambda: _patched(listed, current)) is None
    assert domain.refusal(_spec(), current, lambda: _patched(_spec(), current)) is not None
    # no device ever carried one: boot: [] never settles either
    plain = _spec(boot=())
    assert domain.boot_order_refusal(plain, HANDMADE, _patched(plain, HANDMADE)) is not None


def test_clock_offsets_keep_their_attributes_and_timers() -> None:
    absolute = HANDMADE.replace("<clock offset='utc'>", "<clock offset='absolute' start='1234'>")
    assert domain.observe(absolute)["clock"] == "absolute start=1234"
    spec = _spec(VM1 + "  clock: {offset: absolute, start: 1234}\n")
    assert "clock" not in dict(diff(domain.project(spec, **CONTEXT), domain.observe(absolute)))
    assert _canon(_patched(spec, absolute)) == _canon(absolute)
    # utc -> absolute: the attributes change, the timers stay
    patched = etree.fromstring(_patched(spec).encode())
    clock = patched.find("clock")
    assert clock is not None and dict(clock.attrib) == {"offset": "absolute", "start": "1234"}
    assert [t.get("name") for t in clock.findall("timer")] == ["rtc", "pit", "hpet"]
    # and back: no start left behind
    back = etree.fromstring(_patched(_spec(), _patched(spec)).encode()).find("clock")
    assert back is not None and dict(back.attrib) == {"offset": "utc"}


def test_no_cpu_and_no_listen_address_are_manifest_values() -> None:
    bare = HANDMADE.replace("  <cpu mode='host-model' check='partial'/>\n", "").replace(
        "<listen type='address' address='127.0.0.1'/>", "<listen type='address'/>"
    )
    text = VM1.replace("  graphics: {type: spice}", "  graphics: {type: spice, listen: null}")
    spec = _spec(text + "  cpu: hypervisor-default\n")
    assert spec.cpu is None and spec.graphics is not None and spec.graphics.listen is None
    assert diff(domain.project(spec, **CONTEXT), domain.observe(bare)) == []
    assert _canon(_patched(spec, bare)) == _canon(bare)
    new = etree.fromstring(domain.render("vm1", spec, **CONTEXT).encode())
    assert new.find("cpu") is None
    assert new.find("devices/graphics/listen[@address]") is None


def test_a_second_display_and_a_floppy_are_kept() -> None:
    """The manifest's one ``graphics`` is the first VNC or SPICE display; a second one (a
    VNC beside it) and a floppy (neither a disk nor a CD-ROM) are outside the managed
    sets: a redefine keeps them, as export says (export.kept_in_definition)."""
    extra = ("    <graphics type='vnc' port='-1' autoport='yes'/>\n"
             "    <disk type='file' device='floppy'><source file='/srv/fd.img'/>"
             "<target dev='fda' bus='fdc'/></disk>\n")  # fmt: skip
    current = HANDMADE.replace("    <video>", extra + "    <video>")
    observed = domain.observe(current)
    assert observed["graphics.type"] == "spice"
    spec = _spec()
    assert diff(domain.project(spec, **CONTEXT), observed) == []
    assert _canon(_patched(spec, current)) == _canon(current)
    changed = etree.fromstring(_patched(_spec(vcpus=2), current).encode())
    assert [g.get("type") for g in changed.findall("devices/graphics")] == ["spice", "vnc"]
    assert changed.find("devices/disk[@device='floppy']") is not None


def test_raising_max_vcpus_keeps_the_vcpus_that_read_through_it() -> None:
    """``<vcpu>2</vcpu>`` means 2 of 2; raising maxVcpus to 4 must write current='2',
    not leave vcpus reading as the new maximum (found by the property test)."""
    patched = _patched(_spec(vcpus=2, max_vcpus=4))
    vcpu = etree.fromstring(patched.encode()).find("vcpu")
    assert vcpu is not None
    assert (vcpu.text, vcpu.get("current")) == ("4", "2")
    assert domain.observe(patched)["vcpus"] == 2
    # and the same for memory, which reads as maxMemory when currentMemory is absent
    no_current = HANDMADE.replace("<currentMemory unit='KiB'>1048576</currentMemory>", "")
    patched = _patched(_spec(memory=1024**3, max_memory=2 * 1024**3), no_current)
    observed = domain.observe(patched)
    assert (observed["memory"], observed["maxMemory"]) == (1024**3, 2 * 1024**3)


def test_a_re_added_disk_goes_before_the_cdroms_and_the_boot_disk_stays_first() -> None:
    # the data disk was removed (its element gone) and is declared again; the domain
    # has a CD-ROM after its disks: the new disk must not land behind it
    vdb = HANDMADE.index("    <disk type='volume'")
    without = HANDMADE[:vdb] + HANDMADE[HANDMADE.index("    <disk type='block'"):]
    cdrom = """    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
"""
    current = without.replace("    <controller type='usb'", cdrom + "    <controller type='usb'")
    text = VM1.replace("  interfaces:", "  cdroms:\n    - {file: /var/lib/libvirt/images/install.iso}"
                       "\n  interfaces:")
    spec = domain.settle_targets(manifest(text).spec, current)  # type: ignore[arg-type]
    patched = etree.fromstring(_patched(spec, current).encode())
    order = [(d.get("device"), (d.find("source").get("file") or d.find("source").get("volume")
                                or d.find("source").get("dev")))  # type: ignore[union-attr]
             for d in patched.findall("devices/disk")]
    assert order == [("disk", "/var/lib/libvirt/images/vm1.qcow2"), ("disk", "/dev/sdz"),
                     ("disk", "vm1-data"), ("cdrom", "/var/lib/libvirt/images/install.iso")]
    assert [b.get("dev") for b in patched.findall("os/boot")] == ["hd"]


def test_a_new_disk_on_a_domain_with_only_cdroms_goes_ahead_of_them() -> None:
    first = HANDMADE.index("    <disk type='file'")
    rest = HANDMADE.index("    <controller type='usb'")
    current = HANDMADE[:first] + """    <disk type='file' device='cdrom'>
      <source file='/var/lib/libvirt/images/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
""" + HANDMADE[rest:]
    text = VM1.replace("  interfaces:", "  cdroms:\n    - {file: /var/lib/libvirt/images/install.iso}"
                       "\n  interfaces:")
    spec = domain.settle_targets(manifest(text).spec, current)  # type: ignore[arg-type]
    patched = etree.fromstring(_patched(spec, current).encode())
    assert [d.get("device") for d in patched.findall("devices/disk")] == ["disk", "disk", "cdrom"]


SECOND_VNC = "    <graphics type='vnc' port='-1' autoport='yes'/>\n"


def test_no_display_removes_only_the_managed_one() -> None:
    """graphics: none on a domain with SPICE and a kept second (VNC) display removes the
    SPICE one only: removing both lost a display export lists as kept (issue-10 testers:
    libvirt then refused "Spice audio is not supported without spice graphics")."""
    current = HANDMADE.replace("    <video>", SECOND_VNC + "    <video>")
    patched = etree.fromstring(_patched(_spec(graphics=None), current).encode())
    assert [g.get("type") for g in patched.findall("devices/graphics")] == ["vnc"]


def test_a_display_that_clashes_with_the_kept_second_one_is_refused() -> None:
    """The kept second display's type twice (libvirt starts one graphics device of each
    type), or no display (the kept one would become the manifest's, and the next plan
    would remove it): refused at plan time, naming the field and the kept display."""
    current = HANDMADE.replace("    <video>", SECOND_VNC + "    <video>")
    assert domain.unmanaged_clash(_spec(), current) is None
    vnc = dataclasses.replace(_spec().graphics, type="vnc")  # type: ignore[type-var]
    clash = domain.unmanaged_clash(_spec(graphics=vnc), current)
    assert clash is not None and clash[0] == ("spec", "graphics", "type")
    assert "second display" in clash[1] and "declare type spice" in clash[1]
    clash = domain.unmanaged_clash(_spec(graphics=None), current)
    assert clash is not None and clash[0] == ("spec", "graphics")
    assert "second display (vnc)" in clash[1]
    # one display: no display at all is a plain change
    assert domain.unmanaged_clash(_spec(graphics=None), HANDMADE) is None
