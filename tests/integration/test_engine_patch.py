"""A redefinition keeps what the manifest does not say, against the real libvirtd.

Hand-made ``pc`` and ``q35`` domains, as virt-install leaves them: a guest agent
channel with its virtio-serial controller, rng, USB2 controllers (ich9-ehci1 and
its uhci companions), vga and virtio video, ``<clock>`` timers, ``<pm>``, a
hand-set PCI address on a disk, libosinfo metadata. Adoption (export, plan, apply)
leaves ``virsh dumpxml --inactive`` as it was apart from our ownership record; a
restart-class change then changes only that field. And the disk identity case: an
ide root disk with a hot-plugged virtio data disk; the root disk moved to virtio
keeps the data disk where it is, and no attach of an image the guest has is planned.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from reconciler.plan import Op
from reconciler.report import render_plan
from reconciler.xml import domain as domain_xml
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    pool,
    vm,
    volume,
    ws_fixture,
)

LIBOSINFO = "http://libosinfo.org/xmlns/libvirt/domain/1.0"


def _usb2() -> str:
    """ich9-ehci1 and its three uhci companions, as virt-install gives a pc VM."""
    out = ["<controller type='usb' index='0' model='ich9-ehci1'/>"]
    for i, start in ((1, 0), (2, 2), (3, 4)):
        out.append(f"<controller type='usb' index='0' model='ich9-uhci{i}'>"
                   f"<master startport='{start}'/></controller>")  # fmt: skip
    return "\n    ".join(out)


def _hand_made_xml(ws: Workspace, name: str, machine: str, disk: Path) -> str:
    # a PCI address set by hand on the disk: slot 0x0a on pc's root bus, a root
    # port's bus on q35 (libvirt adds the ports a definition needs)
    address = ("<address type='pci' domain='0x0000' bus='0x00' slot='0x0a' function='0x0'/>"
               if machine == "pc" else
               "<address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>")  # fmt: skip
    video = "vga" if machine == "pc" else "virtio"  # pc: vga and a virtio second head
    return f"""<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="{LIBOSINFO}">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  {ws.cpu_xml("host-model")}
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/>
  </clock>
  <pm>
    <suspend-to-mem enabled='no'/>
    <suspend-to-disk enabled='no'/>
  </pm>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      {address}
    </disk>
    {_usb2()}
    <controller type='virtio-serial' index='0'/>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='{video}' heads='1' primary='yes'/></video>
    {"<video><model type='virtio' heads='1'/></video>" if machine == "pc" else ""}
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""


def _inactive(ws: Workspace, name: str) -> str:
    """libvirt's own dump of the persistent definition."""
    return ws.virsh("dumpxml", "--inactive", "--security-info", name)


def _without_owner(xml: str) -> str:
    root = etree.fromstring(xml.encode(), etree.XMLParser(remove_blank_text=True))
    for owner in root.findall(f"metadata/{{{domain_xml.OWNER_NAMESPACE}}}owner"):
        parent = owner.getparent()
        assert parent is not None
        parent.remove(owner)
    etree.indent(root)
    return etree.tostring(root, encoding="unicode")


