"""The Network vocabulary of issue 13: IPv6, exact DHCP ranges, routes, DNS forwarders,
SRV and TXT, portgroups, the macvtap/hostdev device pool and NAT ranges.

Each section is managed only when the manifest names it: a manifest written before
(none of them named) patches a network that has them all to exactly the same XML and
plans nothing; one naming them makes them exact. Golden XML in data/xml
(network-dualstack.xml, network-macvtap.xml, network-hostdev.xml) is validated by
tests/integration/test_network_vocab.py with virt-xml-validate.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from reconciler.diff import diff
from reconciler.manifests import LoadResult, load_directory
from reconciler.model import NetworkSpec
from reconciler.plan import NetUpdate
from reconciler.planner.network import _network_live_updates
from reconciler.preflight import wanted
from reconciler.xml import network
from tests.unit.test_preflight import FACTS, line_of, manifests, problems
from tests.unit.test_xml_network_patch import HANDMADE, LAB6, _canon

from .xml_support import assert_golden

DUALSTACK = {
    "mode": "isolated",
    "bridge": "virbr91",
    "domain": "lab.test",
    "ipv4": {"address": "10.91.0.1", "prefix": 24, "dhcp": {
        "ranges": [{"start": "10.91.0.100", "end": "10.91.0.149"},
                   {"start": "10.91.0.200", "end": "10.91.0.249"}],
        "hosts": [{"mac": "52:54:00:00:91:01", "ip": "10.91.0.10", "name": "web"}]}},
    "ipv6": {"address": "fd00:91::1", "prefix": 64, "dhcp": {
        "start": "fd00:91::100", "end": "fd00:91::1ff",
        "hosts": [{"id": "0:3:0:1:52:54:0:0:91:1", "ip": "fd00:91::10", "name": "web"},
                  {"name": "db", "ip": "fd00:91::11"}]}},
    "routes": [{"address": "192.0.2.0", "prefix": 24, "gateway": "10.91.0.2"},
               {"address": "2001:db8:91::", "prefix": 64, "gateway": "fd00:91::2", "metric": 2}],
    "dns": {"forwarders": [{"addr": "192.0.2.53"}, {"domain": "corp.example", "addr": "192.0.2.54"},
                           {"domain": "local.example"}],
            "txt": [{"name": "motd", "value": "hello world"}],
            "srv": [{"service": "ldap", "protocol": "tcp", "domain": "lab.test",
                     "target": "web.lab.test", "port": 389, "priority": 10, "weight": 5}]},
    "portgroups": [{"name": "engineering", "default": True,
                    "bandwidth": {"inbound": {"average": 1000, "peak": 5000, "burst": 1024},
                                  "outbound": {"average": 500}}},
                   {"name": "sales"}],
}  # fmt: skip

MACVTAP = {"mode": "macvtap", "forward": {"mode": "vepa", "interfaces": ["eth1", "eth2"]},
           "portgroups": [{"name": "web"}]}  # fmt: skip
HOSTDEV = {"mode": "hostdev", "forward": {"devices": ["0000:03:10.0", "0000:03:10.1"],
                                          "managed": True},
           "portgroups": [{"name": "vlan10", "vlan": [10]}]}  # fmt: skip
NAT = {"mode": "nat", "ipv4": {"address": "10.92.0.1", "prefix": 24},
       "nat": {"addresses": {"start": "192.0.2.10", "end": "192.0.2.20"},
               "ports": {"start": 2000, "end": 3000}}}  # fmt: skip


def _load(raw: dict[str, Any]) -> LoadResult:
    document = {"apiVersion": "reconciler/v1", "kind": "Network", "metadata": {"name": "n"},
                "spec": raw}  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "n.yaml").write_text(yaml.safe_dump(document))
        return load_directory(root)


def spec_of(raw: dict[str, Any]) -> NetworkSpec:
    """A manifest through the whole loader (schema, then model)."""
    result = _load(raw)
    assert not result.problems, [str(p) for p in result.problems]
    built = result.manifests[0].spec
    assert isinstance(built, NetworkSpec)
    return built


def problems_of(raw: dict[str, Any]) -> str:
    """What the loader says of a bad manifest: file:line, field path, message, fix."""
    result = _load(raw)
    assert result.problems and not result.manifests
    return "\n".join(str(p) for p in result.problems)


@pytest.mark.parametrize(("raw", "golden"), [(DUALSTACK, "network-dualstack.xml"),
                                             (MACVTAP, "network-macvtap.xml"),
                                             (HOSTDEV, "network-hostdev.xml"),
                                             (NAT, "network-nat-ranges.xml")])  # fmt: skip
def test_render_golden_and_read_back(raw: dict[str, Any], golden: str) -> None:
    spec = spec_of(raw)
    xml = network.render("rctest-vocab", spec)
    assert_golden(xml, golden)
    # render, observe and project agree; export's full read gives the same values
    assert not diff(network.project(spec), network.observe(xml, declared=spec.declared))
    full = network.observe(xml, declared=None)
    assert {k: v for k, v in network.project(spec).items() if v is not None}.items() <= {
        k: v for k, v in full.items() if v is not None}.items()  # fmt: skip


def test_modes_read_back() -> None:
    assert network.observe(network.render("m", spec_of(MACVTAP)))["mode"] == "macvtap"
    assert network.observe(network.render("h", spec_of(HOSTDEV)))["mode"] == "hostdev"
    # forward mode bridge with a pool of NICs and no <bridge> of its own is macvtap
    xml = "<network><name>m</name><forward mode='bridge'><interface dev='eth1'/></forward></network>"
    assert network.observe(xml)["mode"] == "macvtap"
    # ... with a <bridge> it is a host bridge, as before
    xml = "<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>"
    assert network.observe(xml)["mode"] == "bridge"


def test_an_old_manifest_keeps_every_new_section() -> None:
    """No new field named: nothing declared, the patch changes nothing, nothing to plan."""
    assert LAB6.declared == frozenset()
    patched = network.patch(HANDMADE, LAB6)
    assert _canon(patched) == _canon(HANDMADE)
    assert not diff(network.project(LAB6), network.observe(HANDMADE, bridge_declared=False,
                                                           declared=LAB6.declared))  # fmt: skip


def test_the_ipv6_ip_is_ipv6_never_the_ipv4_range() -> None:
    """The old bug: an IPv6 <ip> with a DHCP range (listed first) was read as the IPv4
    range, export failed and a plan named ipv4.dhcp.* for an IPv6 change. Now a change of
    the DHCPv6 range is ipv6.dhcp.*, and the IPv4 values stay the IPv4 <ip>'s."""
    spec = dataclasses.replace(LAB6, ipv6=spec_of({
        "mode": "isolated", "ipv6": {"address": "fd00:77::1", "prefix": 64, "dhcp": {
            "start": "fd00:77::100", "end": "fd00:77::2ff"}}}).ipv6,
        declared=frozenset({"ipv6"}))  # fmt: skip
    changes = diff(network.project(spec),
                   network.observe(HANDMADE, bridge_declared=False, declared=spec.declared))
    assert [(c.path, c.old, c.new) for c in changes] == [
        ("ipv6.dhcp.end", "fd00:77::1ff", "fd00:77::2ff")]
    patched = etree.fromstring(network.patch(HANDMADE, spec).encode())
    assert patched.find("ip[@family='ipv6']/dhcp/range").get("end") == "fd00:77::2ff"  # type: ignore[union-attr]
    assert patched.find("ip[@address='10.77.0.1']/dhcp/range").get("end") == "10.77.0.200"  # type: ignore[union-attr]


