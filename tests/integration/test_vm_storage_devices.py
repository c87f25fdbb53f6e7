"""Block disks, disk options, shared folders and host devices on the real libvirtd
(xml/domain_storage.py): defined through the engine, planned again empty, started
where this host can (a block disk on a loop device this test makes, virtiofs and 9p
shares under TCG), hot-plugged where libvirt can, and a hand-made domain using all of
it exported, adopted without a change, and left as it was.

PCI and USB passthrough cannot run here (no spare device): they are defined (libvirt
9.0 defines a hostdev for a device the host lacks) and round-tripped, never started.
Loop devices are made with ``losetup`` on files under the test's directory and
detached when the test ends, pass or fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.plan import Op
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    describe,
    vm,
    ws_fixture,
)

pytestmark = pytest.mark.skipif(
    shutil.which("losetup") is None or os.geteuid() != 0,
    reason="needs losetup and root for loop devices",
)

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")  # Debian 12: in qemu-system-common


@pytest.fixture
def loops(ws: Workspace) -> Iterator[Callable[[str], str]]:
    """Makes loop devices on files ``<prefix>NAME.img`` in the host directory."""
    made: list[str] = []

    def make(name: str) -> str:
        backing = ws.hostdir / f"{ws.prefix}{name}.img"
        subprocess.run(["truncate", "-s", "8M", str(backing)], check=True)
        device = subprocess.run(["losetup", "--find", "--show", str(backing)],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        made.append(device)
        return device

    try:
        yield make
    finally:
        for dom in ws.conn.listAllDomains(0):  # a running guest holds its loop device
            if dom.name().startswith(ws.prefix) and dom.isActive():
                dom.destroy()
        for device in made:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def roots(ws: Workspace, *devices: str) -> dict[str, Any]:
    """Pass options allowing the host directory and these block devices."""
    return {"allowed_roots": (ws.hostdir, *map(Path, devices))}


def write_config(ws: Workspace, *devices: str) -> None:
    """The CLI's configuration, with each block device as a root of its own."""
    (ws.root / "config.yaml").write_text(yaml.safe_dump({
        "allowedDiskRoots": [str(ws.hostdir), *devices],
        "allowedSecretRoots": [str(ws.hostdir)],
        **({"vmDefaults": ws.vm_defaults.as_config()} if ws.vm_defaults else {}),
    }))  # fmt: skip


