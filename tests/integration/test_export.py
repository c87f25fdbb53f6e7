"""`reconciler export` against the real libvirtd: a host built by hand, adopted.

Objects are made the way an operator makes them (``virsh pool-define``,
``vol-create``, ``net-define``, ``define``), exported, validated, planned with a
fresh state directory (every object an adoption and nothing else), applied,
and planned again (no changes); the running VM keeps its UUID and is not
restarted. Networks are isolated (no forward), on the session's own subnets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.plan import Op
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml
from tests.integration.engine_support import Workspace, action, ws_fixture  # noqa: F401

UEFI = any(Path(p).exists() for p in ("/usr/share/OVMF/OVMF_CODE.fd",
                                     "/usr/share/OVMF/OVMF_CODE_4M.fd"))  # fmt: skip


def define(ws: Workspace, what: str, xml: str, *args: str) -> None:
    """``virsh <what> FILE [ARGS]``, the XML written to a file as an operator would."""
    path = ws.root / f"{what}-{abs(hash(xml))}.xml"
    path.write_text(xml)
    ws.virsh(what, *args, str(path))


def _hand_made(ws: Workspace) -> dict[str, Any]:
    """A small host built by hand; returns the names and addresses used."""
    subnet = ws.subnet()
    hosts = list(subnet.hosts())
    mac1, mac2 = "52:54:00:5e:00:01", "52:54:00:5e:00:02"
    n = {
        "net": ws.n("lan"), "net2": ws.n("back"), "pool": ws.n("pool"),
        "base": ws.n("base.qcow2"), "root": ws.n("root.qcow2"), "vm": ws.n("vm"),
        "mac1": mac1, "mac2": mac2,
    }  # fmt: skip
    define(ws, "net-define", f"""
<network>
  <name>{n['net']}</name>
  <bridge name='{ws.bridge_name()}' stp='on' delay='0'/>
  <domain name='rctest.lan'/>
  <dns>
    <host ip='{hosts[9]}'><hostname>web.rctest.lan</hostname><hostname>www.rctest.lan</hostname></host>
  </dns>
  <ip address='{hosts[0]}' netmask='255.255.255.0'>
    <dhcp>
      <range start='{hosts[99]}' end='{hosts[199]}'/>
      <host mac='{mac1}' name='web' ip='{hosts[9]}'/>
    </dhcp>
  </ip>
</network>""")
    ws.virsh("net-start", n["net"])
    define(ws, "net-define", f"""
<network><name>{n['net2']}</name><bridge name='{ws.bridge_name()}'/></network>""")
    ws.virsh("net-start", n["net2"])
    pool_dir = ws.subdir("pool")
    define(ws, "pool-define", f"""
<pool type='dir'><name>{n['pool']}</name><target><path>{pool_dir}</path></target></pool>""")
    ws.virsh("pool-start", n["pool"])
    define(ws, "vol-create", f"""
<volume><name>{n['base']}</name><capacity unit='MiB'>16</capacity>
<target><format type='qcow2'/></target></volume>""", n["pool"])
    define(ws, "vol-create", f"""
<volume><name>{n['root']}</name><capacity unit='MiB'>32</capacity>
<target><format type='qcow2'/></target>
<backingStore><path>{pool_dir / n['base']}</path><format type='qcow2'/></backingStore>
</volume>""", n["pool"])
    n["data"] = str(ws.file("data.img", "1M", "raw"))
    n["iso"] = str(ws.iso("cd.iso"))
    firmware = ("<os firmware='efi'><type arch='x86_64' machine='pc'>hvm</type>"
                "<firmware><feature enabled='no' name='secure-boot'/></firmware>"
                "<boot dev='cdrom'/><boot dev='hd'/></os>") if UEFI else (
                "<os><type arch='x86_64' machine='pc'>hvm</type>"
                "<boot dev='cdrom'/><boot dev='hd'/></os>")  # fmt: skip
    define(ws, "define", f"""