def test_named_sections_are_made_exact() -> None:
    spec = spec_of({**DUALSTACK, "routes": [], "dns": {"txt": [], "forwarders": []},
                    "portgroups": [{"name": "engineering"}], "ipv6": None})  # fmt: skip
    root = etree.fromstring(network.patch(HANDMADE, spec).encode())
    assert root.findall("route") == [] and root.find("ip[@family='ipv6']") is None
    assert root.findall("dns/txt") == [] and root.findall("dns/forwarder") == []
    assert [s.get("service") for s in root.findall("dns/srv")] == ["name"]  # srv not named
    group = root.find("portgroup")
    assert group is not None and group.get("default") is None and group.find("bandwidth") is None
    ranges = [(r.get("start"), r.get("end")) for r in root.findall("ip/dhcp/range")]
    assert ranges == [("10.91.0.100", "10.91.0.149"), ("10.91.0.200", "10.91.0.249")]
    assert root.find("ip/tftp") is not None  # what no field says stays


def test_patch_then_observe_has_no_difference() -> None:
    for raw in (DUALSTACK, MACVTAP, HOSTDEV, NAT):
        spec = spec_of(raw)
        patched = network.patch(HANDMADE, spec)
        assert not diff(network.project(spec), network.observe(
            patched, bridge_declared=spec.bridge is not None, declared=spec.declared)), raw


