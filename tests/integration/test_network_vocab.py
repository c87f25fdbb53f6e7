"""The Network vocabulary of issue 13 against the real libvirtd.

* The golden XML of tests/unit/test_network_vocab.py passes ``virt-xml-validate``.
* A dual-stack ISOLATED network (no ``<forward>``: nothing leaves the host) with two
  DHCP ranges, DHCPv6 hosts, an IPv6 route to a ULA prefix, DNS forwarder (loopback),
  TXT and SRV records and portgroups is applied and started; a second plan is empty.
  A DHCPv6 host, an IPv4 range, TXT and SRV records and a portgroup changed then go
  live (net-update, a DHCP entry into the ``<ip>`` of its family; no restart).
* A macvtap network on a dummy interface made for the test (``ip link add ... type
  dummy``; a veth pair where the kernel has no dummy driver; deleted afterwards even on
  failure) is defined and started; a NIC added to its pool goes live.
* Hand-made networks using every item (dual-stack isolated, macvtap, NAT with address
  and port ranges: defined, never started; hostdev with PCI addresses only where the host
  has SR-IOV virtual functions, which libvirt requires at define)
  export to manifests that plan as adoption only, apply without a restart and leave
  ``net-dumpxml --inactive`` as it was apart from our record.

libvirt's ``default`` network is never started.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from reconciler.plan import NetUpdate, Op, StartNetwork, StopNetwork
from reconciler.report import render_plan
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    network,
    ws_fixture,
)
from tests.integration.test_engine_patch_networks import _adopt, _differences

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "data" / "xml"


@pytest.mark.parametrize("name", ["network-dualstack.xml", "network-macvtap.xml",
                                  "network-hostdev.xml", "network-nat-ranges.xml"])  # fmt: skip
def test_golden_xml_validates(name: str) -> None:
    result = subprocess.run(["virt-xml-validate", str(GOLDEN / name), "network"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr


def _ula(ws: Workspace, net: ipaddress.IPv4Network) -> str:
    """A ULA /64 prefix for the run's IPv4 subnet ``net`` (nothing routes it off the host)."""
    return f"fd55:{ws.run_id[:4]}:{net.network_address.packed[2]:x}"


def _dummy(ws: Workspace) -> str:
    """A host NIC to put a macvtap network on, with no link to anywhere: a ``dummy``
    interface, or where the kernel has no dummy driver (this CI's Firecracker kernel: "ip
    link add ... type dummy" says "Unknown device type", and has no modules to load) one
    end of a veth pair whose other end is on this host too. Deleted with the workspace's
    bridges (``ip link del``, which takes a veth pair's both ends), even on failure."""
    name = f"rctest-{ws.run_id[:6]}{len(ws.bridges)}"[:14]
    made = subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        assert "Unknown device type" in made.stderr, made.stderr
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                       check=True)  # fmt: skip
    ws.bridges.append(name)  # ws_fixture deletes these with `ip link del`, even on failure
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return name


def _dualstack(ws: Workspace, name: str) -> dict[str, Any]:
    net = ws.subnet()
    v4 = [str(h) for h in net.hosts()]
    six = _ula(ws, net)
    return network(
        name, mode="isolated", bridge=ws.bridge_name(), domain=f"{name}.test",
        ipv4={"address": v4[0], "prefix": 24, "dhcp": {
            "ranges": [{"start": v4[99], "end": v4[149]}, {"start": v4[199], "end": v4[219]}],
            "hosts": [{"mac": "52:54:00:5e:01:01", "ip": v4[9], "name": "web"}]}},
        ipv6={"address": f"{six}::1", "prefix": 64, "dhcp": {
            "start": f"{six}::100", "end": f"{six}::1ff",
            "hosts": [{"id": "0:3:0:1:52:54:0:5e:1:1", "ip": f"{six}::10", "name": "web"}]}},
        routes=[{"address": f"{six}:1::", "prefix": 64, "gateway": f"{six}::2", "metric": 2}],
        dns={"forwarders": [{"addr": "127.0.0.53"}, {"domain": "local.test"}],
             "txt": [{"name": "motd", "value": "hello"}],
             "srv": [{"service": "ldap", "protocol": "tcp", "target": f"web.{name}.test",
                      "port": 389, "priority": 10, "weight": 5}]},
        portgroups=[{"name": "engineering", "default": True,
                     "bandwidth": {"inbound": {"average": 1000, "peak": 5000, "burst": 1024}}},
                    {"name": "sales"}],
    )  # fmt: skip