def test_block_disk_options_and_shares_run_and_hot_plug(
    ws: Workspace, loops: Callable[[str], str]
) -> None:
    if not VIRTIOFSD.exists():
        pytest.skip(f"{VIRTIOFSD} missing (Debian's qemu-system-common ships it)")
    first, second = loops("blk1"), loops("blk2")
    data = ws.file("data.img")
    share, share_ro = ws.subdir("share"), ws.subdir("share-ro")
    name = ws.n("stor")
    disks: list[dict[str, Any]] = [
        {"device": first, "discard": "unmap", "detectZeroes": "unmap", "io": "native",
         "cache": "none", "serial": "BLK1", "bootIndex": 1},
        {"file": str(data), "shareable": True, "cache": "none", "bootIndex": 2},
    ]  # fmt: skip
    shares: list[dict[str, Any]] = [
        {"source": str(share), "target": "share"},
        {"driver": "9p", "source": str(share_ro), "target": "ro", "readonly": True,
         "accessMode": "mapped"},
    ]  # fmt: skip
    # TCG: nothing boots (no OS), the guest only has to start
    ws.write("vm.yaml", vm(name, type="qemu", disks=disks, filesystems=shares,
                           memoryBacking={"shared": True}))
    ws.converge(**roots(ws, first, second))
    assert_settled(ws, **roots(ws, first, second))
    dom = ws.domain(name)
    assert dom.isActive()
    live = dom.XMLDesc(0)
    assert f"<source dev='{first}'" in live and "discard='unmap'" in live
    assert "<driver type='virtiofs'/>" in live and "<access mode='shared'/>" in live
    assert "<boot order='1'/>" in live and "<os>\n    <type" in live
    dom_id = dom.ID()

    # a second block disk and a second virtiofs share: hot-plugged, no restart
    ws.write("vm.yaml", vm(name, type="qemu", disks=[*disks, {"device": second}],
                           filesystems=[*shares, {"source": str(share), "target": "two"}],
                           memoryBacking={"shared": True}))
    plan = ws.plan(**roots(ws, first, second))
    a = action(plan, "VirtualMachine", name)
    assert not a.restart_pending, describe(ws.apply(**roots(ws, first, second)))
    ws.converge(**roots(ws, first, second))
    assert ws.domain(name).ID() == dom_id
    live = ws.domain(name).XMLDesc(0)
    assert f"<source dev='{second}'" in live and "<target dir='two'/>" in live
    assert_settled(ws, **roots(ws, first, second))

    # a 9p share going: libvirt unplugs only virtiofs, so that waits for a restart
    ws.write("vm.yaml", vm(name, type="qemu", disks=[*disks, {"device": second}],
                           filesystems=[shares[0], {"source": str(share), "target": "two"}],
                           memoryBacking={"shared": True}))
    ws.converge(**roots(ws, first, second))
    plan = ws.plan(**roots(ws, first, second))
    a = action(plan, "VirtualMachine", name)
    assert any("filesystems[ro]" in c.path for c in a.restart_pending), a.restart_pending
    assert "<target dir='ro'/>" not in ws.virsh("dumpxml", "--inactive", name)


def test_a_block_device_outside_the_roots_is_refused(
    ws: Workspace, loops: Callable[[str], str]
) -> None:
    device = loops("blk")
    ws.write("vm.yaml", vm(ws.n("out"), type="qemu", state="stopped",
                           disks=[{"device": device}]))  # fmt: skip
    write_config(ws)  # the host directory only
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert f"disks[0].device {device}" in said and "block device needs a root of its own" in said
    assert "Traceback" not in said
    assert ws.n("out") not in ws.virsh("list", "--all", "--name")


def test_host_devices_are_defined_and_settle(ws: Workspace) -> None:
    name = ws.n("hostdev")
    hostdevs = [{"type": "pci", "address": "0000:7f:1f.7"},
                {"type": "pci", "address": "0000:7f:1e.0", "managed": False},
                {"type": "usb", "vendor": "0x1d6b", "product": "0x0104"},
                {"type": "usb", "bus": 9, "device": 99}]  # fmt: skip
    ws.write("vm.yaml", vm(name, type="qemu", state="stopped", hostdevs=hostdevs))
    ws.converge()
    assert_settled(ws)
    xml = ws.virsh("dumpxml", "--inactive", name)
    assert xml.count("<hostdev ") == 4
    assert "bus='0x7f' slot='0x1f' function='0x7'" in xml
    # naming the set makes it exact: one goes
    ws.write("vm.yaml", vm(name, type="qemu", state="stopped", hostdevs=hostdevs[1:]))
    ws.converge()
    assert ws.virsh("dumpxml", "--inactive", name).count("<hostdev ") == 3
    assert_settled(ws)
    # to run it, each device must exist: preflight asks libvirt's node devices
    ws.write("vm.yaml", vm(name, type="qemu", state="running", hostdevs=hostdevs[1:]))
    done = ws.cli("plan", str(ws.directory))
    said = done.stdout + done.stderr
    assert done.returncode != 0 and "hostdevs[0]" in said, said
    assert "this host has no PCI device 0000:7f:1e.0" in said and "Traceback" not in said
    assert not ws.domain(name).isActive()


