"""NICs of issue 13 on the real libvirtd: direct (macvtap), link state, bandwidth,
MTU, VLAN and portgroup (formatdomain "Network interfaces").

The macvtap NIC sits on one end of a veth pair made for the test (this host's
kernel has no ``dummy`` driver: ``ip link add ... type dummy`` answers "Unknown
device type"); the pair is connected to nothing, so no packet leaves the host.
"""

from __future__ import annotations

import secrets
import subprocess
from typing import Any

import pytest
import yaml

from reconciler.plan import Op
from tests.integration.engine_support import (
    Workspace,
    action,
    assert_settled,
    vm,
    ws_fixture,  # noqa: F401
)


@pytest.fixture
def host_dev(ws: Workspace) -> str:
    """One end of a fresh veth pair (``rctest-XXXXXXa``), up; both ends are deleted
    when the test ends, pass or fail (with the workspace's bridges)."""
    name = f"rctest-{secrets.token_hex(3)}a"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name[:-1] + "b"],
                   check=True, capture_output=True)  # fmt: skip
    ws.bridges.append(name)  # deleting one end deletes the pair
    subprocess.run(["ip", "link", "set", name, "up"], check=True, capture_output=True)
    return name


def _link(ws: Workspace, name: str, mac: str) -> str:
    return ws.virsh("domif-getlink", name, mac).split()[-1]


def test_a_macvtap_nic_runs_and_its_link_changes_live(ws: Workspace, host_dev: str) -> None:
    name, mac = ws.n("mvt"), "52:54:00:6e:00:01"
    mac_b, mac_n = "52:54:00:6e:00:02", "52:54:00:6e:00:03"
    nic: dict[str, Any] = {"direct": {"dev": host_dev, "mode": "bridge"}, "mac": mac,
                           "link": "down"}  # fmt: skip
    # a tap on a bridge and one on an isolated network: their links change live too
    others: list[dict[str, Any]] = [
        {"bridge": ws.host_bridge(), "mac": mac_b, "link": "down"},
        {"network": ws.n("net"), "mac": mac_n, "link": "down"}]  # fmt: skip
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.write("vm.yaml", vm(name, interfaces=[nic, *others]))
    ws.converge()
    assert_settled(ws)
    dom = ws.domain(name)
    assert dom.isActive()
    live = dom.XMLDesc(0)
    assert "type='direct'" in live and f"dev='{host_dev}'" in live and "mode='bridge'" in live
    assert "macvtap" in live  # the running NIC's host side: a macvtap on the veth
    assert [_link(ws, name, m) for m in (mac, mac_b, mac_n)] == ["down"] * 3

    # the links come up live: no restart, and the next plan is empty
    boot = dom.ID()
    ws.write("vm.yaml", vm(name, interfaces=[{**n, "link": "up"} for n in (nic, *others)]))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert sorted((c.path, c.old, c.new, c.live) for c in a.changes) == [
        (f"interfaces[{m}].link", "down", "up", True) for m in (mac, mac_b, mac_n)], a.changes
    assert not a.restart_pending
    ws.converge()
    assert_settled(ws)
    assert [_link(ws, name, m) for m in (mac, mac_b, mac_n)] == ["up"] * 3
    assert ws.domain(name).ID() == boot