<domain type='{ws.domain_type}'>
  <name>{n['vm']}</name>
  <memory unit='MiB'>256</memory>
  <currentMemory unit='MiB'>128</currentMemory>
  <vcpu current='1'>2</vcpu>
  {firmware}
  <features><acpi/><apic/></features>
  {ws.cpu_xml("host-model")}
  <clock offset='utc'/>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source pool='{n['pool']}' volume='{n['root']}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{n['data']}'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
      <serial>DATA-1</serial>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{n['iso']}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='{mac1}'/>
      <source network='{n['net']}'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='{mac2}'/>
      <source network='{n['net2']}'/>
      <model type='e1000'/>
      <rom enabled='no'/>
    </interface>
    <serial type='pty'/>
    <console type='pty'/>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' keymap='en-us'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>""")
    ws.virsh("start", n["vm"])
    return n


def _snapshot(ws: Workspace) -> dict[str, str]:
    """Every definition of the test's objects, to show that export changes nothing."""
    out = {}
    for dom in ws.conn.listAllDomains(0):
        if dom.name().startswith(ws.prefix):
            out[f"vm/{dom.name()}"] = dom.XMLDesc(0) + dom.XMLDesc(2) + str(dom.ID())
    for net in ws.conn.listAllNetworks(0):
        if net.name().startswith(ws.prefix):
            out[f"net/{net.name()}"] = net.XMLDesc(0) + str(net.isActive())
    for pool in ws.conn.listAllStoragePools(0):
        if pool.name().startswith(ws.prefix):
            # (sizes, allocation and timestamps move with the files; the definition does not)
            out[f"pool/{pool.name()}"] = repr(pool_xml.observe(pool.XMLDesc(0)))
            out[f"pool/{pool.name()}/state"] = repr((pool.isActive(), pool.autostart()))
            for vol in pool.listAllVolumes(0):
                out[f"vol/{vol.name()}"] = repr(volume_xml.observe(vol.XMLDesc(0)))
    return out