def _differences(before: str, after: str) -> list[str]:
    a, b = _without_owner(before).splitlines(), _without_owner(after).splitlines()
    return [line for line in difflib.unified_diff(a, b, lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]  # fmt: skip


def _adopt(ws: Workspace, name: str) -> Path:
    """export -> a plan of only the ownership change -> apply; returns the manifest."""
    out = ws.root / f"export-{name}"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = list(out.rglob("*.yaml"))
    target = ws.directory / path.name
    target.write_text(path.read_text())
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")], render_plan(plan, verbose=True)  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert action(ws.plan(), "VirtualMachine", name).op is Op.NOOP
    return target


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_adoption_and_a_restart_class_change_keep_the_rest(ws: Workspace, machine: str) -> None:
    name = ws.n(f"hm-{machine}")
    disk = ws.file(f"{machine}.img", "1M", "raw")
    xml_path = ws.root / f"{name}.xml"
    xml_path.write_text(_hand_made_xml(ws, name, machine, disk))
    ws.virsh("define", str(xml_path))
    before = _inactive(ws, name)
    assert "libosinfo:libosinfo" in before and "ich9-uhci3" in before

    manifest = _adopt(ws, name)
    adopted = _inactive(ws, name)
    assert _differences(before, adopted) == []
    assert "libosinfo:libosinfo" in adopted and "ns0:" not in adopted
    assert domain_xml.read_ownership(adopted) is not None

    # a restart-class change: only that field moves in libvirt's dump (the timers stay)
    doc: dict[str, Any] = yaml.safe_load(manifest.read_text())
    doc["spec"]["clock"] = "localtime"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    load = ws.reconciler().plan()[0]
    assert not load.problems, "\n".join(str(p) for p in load.problems)
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert [c.path for c in a.changes] == ["clock"], render_plan(plan)
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    now = _inactive(ws, name)
    changed = _differences(adopted, now)
    assert changed == ['-  <clock offset="utc">', '+  <clock offset="localtime">'], changed
    assert_settled(ws)

    # drift inside a managed kind: a file disk attached by hand shows and is reverted;
    # nothing else moves
    extra = ws.file(f"{machine}-extra.img", "1M", "raw")
    ws.virsh("attach-disk", name, str(extra), "vdc", "--config", "--subdriver", "raw")
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert {c.path.partition("]")[0] for c in a.changes} == {f"disks[{extra}"}, render_plan(plan)
    assert [d.how for d in a.devices] == ["remove"], render_plan(plan)
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _differences(now, _inactive(ws, name)) == []

    # a disk added: only lines added (the disk, its address, on q35 spare root ports),
    # no device of the domain moves
    doc["spec"]["disks"].append({"file": str(extra), "format": "raw"})
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    added = _differences(now, _inactive(ws, name))
    assert added and all(line.startswith("+") for line in added), added
    assert any(str(extra) in line for line in added), added


def test_root_disk_to_virtio_keeps_the_hot_plugged_data_disk(ws: Workspace) -> None:
    name = ws.n("ide-root")
    root, data = ws.file("root.img", "1M", "raw"), ws.file("data.img", "1M", "raw")
    manifest = vm(name, machine="pc", state="running",
                  disks=[{"file": str(root), "format": "raw", "bus": "ide"}])  # fmt: skip
    ws.write("vm.yaml", manifest)
    ws.converge()
    # the data disk is hot-plugged: a virtio disk that takes the first virtio name
    manifest["spec"]["disks"].append({"file": str(data), "format": "raw"})
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    assert [s.verb for s in action(plan, "VirtualMachine", name).steps] == [
        "define-domain", "attach-device"], render_plan(plan, verbose=True)  # fmt: skip
    ws.converge()
    live = ws.virsh("dumpxml", name)
    config = _inactive(ws, name)

    def data_disk(xml: str) -> tuple[str | None, str | None]:
        element = etree.fromstring(xml.encode()).find(f"devices/disk/source[@file='{data}']/..")
        assert element is not None, xml
        target, address = element.find("target"), element.find("address")
        assert target is not None
        return target.get("dev"), None if address is None else etree.tostring(address).decode()

    assert data_disk(live)[0] == data_disk(config)[0] == "vda"

    manifest["spec"]["disks"][0]["bus"] = "virtio"
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    text = render_plan(plan)
    assert not any(s.verb == "attach-device" for s in a.steps), render_plan(plan, verbose=True)
    # one line, in the user's terms; the root disk takes the next free virtio name
    assert f"~ disks[0] ({root}): bus ide -> virtio, target hda -> vdb" in text, text
    ws.converge()
    after = _inactive(ws, name)
    assert data_disk(after) == data_disk(config)  # target and address as they were
    assert data_disk(ws.virsh("dumpxml", name))[0] == "vda"


def _boot_order_xml(ws: Workspace, name: str, disk: Path) -> str:
    """A pc domain whose only disk carries ``<boot order='1'/>`` (no ``<os><boot>``)."""
    return f"""<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  {ws.cpu_xml("host-model")}
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
  </devices>
</domain>"""


@pytest.mark.parametrize("edit", ["other image", "no disk"])
def test_boot_by_device_order_without_a_device_carrying_one_is_refused(
    ws: Workspace, edit: str
) -> None:
    """``boot: []`` where no device carries ``<boot order>`` after the change: libvirt
    adds ``<boot dev='hd'/>``, which never settled (a define every pass). Refused at
    plan, naming the field and the fix; nothing is defined."""
    name = ws.n("bootorder")
    disk, other = ws.file("a.img", "1M", "raw"), ws.file("b.img", "1M", "raw")
    xml_path = ws.root / f"{name}.xml"
    xml_path.write_text(_boot_order_xml(ws, name, disk))
    ws.virsh("define", str(xml_path))
    manifest = _adopt(ws, name)
    doc: dict[str, Any] = yaml.safe_load(manifest.read_text())
    assert doc["spec"]["boot"] == []
    adopted = _inactive(ws, name)
    # the disk's <boot order> is a typed field (bootIndex, vm-storage-devices), never an
    # xml entry on vda (the escape hatch, issue 13), which would put it on whatever disk
    # is at vda: the typed form wins
    assert doc["spec"]["disks"][0]["bootIndex"] == 1
    assert not any("<boot order=" in e.get("add", "")
                   for e in doc["spec"].get("xml", [])), doc["spec"]  # fmt: skip
    if edit == "other image":
        doc["spec"]["disks"][0]["file"] = str(other)
        # export wrote the disk's <boot order> as bootIndex: without it, the new image
        # carries none (with it, the new image would take the boot order: no refusal)
        assert doc["spec"]["disks"][0].pop("bootIndex") == 1
    else:
        doc["spec"]["disks"] = []
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.ERROR, render_plan(plan)
    assert a.reason.startswith("boot: []") and "disk vda" in a.reason, a.reason
    assert "boot: [disk]" in a.reason, a.reason
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{manifest.name}:" in done.stdout + done.stderr and "boot: []" in done.stdout
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1
    assert _differences(adopted, _inactive(ws, name)) == []  # nothing defined
    # the fix the message gives settles
    doc["spec"]["boot"] = ["disk"]
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_settled(ws)


def _with_unmanaged_xml(ws: Workspace, name: str, disk: Path) -> str:
    """A stopped pc domain with a file disk, an nbd disk at vdc and a user-mode NIC:
    the two last are devices a manifest does not manage (a redefine keeps them)."""
    return f"""<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {ws.cpu_xml("host-model")}
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='export'><host name='127.0.0.1' port='10809'/></source>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:c0:ff:01'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


@pytest.mark.parametrize("edit", ["target", "mac"])
def test_a_target_or_mac_an_unmanaged_device_has_is_refused_at_plan(
    ws: Workspace, edit: str
) -> None:
    """A declared target an unmanaged nbd disk has (libvirt refused it at define time
    only, pointing at the manifest's first line), or a declared MAC an unmanaged NIC
    has (libvirt took two NICs with one MAC): refused at plan, at the field's line,
    naming the unmanaged device; nothing is defined."""
    name = ws.n("clash")
    disk, extra = ws.file("a.img", "1M", "raw"), ws.file("b.img", "1M", "raw")
    xml_path = ws.root / f"{name}.xml"
    xml_path.write_text(_with_unmanaged_xml(ws, name, disk))
    ws.virsh("define", str(xml_path))
    manifest = _adopt(ws, name)
    adopted = _inactive(ws, name)
    doc: dict[str, Any] = yaml.safe_load(manifest.read_text())
    if edit == "target":
        doc["spec"]["disks"].append({"file": str(extra), "format": "raw", "target": "vdc"})
        field, what = f"spec.disks[{len(doc['spec']['disks']) - 1}].target", "network disk"
    else:
        doc["spec"].setdefault("interfaces", []).append(
            {"network": "default", "mac": "52:54:00:C0:FF:01"})  # fmt: skip
        field, what = f"spec.interfaces[{len(doc['spec']['interfaces']) - 1}].mac", "user interface"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.ERROR, render_plan(plan)
    assert a.reason.startswith(field + ":") and what in a.reason, a.reason
    assert a.source is not None and a.source.line > 1, a.source  # the field's own line
    text = manifest.read_text().splitlines()[a.source.line - 1]
    assert ("vdc" if edit == "target" else "52:54:00") in text.lower(), (text, a.source)
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert _differences(adopted, _inactive(ws, name)) == []


def test_the_same_image_under_another_name_is_never_detached_and_attached(
    ws: Workspace,
) -> None:
    """Issue 10 case 3, whole kind (tester, case 2): a running VM's data disk named
    another way. (a) ``dir//./f``: no change at all. (b) the file named as the volume
    it is: one restart-class change of that disk, no detach, no attach, the target and
    address kept in the definition."""
    name, pool_name, vol = ws.n("same"), ws.n("p"), ws.n("data")
    directory = ws.subdir("pool")
    root = ws.file("root.img", "1M", "raw")
    docs: list[Any] = [pool(pool_name, directory), volume(vol, pool_name, "1MiB", format="raw")]
    ws.write("vm.yaml", *docs)
    ws.converge()
    data = directory / vol

    def machine(disk: dict[str, Any]) -> dict[str, Any]:
        return vm(name, machine="pc", state="running",
                  disks=[{"file": str(root), "format": "raw"}, disk])  # fmt: skip

    ws.write("vm.yaml", *docs, machine({"file": str(data), "format": "raw"}))
    ws.converge()

    def data_disk(xml: str) -> tuple[str | None, str | None, str | None]:
        disks = etree.fromstring(xml.encode()).findall("devices/disk[@device='disk']")
        [element] = [d for d in disks if d.find("target").get("dev") != "vda"]  # type: ignore[union-attr]
        address = element.find("address")
        return (element.get("type"), element.find("target").get("dev"),  # type: ignore[union-attr]
                None if address is None else etree.tostring(address).decode())  # fmt: skip

    config = _inactive(ws, name)
    assert data_disk(config)[:2] == ("file", "vdb")
    # (a) the same path spelled another way: nothing to do
    ws.write("vm.yaml", *docs, machine({"file": f"{directory}//./{vol}", "format": "raw"}))
    plan = ws.plan()
    assert action(plan, "VirtualMachine", name).op is Op.NOOP, render_plan(plan, verbose=True)
    # (b) the file named as the volume it is: one change of that disk, for a restart
    ws.write("vm.yaml", *docs, machine({"volume": vol}))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    verbs = [s.verb for s in a.steps]
    assert "attach-device" not in verbs and "detach-device" not in verbs, render_plan(plan, verbose=True)
    assert [c.path for c in a.changes] == [f"disks[{vol}].source"], render_plan(plan)
    assert a.op is Op.UPDATE_RESTART, render_plan(plan)
    result = ws.converge()
    assert not result.unsettled
    now = _inactive(ws, name)
    assert data_disk(now) == ("volume", "vdb", data_disk(config)[2])
    assert data_disk(ws.virsh("dumpxml", name))[:2] == ("file", "vdb")  # running: as it was
    assert_settled(ws, allow_restart_pending=True)


def _two_displays_xml(ws: Workspace, name: str, disk: Path) -> str:
    """A stopped pc domain with a VNC display, a SPICE one and SPICE audio (which
    libvirt refuses without a SPICE display)."""
    return f"""<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  {ws.cpu_xml("host-model")}
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <graphics type='spice' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <audio id='1' type='spice'/>
  </devices>
</domain>"""


@pytest.mark.parametrize("graphics", ["none", "spice"])
def test_a_display_clashing_with_the_kept_second_one_is_refused_at_plan(
    ws: Workspace, graphics: str
) -> None:
    """VNC first (the manifest's), SPICE second (kept). graphics none removed both
    (libvirt: "Spice audio is not supported without spice graphics", every pass);
    graphics spice defined two SPICE displays that never start. Both refused at plan,
    at the field's line, naming the kept display; nothing is defined."""
    name = ws.n("twodisp")
    disk = ws.file("a.img", "1M", "raw")
    xml_path = ws.root / f"{name}.xml"
    xml_path.write_text(_two_displays_xml(ws, name, disk))
    ws.virsh("define", str(xml_path))
    manifest = _adopt(ws, name)
    adopted = _inactive(ws, name)
    doc: dict[str, Any] = yaml.safe_load(manifest.read_text())
    assert doc["spec"]["graphics"]["type"] == "vnc"
    doc["spec"]["graphics"] = {"type": graphics}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.ERROR, render_plan(plan)
    field = "spec.graphics" if graphics == "none" else "spec.graphics.type"
    assert a.reason.startswith(field + ":") and "second display" in a.reason, a.reason
    assert a.source is not None and a.source.line > 1, a.source
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert _differences(adopted, _inactive(ws, name)) == []