def test_a_manifest_without_direct_nics_keeps_them(ws: Workspace, host_dev: str) -> None:
    """Existing manifests name no direct NIC: the domain's stays, unseen, as before; a
    manifest that lists direct NICs makes their set exact."""
    name = ws.n("keep")
    bridge = ws.host_bridge()
    mac_b, mac_d, mac_d2 = "52:54:00:6e:00:11", "52:54:00:6e:00:12", "52:54:00:6e:00:13"
    path = ws.root / "keep.xml"
    path.write_text(f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='bridge'><mac address='{mac_b}'/><source bridge='{bridge}'/>
      <model type='virtio'/><link state='down'/><mtu size='1400'/></interface>
    <interface type='direct'><mac address='{mac_d}'/><source dev='{host_dev}' mode='vepa'/>
      <model type='virtio'/></interface>
  </devices>
</domain>""")
    ws.virsh("define", str(path))
    base = {"type": "qemu", "state": "stopped", "adopt": True, "serial": "none"}
    # the bridge NIC's link and mtu are not named: kept too
    ws.write("vm.yaml", vm(name, **base, interfaces=[{"bridge": bridge, "mac": mac_b, "bootRom": True}]))
    a = action(ws.plan(), "VirtualMachine", name)
    assert [c.path for c in a.changes if c.path != "ownership"] == [], a.changes
    ws.converge()
    kept = ws.virsh("dumpxml", "--inactive", name)
    assert f"dev='{host_dev}'" in kept and "<link state='down'/>" in kept and "1400" in kept
    assert_settled(ws)

    # a manifest that lists a direct NIC manages them all: the one it does not list goes
    nics = [{"bridge": bridge, "mac": mac_b, "bootRom": True},
            {"direct": {"dev": host_dev, "mode": "private"}, "mac": mac_d2}]  # fmt: skip
    ws.write("vm.yaml", vm(name, **base, interfaces=nics))
    a = action(ws.plan(), "VirtualMachine", name)
    got = {c.path: (c.old, c.new) for c in a.changes}
    assert got[f"interfaces[{mac_d}].direct.dev"] == (host_dev, None), got
    assert got[f"interfaces[{mac_d2}].direct.mode"] == (None, "private"), got
    ws.converge()
    now = ws.virsh("dumpxml", "--inactive", name)
    assert mac_d not in now and mac_d2 in now and "mode='private'" in now
    assert_settled(ws)


def _tc_shaping_works() -> str | None:
    """Why libvirt cannot shape a NIC on this host (its tc calls: htb + sfq inbound,
    an ingress police filter outbound), or None: tried on a veth pair made for it."""
    name = f"rctest-{secrets.token_hex(3)}q"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name[:-1] + "r"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        for cmd in (["qdisc", "add", "dev", name, "root", "handle", "1:", "htb", "default", "1"],
                    ["class", "add", "dev", name, "parent", "1:", "classid", "1:1", "htb",
                     "rate", "1000kbps"],
                    ["qdisc", "add", "dev", name, "parent", "1:1", "handle", "2:", "sfq",
                     "perturb", "10"],
                    ["qdisc", "add", "dev", name, "ingress"],
                    ["filter", "add", "dev", name, "parent", "ffff:", "protocol", "all", "u32",
                     "match", "u32", "0", "0", "police", "rate", "500kbps", "burst", "1kb",
                     "mtu", "64kb", "drop", "flowid", ":1"]):  # fmt: skip
            done = subprocess.run(["tc", *cmd], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                return f"tc {' '.join(cmd[:3])}... fails here: {done.stderr.strip()}"
        return None
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def test_bandwidth_is_planned_as_a_live_update_of_the_nic(ws: Workspace) -> None:
    """Plan only (this host may not shape: see the next test): limits added to a running
    VM's NIC are one update of that NIC (virDomainUpdateDeviceFlags, LIVE) after the
    redefine, with no restart pending; an MTU next to them waits for a restart."""
    name, mac = ws.n("bwp"), "52:54:00:6e:00:22"
    nic: dict[str, Any] = {"bridge": ws.host_bridge(), "mac": mac}
    ws.write("vm.yaml", vm(name, interfaces=[nic]))
    ws.converge()
    limits = {"inbound": {"average": "2000KiB/s", "burst": "64KiB"}}
    ws.write("vm.yaml", vm(name, interfaces=[{**nic, "bandwidth": limits}]))
    a = action(ws.plan(), "VirtualMachine", name)
    assert sorted((c.path, c.new, c.live) for c in a.changes) == [
        (f"interfaces[{mac}].bandwidth.inbound.average", 2000, True),
        (f"interfaces[{mac}].bandwidth.inbound.burst", 64, True)], a.changes
    assert [s.verb for s in a.steps] == ["define-domain", "update-device"], a.steps
    assert not a.restart_pending
    ws.write("vm.yaml", vm(name, interfaces=[{**nic, "bandwidth": limits, "mtu": 1400}]))
    a = action(ws.plan(), "VirtualMachine", name)
    assert {c.path for c in a.restart_pending} >= {f"interfaces[{mac}].mtu"}, a.restart_pending
    assert "update-device" not in [s.verb for s in a.steps]


def test_bandwidth_changes_live(ws: Workspace) -> None:
    why = _tc_shaping_works()
    if why is not None:
        pytest.skip(f"libvirt shapes NICs with tc, which this kernel cannot do ({why})")
    name, mac = ws.n("bw"), "52:54:00:6e:00:21"
    bridge = ws.host_bridge()
    nic: dict[str, Any] = {"bridge": bridge, "mac": mac,
                           "bandwidth": {"inbound": {"average": 1000}}}  # fmt: skip
    ws.write("vm.yaml", vm(name, interfaces=[nic]))
    ws.converge()
    assert_settled(ws)
    boot = ws.domain(name).ID()
    nic["bandwidth"] = {"inbound": {"average": "2000KiB/s", "peak": "4MiB/s", "burst": "64KiB"},
                        "outbound": {"average": 500}}  # fmt: skip
    ws.write("vm.yaml", vm(name, interfaces=[nic]))
    a = action(ws.plan(), "VirtualMachine", name)
    assert all(c.live for c in a.changes) and not a.restart_pending, a.changes
    ws.converge()
    assert_settled(ws)
    tune = ws.virsh("domiftune", name, mac)
    assert "inbound.average: 2000" in tune and "inbound.peak   : 4096" in tune, tune
    assert "outbound.average: 500" in tune, tune
    assert ws.domain(name).ID() == boot


def test_export_round_trip_of_a_hand_made_domain(ws: Workspace, host_dev: str) -> None:
    """A domain made by hand with every NIC field of issue 13 (defined, not started:
    a VLAN needs an openvswitch or SR-IOV host side, a portgroup its Network) is
    exported with them, plans as an adoption only, and applying it leaves the
    definition unchanged apart from our metadata."""
    name, net = ws.n("exp"), ws.n("expnet")
    bridge = ws.host_bridge()
    sub = ws.subnet()
    gw = next(sub.hosts())
    (ws.root / "net.xml").write_text(f"""
<network><name>{net}</name><bridge name='{ws.bridge_name()}'/>
  <portgroup name='web'/>
  <ip address='{gw}' prefix='24'/></network>""")
    ws.virsh("net-define", str(ws.root / "net.xml"))
    (ws.root / "dom.xml").write_text(f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <interface type='network'><mac address='52:54:00:6e:00:31'/>
      <source network='{net}' portgroup='web'/>
      <vlan trunk='yes'><tag id='42' nativeMode='untagged'/><tag id='43'/></vlan>
      <model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:6e:00:32'/><source bridge='{bridge}'/>
      <model type='e1000'/>
      <bandwidth><inbound average='1000' peak='2000' burst='256'/><outbound average='500'/>
      </bandwidth><link state='down'/><mtu size='9000'/></interface>
    <interface type='direct'><mac address='52:54:00:6e:00:33'/>
      <source dev='{host_dev}' mode='passthrough'/><vlan><tag id='7'/></vlan>
      <model type='virtio'/></interface>
  </devices>
</domain>""")
    ws.virsh("define", str(ws.root / "dom.xml"))
    before = ws.virsh("dumpxml", "--inactive", name)
    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "interface" not in done.stderr, done.stderr  # no NIC is "kept as defined"
    [path] = list(out.rglob("*.yaml"))
    spec = yaml.safe_load(path.read_text())["spec"]
    assert spec["interfaces"] == [
        {"network": net, "mac": "52:54:00:6e:00:31", "bootRom": True,
         "vlan": {"tags": [{"id": 42, "nativeMode": "untagged"}, {"id": 43}], "trunk": True},
         "portgroup": "web"},
        {"bridge": bridge, "mac": "52:54:00:6e:00:32", "model": "e1000", "bootRom": True,
         "bandwidth": {"inbound": {"average": 1000, "peak": 2000, "burst": 256},
                       "outbound": {"average": 500}},
         "link": "down", "mtu": 9000},
        {"direct": {"dev": host_dev, "mode": "passthrough"}, "mac": "52:54:00:6e:00:33",
         "bootRom": True, "vlan": 7},
    ], spec["interfaces"]  # fmt: skip
    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ws.directory.rmdir()
    ws.directory.symlink_to(out)
    a = action(ws.plan(), "VirtualMachine", name)
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")], a.changes
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending
    ws.converge()
    assert_settled(ws)
    after = ws.virsh("dumpxml", "--inactive", name)
    assert _without_metadata(after) == _without_metadata(before)