def test_live_updates_go_to_the_ip_of_their_family() -> None:
    old = spec_of(DUALSTACK)
    raw = {**DUALSTACK, "ipv6": {**DUALSTACK["ipv6"], "dhcp": {  # type: ignore[dict-item]
        "start": "fd00:91::100", "end": "fd00:91::1ff",
        "hosts": [{"name": "db", "ip": "fd00:91::12"}]}},
        "dns": {**DUALSTACK["dns"], "txt": [{"name": "motd", "value": "bye"}]},  # type: ignore[dict-item]
        "portgroups": [{"name": "sales", "default": True}],
        "routes": []}  # fmt: skip
    new = spec_of(raw)
    live_xml = network.render("n", old)
    steps, pending = _network_live_updates(
        network.project(new), network.observe(live_xml, declared=new.declared),
        lambda: network.render("n", new), live_xml)
    updates = [(s.command, s.section, s.path, s.index) for s in steps
               if isinstance(s, NetUpdate)]  # fmt: skip
    six = network.dhcp_parent_index(live_xml, "ipv6")
    assert six == 1 and network.dhcp_parent_index(live_xml) == 0
    assert ("delete", "ip-dhcp-host", "ipv6.dhcp.hosts[0:3:0:1:52:54:0:0:91:1]", six) in updates
    assert ("delete", "ip-dhcp-host", "ipv6.dhcp.hosts[db]", six) in updates
    assert ("add", "ip-dhcp-host", "ipv6.dhcp.hosts[db]", six) in updates
    assert ("add", "dns-txt", "dns.txt[motd]", None) in updates
    assert ("delete", "portgroup", "portgroups[engineering]", None) in updates
    assert ("add", "portgroup", "portgroups[sales]", None) in updates
    # routes cannot change live: they wait for a restart
    assert {c.path.split("[")[0] for c in pending} == {"routes"}
    added = next(s for s in steps if isinstance(s, NetUpdate) and s.command == "add"
                 and s.path == "ipv6.dhcp.hosts[db]")  # fmt: skip
    assert added.xml == '<host name="db" ip="fd00:91::12"/>'


def test_a_dhcpv6_entry_waits_when_the_running_network_has_no_ipv6() -> None:
    old = spec_of({"mode": "isolated", "ipv4": {"address": "10.93.0.1", "prefix": 24}})
    new = spec_of({"mode": "isolated", "ipv6": {"address": "fd00:93::1", "prefix": 64, "dhcp": {
        "start": "fd00:93::100", "end": "fd00:93::1ff", "hosts": [{"name": "a", "ip": "fd00:93::5"}]}}})
    live_xml = network.render("n", old)
    steps, pending = _network_live_updates(
        network.project(new), network.observe(live_xml, declared=new.declared),
        lambda: network.render("n", new), live_xml)
    assert steps == [] and "ipv6.dhcp.hosts[a].ip" in {c.path for c in pending}