def _apply(ws: Workspace) -> None:
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dual_stack_network_applied_started_and_dhcpv6_host_changed_live(ws: Workspace) -> None:
    name = ws.n("ds")
    doc = _dualstack(ws, name)
    manifest = ws.write("net.yaml", doc)
    _apply(ws)
    assert ws.conn.networkLookupByName(name).isActive()
    assert_settled(ws)
    running = etree.fromstring(ws.virsh("net-dumpxml", name).encode())
    assert len(running.findall("ip[@family='ipv6']/dhcp/host")) == 1
    assert len(running.findall("ip/dhcp/range")) == 3
    bridge = doc["spec"]["bridge"]
    routes = subprocess.run(["ip", "-6", "route", "show", "dev", bridge], capture_output=True,
                            text=True, check=True).stdout  # fmt: skip
    six = doc["spec"]["ipv6"]["address"].removesuffix("::1")
    assert f"{six}:1::/64 via {six}::2" in routes, routes

    # a DHCPv6 host, an IPv4 range, a TXT and an SRV record and a portgroup changed:
    # net-update each (a DHCP entry into the <ip> of its family), the network keeps running
    spec = doc["spec"]
    spec["ipv6"]["dhcp"]["hosts"] = [{"name": "db", "ip": f"{six}::11"}]
    v4 = spec["ipv4"]["address"].rsplit(".", 1)[0]
    spec["ipv4"]["dhcp"]["ranges"][1] = {"start": f"{v4}.230", "end": f"{v4}.239"}
    spec["dns"]["txt"] = [{"name": "motd", "value": "changed"}]
    spec["dns"]["srv"][0]["weight"] = 7
    spec["portgroups"][0]["bandwidth"]["inbound"]["average"] = 2000
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan = ws.plan()
    a = action(plan, "Network", name)
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending, render_plan(plan, verbose=True)
    assert all(c.live for c in a.changes), render_plan(plan, verbose=True)
    updates = sorted((s.section, s.command, s.index) for s in a.steps if isinstance(s, NetUpdate))
    assert updates == sorted([
        ("ip-dhcp-host", "delete", 1), ("ip-dhcp-host", "add", 1),
        ("ip-dhcp-range", "delete", 0), ("ip-dhcp-range", "add", 0),
        ("dns-txt", "delete", None), ("dns-txt", "add", None),
        ("dns-srv", "delete", None), ("dns-srv", "add", None),
        ("portgroup", "delete", None), ("portgroup", "add", None)]), updates  # fmt: skip
    assert not any(isinstance(s, StopNetwork | StartNetwork) for s in a.steps)
    _apply(ws)
    assert_settled(ws)
    for dump in (ws.virsh("net-dumpxml", name), ws.virsh("net-dumpxml", "--inactive", name)):
        root = etree.fromstring(dump.encode())
        hosts = root.findall("ip[@family='ipv6']/dhcp/host")
        assert [(h.get("name"), h.get("ip")) for h in hosts] == [("db", f"{six}::11")]
        assert f"{v4}.230" in [r.get("start") for r in root.findall("ip/dhcp/range")]
        assert root.find("dns/txt").get("value") == "changed"  # type: ignore[union-attr]
        assert root.find("dns/srv").get("weight") == "7"  # type: ignore[union-attr]
        inbound = root.find("portgroup[@name='engineering']/bandwidth/inbound")
        assert inbound is not None and inbound.get("average") == "2000"


