"""An IPv6 (or route) address the schema's loose pattern lets through but that is no
address (``10.1.2.3`` as ipv6, ``1:2``, ``10.1.2.300`` in a route) is one clear
problem at its field, never a traceback (``ipaddress`` raising in the loader)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.manifests import load_directory
from tests.unit.conftest import WriteFiles

NETWORK = """\
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: isolated
  bridge: virbr-lab
"""


@pytest.mark.parametrize(("extra", "field"), [
    ('  ipv6: {address: "10.1.2.3", prefix: 64}\n', "spec.ipv6.address"),
    ('  ipv6: {address: "1:2", prefix: 64}\n', "spec.ipv6.address"),
    ('  ipv6: {address: "fd00::1", prefix: 64, dhcp: {start: "fd00::10", end: "fd00:::9"}}\n',
     "spec.ipv6.dhcp.end"),
    ('  ipv6: {address: "fd00::1", prefix: 64, dhcp: {ranges: [{start: "10.0.0.1", '
     'end: "fd00::20"}]}}\n', "spec.ipv6.dhcp.ranges[0].start"),
    ('  ipv6: {address: "fd00::1", prefix: 64, dhcp: {start: "fd00::10", end: "fd00::20", '
     'hosts: [{name: web, ip: "1.2.3.4"}]}}\n', "spec.ipv6.dhcp.hosts[0].ip"),
    ('  routes: [{address: "10.1.2.300", prefix: 24, gateway: "10.1.2.1"}]\n',
     "spec.routes[0].address"),
    ('  routes: [{address: "fd00:9::", prefix: 64, gateway: "::::"}]\n',
     "spec.routes[0].gateway"),
])  # fmt: skip
def test_a_string_that_is_no_address_is_a_problem_at_its_field(
    write: WriteFiles, extra: str, field: str
) -> None:
    result = load_directory(write(**{"net.yaml": NETWORK + extra}))
    found = [str(p) for p in result.problems]
    assert len(found) == 1 and field in found[0] and "address" in found[0], found


def _isolated(name: str, n: int, ipv6: str) -> str:
    return (f"apiVersion: reconciler/v1\nkind: Network\nmetadata: {{name: {name}}}\n"
            f"spec:\n  mode: isolated\n  bridge: virbr-t{n}\n  ipv6: {ipv6}\n")  # fmt: skip


def test_two_networks_with_overlapping_ipv6_subnets_are_refused(write: WriteFiles) -> None:
    """As two IPv4 subnets are: the host's routes would be split between two bridges."""
    text = "---\n".join([
        _isolated("a", 1, '{address: "fd00:5::1", prefix: 64}'),
        _isolated("b", 2, '{address: "fd00:5:0:0:1::1", prefix: 80}'),
        _isolated("c", 3, '{address: "fd00:6::1", prefix: 64}'),
    ])  # fmt: skip
    found = [str(p) for p in load_directory(write(**{"nets.yaml": text})).problems]
    assert len(found) == 1, found
    assert "spec.ipv6" in found[0] and "fd00:5::/64" in found[0] and "'a'" in found[0]


def test_ipv6_addresses_are_compared_as_libvirt_writes_them(write: WriteFiles) -> None:
    """``FD00:0bad:0::1`` is libvirt's ``fd00:bad::1``: written otherwise, every plan
    showed ipv6.address changing and a restart pending that never settled."""
    extra = ('  ipv6: {address: "FD00:0bad:0::1", prefix: 64, dhcp: {ranges: [{start: '
             '"FD00:BAD::0100", end: "fd00:bad:0:0::1ff"}], hosts: [{name: web, ip: '
             '"FD00:bad::0010"}]}}\n'
             '  routes: [{address: "FD00:BEEF:0::", prefix: 64, gateway: "FD00:BAD::2"}]\n'
             '  dns: {forwarders: [{addr: "0:0:0:0:0:0:0:1"}]}\n')  # fmt: skip
    result = load_directory(write(**{"net.yaml": NETWORK + extra}))
    assert not result.problems
    [m] = result.manifests
    spec: Any = m.spec
    assert spec.ipv6.address == "fd00:bad::1"
    assert (spec.ipv6.dhcp.ranges[0].start, spec.ipv6.dhcp.ranges[0].end) == (
        "fd00:bad::100", "fd00:bad::1ff")
    assert spec.ipv6.dhcp.hosts[0].ip == "fd00:bad::10"
    assert (spec.routes[0].address, spec.routes[0].gateway) == ("fd00:beef::", "fd00:bad::2")
    assert spec.dns.forwarders[0].addr == "::1"


def test_two_dhcpv6_hosts_leased_one_address_are_refused(write: WriteFiles) -> None:
    extra = ('  ipv6: {address: "fd00::1", prefix: 64, dhcp: {start: "fd00::100", end: '
             '"fd00::1ff", hosts: [{name: a, ip: "fd00::10"}, {name: b, ip: "FD00::0010"}]}}\n')
    found = [str(p) for p in load_directory(write(**{"net.yaml": NETWORK + extra})).problems]
    assert len(found) == 1 and "spec.ipv6.dhcp.hosts[1]" in found[0], found
    assert "fd00::10" in found[0]