@pytest.mark.parametrize(("raw", "message"), [
    ({"mode": "isolated", "ipv4": {"address": "10.9.0.1", "prefix": 24, "dhcp": {
        "start": "10.9.0.10", "end": "10.9.0.20", "ranges": [{"start": "10.9.0.30", "end": "10.9.0.40"}]}}},
     "spec.ipv4.dhcp.ranges: dhcp has both 'start'/'end' and 'ranges'"),
    ({"mode": "isolated", "ipv4": {"address": "10.9.0.1", "prefix": 24, "dhcp": {
        "ranges": [{"start": "10.9.0.30", "end": "10.9.1.40"}]}}},
     "spec.ipv4.dhcp.ranges[0].end: 10.9.1.40 is outside the network 10.9.0.0/24"),
    ({"mode": "isolated", "ipv6": {"address": "fd00::1", "prefix": 48, "dhcp": {
        "start": "fd00::10", "end": "fd00::20"}}}, "DHCPv6 needs prefix 64"),
    ({"mode": "isolated", "ipv6": {"address": "fd00::1", "prefix": 64, "dhcp": {
        "start": "fd00::10", "end": "fd00::20", "hosts": [{"ip": "fd00::5"}]}}},
     "a DHCPv6 host needs 'id' (its DUID) or 'name'"),
    ({"mode": "isolated", "routes": [{"address": "192.0.2.0", "prefix": 24, "gateway": "fd00::2"}]},
     "gateway fd00::2 is not IPv4"),
    ({"mode": "isolated", "portgroups": [{"name": "a", "vlan": [10]}]},
     "libvirt takes a portgroup vlan only on a hostdev network"),
    ({"mode": "isolated", "portgroups": [{"name": "a", "default": True},
                                         {"name": "b", "default": True}]}, "more than one"),
    ({"mode": "nat", "ipv4": {"address": "10.9.0.1", "prefix": 24},
      "forward": {"interfaces": ["eth1"]}}, "mode nat has no device pool"),
    ({"mode": "macvtap", "forward": {}}, "mode macvtap needs forward.interfaces"),
    ({"mode": "macvtap", "forward": {"interfaces": ["eth1"]}, "ipv4": {
        "address": "10.9.0.1", "prefix": 24}}, "mode macvtap cannot have ipv4"),
    ({"mode": "hostdev", "forward": {"interfaces": ["eth1"]}}, "mode hostdev needs forward.devices"),
    ({"mode": "isolated", "nat": {"ports": {"start": 1, "end": 2}}}, "mode isolated has no NAT"),
    ({"mode": "nat", "ipv4": {"address": "10.9.0.1", "prefix": 24},
      "nat": {"ports": {"start": 3000, "end": 2000}}}, "port 2000 is below start 3000"),
    ({"mode": "isolated", "dns": {"forwarders": [{}]}}, "a forwarder needs 'addr', 'domain'"),
])  # fmt: skip
def test_user_errors_name_the_field(raw: dict[str, Any], message: str) -> None:
    assert message in problems_of(raw)


def test_schema_refuses_what_libvirt_cannot_hold() -> None:
    assert "not a PCI address" in problems_of(
        {"mode": "hostdev", "forward": {"devices": ["3:10.0"]}})
    assert "not a DUID" in problems_of({"mode": "isolated", "ipv6": {
        "address": "fd00::1", "prefix": 64, "dhcp": {"start": "fd00::10", "end": "fd00::20",
                                                     "hosts": [{"id": "xyz", "ip": "fd00::5"}]}}})