def test_round_trip_adopts_a_hand_made_host(ws: Workspace) -> None:
    n = _hand_made(ws)
    dom = ws.domain(n["vm"])
    uuid, dom_id = dom.UUIDString(), dom.ID()
    before = _snapshot(ws)

    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{n['vm']}", "--with-deps", "--output-dir", str(out),
                  state=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # nothing that applying would change; what the manifests do not manage is listed as kept
    lines = [line for line in done.stderr.splitlines()
             if line.startswith("export: ") and not line.startswith("export: skipped")]  # fmt: skip
    assert lines and all(": kept as defined, not managed by this manifest: " in line
                         for line in lines), done.stderr  # fmt: skip
    assert _snapshot(ws) == before  # read-only
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.yaml"))
    assert files == sorted([f"vms/{n['vm']}.yaml", f"volumes/{n['root']}.yaml",
                            f"volumes/{n['base']}.yaml", f"pools/{n['pool']}.yaml",
                            f"networks/{n['net']}.yaml", f"networks/{n['net2']}.yaml"])  # fmt: skip

    docs = {d["metadata"]["name"]: d for p in out.rglob("*.yaml")
            for d in yaml.safe_load_all(p.read_text())}  # fmt: skip
    assert all(d["spec"]["adopt"] is True for d in docs.values())
    spec = docs[n["vm"]]["spec"]
    assert spec["memory"] == "128MiB" and spec["maxMemory"] == "256MiB"
    assert spec["vcpus"] == 1 and spec["maxVcpus"] == 2
    assert spec["firmware" if UEFI else "boot"] == ("uefi" if UEFI else ["cdrom", "disk"])
    assert spec["disks"] == [
        {"volume": n["root"], "target": "vda", "cache": "none"},
        {"file": n["data"], "target": "vdb", "format": "raw", "readonly": True,
         "serial": "DATA-1"},
    ]  # fmt: skip
    assert spec["cdroms"] == [{"file": n["iso"], "target": "hdc", "bus": "ide"}]
    assert spec["interfaces"] == [
        {"network": n["net"], "mac": n["mac1"], "bootRom": True},
        {"network": n["net2"], "mac": n["mac2"], "model": "e1000"},
    ]
    assert spec["graphics"] == {"type": "vnc", "listen": "127.0.0.1", "keymap": "en-us"}
    assert spec["state"] == "running"
    root = docs[n["root"]]["spec"]
    assert root == {"pool": n["pool"], "format": "qcow2", "capacity": "32MiB",
                    "backingVolume": n["base"], "reclaimPolicy": "retain", "adopt": True}  # fmt: skip
    lan = docs[n["net"]]["spec"]
    assert lan["mode"] == "isolated" and lan["domain"] == "rctest.lan"
    assert lan["ipv4"]["dhcp"]["hosts"][0]["mac"] == n["mac1"]
    assert lan["dnsHosts"][0]["names"] == ["web.rctest.lan", "www.rctest.lan"]

    # the stream on stdout holds the same documents
    done = ws.cli("export", f"VirtualMachine/{n['vm']}", "--with-deps", state=False)
    assert done.returncode == 0, done.stderr
    streamed = {d["metadata"]["name"]: d for d in yaml.safe_load_all(done.stdout)}
    assert streamed == docs

    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr

    # a fresh state directory: every object is an adoption, and only that
    ws.directory.rmdir()
    os.symlink(out, ws.directory)
    plan = ws.plan()
    assert not plan.has_errors
    for a in plan.actions:
        assert [(c.path, c.old, c.new) for c in a.changes] == [
            ("ownership", "unmanaged", "managed")
        ], (a.kind, a.name, a.changes)
        assert a.op is Op.UPDATE_LIVE and not a.restart_pending, (a.kind, a.name)
    assert {f"{a.kind.value}/{a.name}" for a in plan.actions} == {
        f"VirtualMachine/{n['vm']}", f"Volume/{n['root']}", f"Volume/{n['base']}",
        f"StoragePool/{n['pool']}", f"Network/{n['net']}", f"Network/{n['net2']}",
    }  # fmt: skip

    done = ws.cli("apply", str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    done = ws.cli("plan", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert action(ws.plan(), "VirtualMachine", n["vm"]).op is Op.NOOP
    dom = ws.domain(n["vm"])
    assert dom.UUIDString() == uuid and dom.ID() == dom_id and dom.isActive()


def test_lossy_fields_are_reported(ws: Workspace) -> None:
    name = ws.n("odd")
    passwd = "s3cret"
    define(ws, "define", f"""
<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><bootmenu enable='yes'/></os>
  <features><acpi/><apic/><vmport state='off'/></features>
  {ws.cpu_xml("host-passthrough")}
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_crash>restart</on_crash>
  <devices>
    <disk type='file' device='floppy'>
      <source file='{ws.file("fd.img", "1440K")}'/><target dev='fda' bus='fdc'/>
    </disk>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' autoport='yes' passwd='{passwd}'><listen type='address' address='127.0.0.1'/></graphics>
    <graphics type='spice' autoport='yes'><listen type='address' address='127.0.0.1'/></graphics>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <watchdog model='i6300esb' action='reset'/>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x7e' slot='0x1f' function='0x7'/></source>
    </hostdev>
  </devices>
</domain>""")
    out = ws.root / "exported"
    done = ws.cli("export", name, "-d", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("export: ")]
    text = "\n".join(lines)
    # what applying would change: the password (not exported); nothing else
    notes = [line for line in lines if ": kept as defined" not in line]
    assert [line.split(": ")[2] for line in notes] == ["graphics.password"], text
    # the rest goes to the escape hatch (xml entries, issue 13), whole, nothing left
    # out: a floppy and a second display too (outside the managed sets)
    assert not [line for line in lines if ": kept as defined" in line], text
    assert passwd not in done.stderr
    manifest = (out / "vms" / f"{name}.yaml").read_text()
    assert "Kept as defined" not in manifest and passwd not in manifest
    spec = yaml.safe_load(manifest)["spec"]
    # what issue 13 typed is written as typed fields, not as xml entries: the agent
    # channel, rng, watchdog (domain_devices) and the PCI host device (domain_storage)
    assert spec["hostdevs"] == [{"type": "pci", "address": "0000:7e:1f.7"}]
    assert spec["guestAgent"] is True
    assert spec["rng"] == {"model": "virtio", "backend": "/dev/urandom"}
    assert spec["watchdog"] == {"model": "i6300esb", "action": "reset"}
    entries = spec["xml"]
    carried = " ".join(str(e) for e in entries)
    for expected in ("'xpath': './os', 'add': '<bootmenu enable=\"yes\"/>'",
                     '<vmport state="off"/>', '<timer name="rtc" tickpolicy="catchup"/>',
                     "'xpath': './on_crash'", '<disk type="file" device="floppy">',
                     '<graphics type="spice"'):  # fmt: skip
        assert expected in carried, (expected, entries)
    for typed in ("<channel", "<rng", "<watchdog", "<hostdev"):
        assert typed not in carried, (typed, entries)
    # -o json: the same, as fields
    done = ws.cli("-o", "json", "export", name, state=False)
    assert done.returncode == 0, done.stderr
    [obj] = json.loads(done.stdout)["objects"]
    assert obj["exported"] and obj["document"]["metadata"]["name"] == name
    assert obj["kept"] == [] and obj["document"]["spec"]["xml"] == entries
    assert {n["field"] for n in obj["notes"]} == {"graphics.password"}
    assert passwd not in done.stdout
    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # and the notes tell the truth: applying keeps the floppy and the second display
    ws.directory.mkdir(parents=True, exist_ok=True)
    (ws.directory / "odd.yaml").write_text(manifest)
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    after = ws.virsh("dumpxml", "--inactive", name)
    assert "device='floppy'" in after and "<graphics type='spice'" in after, after
    assert "bus='0x7e' slot='0x1f' function='0x7'" in after, after


def test_errors_are_one_line(ws: Workspace) -> None:
    done = ws.cli("export", ws.n("missing"), state=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"reconciler: error: export: {ws.n('missing')}: no object of that name in libvirt"
    )
    done = ws.cli("export", "Gadget/x", state=False)
    assert done.returncode == 1 and "unknown kind 'Gadget'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "export", "--all", "--connect",
         "qemu+unix:///system?socket=/nonexistent/libvirt-sock"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("reconciler: error: cannot connect to libvirt")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_running_vm_without_a_cpu_exports_a_cpu_this_host_accepts(
    ws: Workspace, host_probe: object
) -> None:
    """q35, no ``<cpu>``, started with ``virsh create`` (transient): libvirt runs it
    with QEMU's default model and the features this host cannot give disabled (svm on
    an Intel host). Export writes that CPU; plan must not refuse the CPU the VM runs
    with (it did: "cannot run CPU model qemu64: it lacks svm")."""
    # kvm only where it starts a domain with no <cpu> as it is: an AMD host under
    # nested KVM needs arch-capabilities disabled (vmDefaults), which needs a <cpu>
    defaults = getattr(host_probe, "defaults", None)
    kvm = getattr(host_probe, "kvm_usable", False) and getattr(defaults, "cpu", None) is None
    name = ws.n("nocpu")
    define(ws, "create", f"""
<domain type='{'kvm' if kvm else 'qemu'}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices/>
</domain>""")
    out = ws.root / "export"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = list(out.rglob("*.yaml"))
    document = yaml.safe_load(path.read_text())
    if kvm:
        assert document["spec"]["cpu"]["model"], document
    (ws.directory).mkdir(parents=True, exist_ok=True)
    (ws.directory / path.name).write_text(path.read_text())
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr  # an adoption, no problem
    plan = ws.plan()
    assert [c.path for c in action(plan, "VirtualMachine", name).changes] == [
        "ownership", "persistent"]