def _without_metadata(xml: str) -> str:
    from lxml import etree as ET

    root = ET.fromstring(xml.encode())
    for element in root.findall("metadata"):
        root.remove(element)
    return ET.tostring(root, encoding="unicode")


def test_a_vlan_on_a_plain_bridge_is_refused_at_plan(ws: Workspace) -> None:
    name = ws.n("vlanbr")
    bridge = ws.host_bridge()
    ws.write("vm.yaml", vm(name, interfaces=[{"bridge": bridge, "vlan": 42}]))
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode != 0 and done.returncode != 2, done.stdout + done.stderr
    text = done.stdout + done.stderr
    assert "vm.yaml:" in text and "interfaces[0].vlan" in text, text
    assert "plain Linux bridge cannot carry a VLAN tag" in text and "Traceback" not in text
    assert ws.conn.listDefinedDomains() == [] or name not in ws.conn.listDefinedDomains()


def test_the_golden_xml_is_valid_and_reads_back(ws: Workspace) -> None:
    """The golden NIC XML passes ``virt-xml-validate``; rendered under a test name it is
    defined by libvirt, and read back it is what the manifest projects."""
    from reconciler.xml import domain as domain_xml
    from tests.unit.test_xml_domain_nics import _spec
    from tests.unit.xml_support import DATA

    done = subprocess.run(["virt-xml-validate", str(DATA / "domain-nics.xml"), "domain"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    spec = _spec()
    xml = domain_xml.render(ws.n("golden"), spec)
    dom = ws.conn.defineXML(xml)
    try:
        back = dom.XMLDesc(2)  # VIR_DOMAIN_XML_INACTIVE
        aliases = domain_xml.machine_aliases_from_capabilities(ws.conn.getCapabilities())
        assert domain_xml.observe(back, direct=True) == domain_xml.project(
            spec, machine_aliases=aliases)
    finally:
        dom.undefine()


def test_export_round_trip_of_a_running_hand_made_domain(ws: Workspace, host_dev: str) -> None:
    """Running: a macvtap NIC, and a bridge NIC with its link down and an MTU. Exported,
    adopted and applied with no restart; the definition is unchanged apart from our
    metadata, and the domain kept running through it."""
    name = ws.n("run")
    bridge = ws.host_bridge()
    (ws.root / "dom.xml").write_text(f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <interface type='direct'><mac address='52:54:00:6e:00:41'/>
      <source dev='{host_dev}' mode='bridge'/><model type='virtio'/></interface>
    <interface type='bridge'><mac address='52:54:00:6e:00:42'/><source bridge='{bridge}'/>
      <model type='virtio'/><link state='down'/><mtu size='1400'/></interface>
  </devices>
</domain>""")
    ws.virsh("define", str(ws.root / "dom.xml"))
    ws.virsh("start", name)
    before = ws.virsh("dumpxml", "--inactive", name)
    boot = ws.domain(name).ID()
    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "interface" not in done.stderr, done.stderr
    [path] = list(out.rglob("*.yaml"))
    spec = yaml.safe_load(path.read_text())["spec"]
    assert spec["interfaces"] == [
        {"direct": {"dev": host_dev, "mode": "bridge"}, "mac": "52:54:00:6e:00:41",
         "bootRom": True},
        {"bridge": bridge, "mac": "52:54:00:6e:00:42", "bootRom": True, "link": "down",
         "mtu": 1400},
    ], spec["interfaces"]  # fmt: skip
    ws.directory.rmdir()
    ws.directory.symlink_to(out)
    a = action(ws.plan(), "VirtualMachine", name)
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")], a.changes
    assert not a.restart_pending
    ws.converge()
    assert_settled(ws)
    assert _without_metadata(ws.virsh("dumpxml", "--inactive", name)) == \
        _without_metadata(before)  # fmt: skip
    assert ws.domain(name).ID() == boot
    assert _link(ws, name, "52:54:00:6e:00:42") == "down"