def test_macvtap_network_on_a_dummy_interface_started(ws: Workspace) -> None:
    name = ws.n("mv")
    dummy = _dummy(ws)
    ws.write("net.yaml", network(name, mode="macvtap",
                                 forward={"mode": "bridge", "interfaces": [dummy]},
                                 portgroups=[{"name": "web", "default": True}]))  # fmt: skip
    _apply(ws)
    net = ws.conn.networkLookupByName(name)
    assert net.isActive()
    root = etree.fromstring(ws.virsh("net-dumpxml", name).encode())
    forward = root.find("forward")
    assert forward is not None and forward.get("mode") == "bridge"
    assert [i.get("dev") for i in forward.findall("interface")] == [dummy]
    assert_settled(ws)

    # another NIC in the pool: net-update forward-interface, no restart
    second = _dummy(ws)
    ws.write("net.yaml", network(name, mode="macvtap",
                                 forward={"mode": "bridge", "interfaces": [dummy, second]},
                                 portgroups=[{"name": "web", "default": True}]))  # fmt: skip
    plan = ws.plan()
    a = action(plan, "Network", name)
    assert a.op is Op.UPDATE_LIVE and not a.restart_pending, render_plan(plan, verbose=True)
    assert [(s.command, s.section) for s in a.steps if isinstance(s, NetUpdate)] == [
        ("add", "forward-interface")]
    _apply(ws)
    assert_settled(ws)
    running = etree.fromstring(ws.virsh("net-dumpxml", name).encode())
    assert [i.get("dev") for i in running.findall("forward/interface")] == [dummy, second]


def _hand_made(ws: Workspace, xml: str, name: str, *, start: bool) -> str:
    path = ws.root / f"{name}.xml"
    path.write_text(xml)
    ws.virsh("net-define", str(path))
    if start:
        ws.virsh("net-start", name)
    return ws.virsh("net-dumpxml", "--inactive", name)


def _round_trip(ws: Workspace, name: str, before: str) -> dict[str, Any]:
    active = ws.conn.networkLookupByName(name).isActive()
    _, exported = _adopt(ws, f"Network/{name}", "Network", name)
    # everything is typed now: nothing kept, no notes (lines "#   ..." under a heading)
    assert not [line for line in exported.splitlines() if line.startswith("#   ")], exported
    # apart from our record (and the <metadata> that holds it) the definition is as it was
    after = _differences(before, ws.virsh("net-dumpxml", "--inactive", name))
    assert [line for line in after if line != "+  <metadata/>"] == []
    assert ws.conn.networkLookupByName(name).isActive() == active  # no restart, no start
    doc: dict[str, Any] = yaml.safe_load(exported)
    return doc