def test_preflight_names_a_macvtap_interface_the_host_lacks() -> None:
    text = ("apiVersion: reconciler/v1\nkind: Network\nmetadata:\n  name: mv\nspec:\n"
            "  mode: macvtap\n  forward:\n    interfaces: [eth0, eth9]\n")  # fmt: skip
    (found,) = problems(text)
    assert found == (f"m/vm.yaml:{line_of(text, 'interfaces')}:24: spec.forward.interfaces[1]: "
                     "no network interface eth9 on this host; did you mean eth0? name one of "
                     "`ip link`'s interfaces")  # fmt: skip
    assert problems(text.replace("eth9", "lo")) == []
    unknown = dataclasses.replace(FACTS, interfaces=None)
    assert problems(text, facts=unknown) == []
    assert wanted(manifests(text)).bridges


def test_a_macvtap_pool_changes_live_one_nic_at_a_time() -> None:
    old = spec_of(MACVTAP)
    new = spec_of({**MACVTAP, "forward": {"mode": "vepa", "interfaces": ["eth2", "eth3"]}})
    live_xml = network.render("m", old)
    desired = network.project(new)
    live = network.observe(live_xml, declared=new.declared)
    assert diff(desired, live)[0].path == "forward.interfaces"
    steps, pending = _network_live_updates(desired, live, lambda: network.render("m", new),
                                           live_xml)  # fmt: skip
    assert pending == []
    assert [(s.command, s.section, s.xml) for s in steps if isinstance(s, NetUpdate)] == [
        ("delete", "forward-interface", '<interface dev="eth1"/>'),
        ("add", "forward-interface", '<interface dev="eth3"/>')]
    # the pool has no order: the same NICs listed otherwise are no change
    same = spec_of({**MACVTAP, "forward": {"mode": "vepa", "interfaces": ["eth2", "eth1"]}})
    assert not diff(network.project(same), network.observe(live_xml, declared=same.declared))
    # the macvtap mode is not live
    vepa = spec_of({**MACVTAP, "forward": {"mode": "private", "interfaces": ["eth1", "eth2"]}})
    steps, pending = _network_live_updates(
        network.project(vepa), network.observe(live_xml, declared=vepa.declared),
        lambda: network.render("m", vepa), live_xml)
    assert steps == [] and [c.path for c in pending] == ["forward.mode"]


def test_the_plan_shows_forwarders_as_a_manifest_says_them() -> None:
    from reconciler.report import show_value

    shown = show_value("dns.forwarders", network.project(spec_of(DUALSTACK))["dns.forwarders"])
    assert shown == "[192.0.2.53, corp.example: 192.0.2.54, local.example: local]"


def test_nat_null_takes_the_ranges_away_and_leaving_nat_out_keeps_them() -> None:
    current = network.render("n", spec_of(NAT))
    cleared = spec_of({**NAT, "nat": None})
    root = etree.fromstring(network.patch(current, cleared).encode())
    forward = root.find("forward")
    assert forward is not None and forward.get("mode") == "nat" and forward.find("nat") is None
    kept = spec_of({k: v for k, v in NAT.items() if k != "nat"})
    assert _canon(network.patch(current, kept)) == _canon(current)
    assert [c.path for c in diff(network.project(cleared), network.observe(
        current, declared=cleared.declared))] == [
        "nat.addresses.end", "nat.addresses.start", "nat.ports.end", "nat.ports.start"]


def test_a_user_error_is_one_line_with_file_line_field_and_fix() -> None:
    found = problems_of({"mode": "isolated", "portgroups": [{"name": "a", "vlan": [10]}]})
    assert found.count("\n") == 0
    position, _, rest = found.partition(": spec.portgroups[0].vlan: ")
    assert position.rsplit(":", 2)[0].endswith("n.yaml") and position.rsplit(":", 2)[1].isdigit()
    assert rest == ("libvirt takes a portgroup vlan only on a hostdev network (not isolated); "
                    "tag the VLAN on the host bridge, or use mode: hostdev")  # fmt: skip