def test_export_round_trip_of_a_hand_made_domain(
    ws: Workspace, loops: Callable[[str], str]
) -> None:
    device = loops("blk")
    data = ws.file("data.img")
    share = ws.subdir("share")
    name = ws.n("hand")
    hand = f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>1</vcpu>
  <iothreads>2</iothreads>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native' discard='unmap'
              detect_zeroes='unmap'/>
      <source dev='{device}'/>
      <target dev='vda' bus='virtio'/>
      <serial>HAND1</serial>
      <boot order='1'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' iothread='2' io='threads'/>
      <source file='{data}'/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/>
      <source dir='{share}'/>
      <target dir='share'/>
    </filesystem>
    <filesystem type='mount' accessmode='squash'>
      <driver type='path'/>
      <source dir='{share}'/>
      <target dir='ro'/>
      <readonly/>
    </filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x7f' slot='0x1f' function='0x7'/></source>
    </hostdev>
    <hostdev mode='subsystem' type='usb'>
      <source><vendor id='0x1d6b'/><product id='0x0104'/></source>
    </hostdev>
  </devices>
</domain>
"""
    path = ws.root / "hand.xml"
    path.write_text(hand)
    ws.virsh("define", str(path))
    before = ws.virsh("dumpxml", "--inactive", name)
    write_config(ws, device)

    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [file] = out.rglob("*.yaml")
    text = file.read_text()
    header = text[: text.index("apiVersion:")]
    for word in ("disk", "filesystem", "hostdev"):  # not kept: in the manifest
        assert not re.search(rf"#\s+{word}\b", header), header
    spec = yaml.safe_load(text)["spec"]
    assert spec["disks"] == [
        {"device": device, "target": "vda", "cache": "none", "serial": "HAND1",
         "discard": "unmap", "detectZeroes": "unmap", "io": "native", "bootIndex": 1},
        {"file": str(data), "target": "vdb", "format": "raw", "io": "threads", "iothread": 2,
         "shareable": True},
    ]  # fmt: skip
    assert spec["boot"] == []
    assert spec["filesystems"] == [
        {"driver": "virtiofs", "source": str(share), "target": "share"},
        {"driver": "9p", "source": str(share), "target": "ro", "readonly": True,
         "accessMode": "squash"},
    ]  # fmt: skip
    assert spec["hostdevs"] == [{"type": "pci", "address": "0000:7f:1f.7"},
                                {"type": "usb", "vendor": "0x1d6b", "product": "0x0104"}]
    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr

    # a fresh state: an adoption and nothing else; applied; planned again: nothing
    ws.directory.rmdir()
    os.symlink(out, ws.directory)
    plan = ws.plan(**roots(ws, device))
    [a] = plan.actions
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")], a.changes
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending
    done = ws.cli("apply", str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert action(ws.plan(**roots(ws, device)), "VirtualMachine", name).op is Op.NOOP
    after = ws.virsh("dumpxml", "--inactive", name)
    assert _without_metadata(after) == _without_metadata(before)


def _without_metadata(xml: str) -> str:
    return re.sub(r"\s*<metadata>.*?</metadata>", "", xml, flags=re.S)


def test_the_golden_xml_validates_and_libvirt_keeps_it(ws: Workspace) -> None:
    from reconciler.xml import domain as domain_xml
    from tests.unit.test_xml_domain_storage import STORAGE, spec_of

    golden = REPO_DATA / "domain-storage.xml"
    done = subprocess.run(["virt-xml-validate", str(golden), "domain"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    spec = spec_of(STORAGE)
    xml = domain_xml.render(ws.n("golden"), spec)
    dom = ws.conn.defineXML(xml)
    try:
        back = dom.XMLDesc(2)  # inactive
        aliases = domain_xml.machine_aliases_from_capabilities(ws.conn.getCapabilities())
        desired = domain_xml.project(spec, machine_aliases=aliases)
        observed = {**domain_xml.observe(back), **domain_xml.declared_storage(spec, back)}
        assert {k: (v, observed.get(k)) for k, v in desired.items() if observed.get(k) != v} == {}
        assert set(observed) - set(desired) == set()
    finally:
        dom.undefine()


REPO_DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "xml"