def test_export_of_hand_made_networks_using_every_item(ws: Workspace) -> None:
    net = ws.subnet()
    v4 = [str(h) for h in net.hosts()]
    six = _ula(ws, net)
    dual, mv, nat = ws.n("xds"), ws.n("xmv"), ws.n("xnat")
    dummy = _dummy(ws)
    before = _hand_made(ws, f"""<network>
  <name>{dual}</name>
  <bridge name='{ws.bridge_name()}'/>
  <domain name='{dual}.test'/>
  <dns>
    <forwarder addr='127.0.0.53'/>
    <forwarder domain='local.test'/>
    <txt name='motd' value='hello'/>
    <srv service='ldap' protocol='tcp' target='web.{dual}.test' port='389' priority='10' weight='5'/>
    <host ip='{v4[9]}'><hostname>web</hostname></host>
  </dns>
  <portgroup name='engineering' default='yes'>
    <bandwidth><inbound average='1000' peak='5000' burst='1024'/><outbound average='500'/></bandwidth>
  </portgroup>
  <portgroup name='sales'/>
  <ip address='{v4[0]}' prefix='24'>
    <dhcp>
      <range start='{v4[99]}' end='{v4[149]}'/>
      <range start='{v4[199]}' end='{v4[219]}'/>
      <host mac='52:54:00:5e:02:01' name='web' ip='{v4[9]}'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='{six}::1' prefix='64'>
    <dhcp>
      <range start='{six}::100' end='{six}::1ff'/>
      <range start='{six}::300' end='{six}::3ff'/>
      <host id='0:3:0:1:52:54:0:5e:2:1' name='web' ip='{six}::10'/>
      <host name='db' ip='{six}::11'/>
    </dhcp>
  </ip>
  <route family='ipv6' address='{six}:1::' prefix='64' gateway='{six}::2' metric='2'/>
</network>""", dual, start=True)  # fmt: skip
    doc = _round_trip(ws, dual, before)["spec"]
    assert len(doc["ipv4"]["dhcp"]["ranges"]) == 2 and len(doc["ipv6"]["dhcp"]["ranges"]) == 2
    assert doc["ipv6"]["dhcp"]["hosts"][0]["id"] == "0:3:0:1:52:54:0:5e:2:1"
    assert doc["routes"] == [{"address": f"{six}:1::", "prefix": 64, "gateway": f"{six}::2",
                              "metric": 2}]  # fmt: skip
    assert set(doc["dns"]) == {"forwarders", "txt", "srv"}
    assert [g["name"] for g in doc["portgroups"]] == ["engineering", "sales"]

    before = _hand_made(ws, f"""<network>
  <name>{mv}</name>
  <forward mode='private'><interface dev='{dummy}'/></forward>
  <portgroup name='web' default='yes'/>
</network>""", mv, start=True)  # fmt: skip
    doc = _round_trip(ws, mv, before)["spec"]
    assert doc["mode"] == "macvtap"
    assert doc["forward"] == {"mode": "private", "interfaces": [dummy]}

    # NAT with address and port ranges: defined only (a started NAT network forwards)
    n = ws.subnet()
    before = _hand_made(ws, f"""<network>
  <name>{nat}</name>
  <forward mode='nat'>
    <nat><address start='192.0.2.10' end='192.0.2.20'/><port start='2000' end='3000'/></nat>
  </forward>
  <bridge name='{ws.bridge_name()}'/>
  <ip address='{next(n.hosts())}' prefix='24'/>
</network>""", nat, start=False)  # fmt: skip
    doc = _round_trip(ws, nat, before)["spec"]
    assert doc["nat"] == {"addresses": {"start": "192.0.2.10", "end": "192.0.2.20"},
                          "ports": {"start": 2000, "end": 3000}}  # fmt: skip


def _virtual_functions() -> list[str]:
    """PCI addresses of this host's SR-IOV virtual functions (those with a ``physfn``)."""
    return sorted(p.parent.name for p in Path("/sys/bus/pci/devices").glob("*/physfn"))


def test_export_of_a_hand_made_hostdev_network(ws: Workspace) -> None:
    """libvirt 9.0 refuses to define a hostdev pool of PCI addresses that are not SR-IOV
    virtual functions ("is not an SR-IOV Virtual Function"), so this needs a host with
    VFs; it is defined, never started (that would take the VFs from the host)."""
    functions = _virtual_functions()[:2]
    if not functions:
        pytest.skip("no SR-IOV virtual functions on this host (/sys/bus/pci/devices/*/physfn):"
                    " libvirt defines no hostdev network without them")  # fmt: skip
    name = ws.n("xhd")
    addresses = "".join(
        "<address type='pci' domain='0x{}' bus='0x{}' slot='0x{}' function='0x{}'/>".format(
            *f.replace(".", ":").split(":")) for f in functions)  # fmt: skip
    before = _hand_made(ws, f"""<network>
  <name>{name}</name>
  <forward mode='hostdev' managed='yes'>{addresses}</forward>
  <portgroup name='vlan10'><vlan><tag id='10'/></vlan></portgroup>
</network>""", name, start=False)  # fmt: skip
    doc = _round_trip(ws, name, before)["spec"]
    assert doc["forward"] == {"managed": True, "devices": functions}
    assert doc["portgroups"] == [{"name": "vlan10", "vlan": [10]}]
