"""reconciler.xml.network: golden XML, round trip, libvirt's own additions ignored."""

from __future__ import annotations

import pytest

from reconciler.model import Dhcp, DhcpHost, DnsHost, Ipv4, NetworkSpec
from reconciler.xml import network

from .xml_support import assert_golden, manifest, read_data

LAB = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: nat
  bridge: virbr10
  mtu: 1500
  domain: lab.local
  ipv4:
    address: 10.100.0.1
    prefix: 24
    dhcp:
      start: 10.100.0.100
      end: 10.100.0.200
      hosts:
        - {mac: "52:54:00:12:34:80", ip: 10.100.0.10, name: win7}
  dnsHosts:
    - {ip: 10.100.0.10, names: [win7.lab.local]}
  state: active
  autostart: true
"""
ISOLATED = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: iso}
spec:
  mode: isolated
  ipv4: {address: 192.168.77.1, prefix: 24, dhcp: {start: 192.168.77.10, end: 192.168.77.20}}
"""
ROUTED = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: routed}
spec:
  mode: route
  ipv4:
    address: 10.9.0.1
    prefix: 16
    dhcp:
      start: 10.9.1.1
      end: 10.9.1.254
      hosts:
        - {mac: "52:54:00:AA:BB:CC", ip: 10.9.0.20}
        - {mac: "52:54:00:aa:bb:cd", ip: 10.9.0.21, name: db}
  dnsHosts:
    - {ip: 10.9.0.20, names: [app.example, app]}
    - {ip: 10.9.0.21, names: [db.example]}
"""
BRIDGED = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: host-br0}
spec: {mode: bridge, bridge: br0}
"""


def _spec(text: str) -> NetworkSpec:
    spec = manifest(text).spec
    assert isinstance(spec, NetworkSpec)
    return spec


@pytest.mark.parametrize(
    ("text", "golden"),
    [(LAB, "network-lab.xml"), (ISOLATED, "network-isolated.xml"),
     (ROUTED, "network-routed.xml"), (BRIDGED, "network-bridge.xml")],
)
def test_render_golden(text: str, golden: str) -> None:
    m = manifest(text)
    assert isinstance(m.spec, NetworkSpec)
    assert_golden(network.render(m.name, m.spec), golden)


@pytest.mark.parametrize("text", [LAB, ISOLATED, ROUTED, BRIDGED])
def test_round_trip(text: str) -> None:
    spec = _spec(text)
    observed = network.observe(network.render("n", spec), bridge_declared=spec.bridge is not None)
    assert observed == network.project(spec)


def test_keys_are_identities() -> None:
    projected = network.project(_spec(ROUTED))
    assert projected["ipv4.dhcp.hosts[52:54:00:aa:bb:cc].ip"] == "10.9.0.20"
    assert projected["ipv4.dhcp.hosts[52:54:00:aa:bb:cc].name"] is None
    assert projected["dnsHosts[10.9.0.20].names"] == ("app.example", "app")
    assert projected["mode"] == "route"


def test_host_order_does_not_matter() -> None:
    spec = _spec(ROUTED)
    assert spec.ipv4 is not None and spec.ipv4.dhcp is not None
    dhcp = spec.ipv4.dhcp
    swapped = NetworkSpec(
        mode=spec.mode,
        ipv4=Ipv4(spec.ipv4.address, spec.ipv4.prefix, Dhcp(dhcp.start, dhcp.end, dhcp.hosts[::-1])),
        dns_hosts=spec.dns_hosts[::-1],
    )
    assert network.observe(network.render("n", swapped), bridge_declared=False) == (
        network.project(spec))


def test_values_are_escaped() -> None:
    spec = NetworkSpec(mode="isolated", domain="a<b>&'\"c",
                       dns_hosts=(DnsHost(ip="10.0.0.2", names=("x&y", "<z>")),))
    xml = network.render("n&<'\">", spec, uuid="e0981e9c-4482-41f0-bd8c-b98825a72214")
    assert "<name>n&amp;&lt;'\"&gt;</name>" in xml
    assert network.observe(xml, bridge_declared=False) == network.project(spec)


def test_observe_live_nat_network() -> None:
    # net.XMLDesc(0) of the running network: uuid, mac, stp, NAT port range added.
    assert network.observe(read_data("network-lab-libvirt.xml")) == network.project(_spec(LAB))


def test_observe_ignores_libvirt_bridge_name_and_reads_netmask() -> None:
    # Defined without a bridge (libvirt picked virbr1), with netmask instead of prefix.
    observed = network.observe(read_data("network-isolated-libvirt.xml"), bridge_declared=False)
    assert observed == network.project(_spec(ISOLATED))
    declared = network.observe(read_data("network-isolated-libvirt.xml"))
    assert declared["bridge"] == "virbr1"


def test_dhcp_host_mac_is_canonical() -> None:
    host = DhcpHost(mac="52:54:00:AB:CD:EF", ip="10.0.0.5")
    assert network.DHCP_HOSTS.project([host]) == {
        "ipv4.dhcp.hosts[52:54:00:ab:cd:ef].ip": "10.0.0.5",
        "ipv4.dhcp.hosts[52:54:00:ab:cd:ef].name": None,
    }
