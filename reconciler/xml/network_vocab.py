"""The Network vocabulary of issue 13 (formatnetwork), declared once for render, patch,
project and observe: IPv6 (``<ip family='ipv6'>`` with DHCPv6 ranges and hosts), the
exact set of DHCP ranges of either ``<ip>``, static ``<route>``s, ``<dns>`` forwarders,
SRV and TXT records and ``enable``, ``<portgroup>``s (default, VLAN tags, bandwidth),
the device pool of a macvtap or hostdev network (``<forward><interface dev=/>`` or
``<address type='pci'/>``) and the NAT address and port ranges.

Each section is managed only where the manifest names it (``NetworkSpec.declared``):
``managed_key`` says which projection keys a spec manages, so a manifest written before
these fields existed plans exactly as before and a redefine keeps the section as it is.

Change classes, measured with ``virsh net-update --live`` on libvirt 9.0: DHCP hosts
and ranges of the IPv4 and the IPv6 ``<ip>``, DNS TXT and SRV records and portgroups
(``LIVE_SECTIONS``) and a macvtap network's ``forward.interfaces`` (``forward-interface``)
are live; forwarders (no such update section), routes, the IPv6 address, ``dns.enable``,
the macvtap mode, a hostdev pool and NAT ranges need the network restarted.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import (
    Dhcp6Host,
    DhcpRange,
    DnsSrv,
    DnsTxt,
    NetworkSpec,
    Portgroup,
    Route,
)
from reconciler.xml._fields import (
    INT,
    YES_NO,
    Attr,
    ChangeClass,
    Device,
    Each,
    Element,
    Field,
    drop_attr,
    ensure,
    find,
    remove,
    xml_text,
)

IPV4 = "ip[@family?='ipv4']"
IPV6 = "ip[@family='ipv6']"
LIVE = ChangeClass.LIVE

# --- keys made of more than one attribute -----------------------------------------


@dataclass(frozen=True, slots=True)
class _HostKey:
    """A DHCPv6 host's identity: its DUID (``id``), else its ``name``. A DUID has colons,
    a host name never has."""

    def write(self, root: Element, value: Any) -> None:
        root.set("id" if ":" in str(value) else "name", xml_text(str(value), "host"))

    def clear(self, root: Element) -> None:
        drop_attr(root, "id")

    def read(self, root: Element) -> object:
        return root.get("id") or root.get("name")

    def canon(self, value: Any) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class _RouteKey:
    """A route's identity ``address/prefix`` (``netmask`` read as its prefix); an IPv6
    route gets ``family='ipv6'``."""

    def write(self, root: Element, value: Any) -> None:
        address, prefix = str(value).rsplit("/", 1)
        if ":" in address:
            root.set("family", "ipv6")
        root.set("address", xml_text(address, "address"))
        root.set("prefix", str(int(prefix)))

    def clear(self, root: Element) -> None:
        for name in ("address", "prefix", "netmask"):
            drop_attr(root, name)

    def read(self, root: Element) -> object:
        address = root.get("address")
        if address is None:
            return None
        prefix = root.get("prefix")
        if prefix is None and root.get("netmask") is not None:
            prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{root.get('netmask')}").prefixlen)
        return f"{address}/{prefix or (128 if ':' in address else 32)}"

    def canon(self, value: Any) -> object:
        return str(value)


_SRV_KEY = ("service", "protocol", "domain", "target", "port")


@dataclass(frozen=True, slots=True)
class _SrvKey:
    """An SRV record's identity: service/protocol/domain/target/port (``DnsSrv.key``)."""

    def write(self, root: Element, value: Any) -> None:
        for name, part in zip(_SRV_KEY, str(value).split("/"), strict=True):
            if part:
                root.set(name, xml_text(part, name))

    def clear(self, root: Element) -> None:
        for name in _SRV_KEY:
            drop_attr(root, name)

    def read(self, root: Element) -> object:
        if root.get("service") is None:
            return None
        return "/".join(root.get(name, "") for name in _SRV_KEY)

    def canon(self, value: Any) -> object:
        return str(value)


_MACVTAP_MODES = ("bridge", "private", "vepa", "passthrough")


@dataclass(frozen=True, slots=True)
class _MacvtapMode:
    """``forward.mode``: the ``<forward mode>`` of a macvtap network (bridge, private,
    vepa, passthrough); nat, route, hostdev or a host bridge's are ``mode``'s, not this."""

    def write(self, root: Element, value: Any) -> None:
        ensure(root, "forward").set("mode", xml_text(str(value), "mode"))

    def clear(self, root: Element) -> None:
        forward = root.find("forward")
        if forward is not None and self.read(root) is not None:
            drop_attr(forward, "mode")

    def read(self, root: Element) -> object:
        forward = root.find("forward")
        mode = None if forward is None else forward.get("mode")
        if mode not in _MACVTAP_MODES or (mode == "bridge" and root.find("bridge") is not None):
            return None
        return mode

    def canon(self, value: Any) -> object:
        return str(value)


@dataclass(frozen=True, slots=True)
class _Default:
    """A portgroup's ``default='yes'``; absent (or ``no``) reads as False."""

    def write(self, root: Element, value: Any) -> None:
        if value:
            root.set("default", "yes")

    def clear(self, root: Element) -> None:
        drop_attr(root, "default")

    def read(self, root: Element) -> object:
        return root.get("default") == "yes"

    def canon(self, value: Any) -> object:
        return bool(value)


@dataclass(frozen=True, slots=True)
class _Forwarders:
    """``dns.forwarders``: every ``<dns><forwarder addr= domain=/>``, as (addr, domain)."""

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        dns = ensure(root, "dns")
        for fwd in value:
            attrs = {k: xml_text(v, k) for k, v in (("addr", fwd.addr), ("domain", fwd.domain))
                     if v is not None}  # fmt: skip
            element = ET.Element("forwarder", attrs)
            dns.insert(0 if not len(dns) else _after_forwarders(dns), element)

    def clear(self, root: Element) -> None:
        for fwd in root.findall("dns/forwarder"):
            remove(fwd)

    def read(self, root: Element) -> object:
        return tuple(forwarder_text(f.get("addr"), f.get("domain"))
                     for f in root.findall("dns/forwarder"))  # fmt: skip

    def canon(self, value: Any) -> object:
        return tuple(forwarder_text(f.addr, f.domain) for f in value or ())


def forwarder_text(addr: str | None, domain: str | None) -> str:
    """A forwarder as the plan shows it: ``192.0.2.53``, ``corp.example: 192.0.2.54``
    (that domain only), ``corp.example: local`` (answered locally only)."""
    if domain is None:
        return addr or ""
    return f"{domain}: {addr or 'local'}"


def forwarder_of(text: str) -> tuple[str | None, str | None]:
    """``forwarder_text`` read back: (addr, domain)."""
    domain, sep, addr = text.partition(": ")
    if not sep:
        return text, None
    return (None if addr == "local" else addr), domain


def _after_forwarders(dns: Element) -> int:
    """Where the next forwarder goes: after the last one (libvirt writes them first)."""
    last = -1
    for i, child in enumerate(dns):
        if child.tag == "forwarder":
            last = i
    return last + 1


_PCI = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


@dataclass(frozen=True, slots=True)
class _PciDevices:
    """``forward.devices``: the ``<forward><address type='pci' .../>`` pool of a hostdev
    network, as ``0000:03:10.1`` strings."""

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        forward = ensure(root, "forward")
        for text in value:
            match = _PCI.match(str(text).lower())
            if match is None:
                raise ValueError(f"{text!r} is not a PCI address (0000:03:10.1)")
            domain, bus, slot, function = match.groups()
            ET.SubElement(forward, "address", {"type": "pci", "domain": f"0x{domain}",
                                               "bus": f"0x{bus}", "slot": f"0x{slot}",
                                               "function": f"0x{function}"})  # fmt: skip

    def clear(self, root: Element) -> None:
        for address in root.findall("forward/address"):
            remove(address)

    def read(self, root: Element) -> object:
        out = []
        for a in root.findall("forward/address[@type='pci']"):
            try:
                parts = [int(a.get(n, "0"), 16) for n in ("domain", "bus", "slot", "function")]
            except ValueError:
                continue
            out.append("{:04x}:{:02x}:{:02x}.{:x}".format(*parts))
        return tuple(out)

    def canon(self, value: Any) -> object:
        return tuple(str(v).lower() for v in value or ())


# --- getters ----------------------------------------------------------------------------


def _v6(spec: NetworkSpec, attr: str) -> object:
    return None if spec.ipv6 is None else getattr(spec.ipv6, attr)


def _v6_dhcp(spec: NetworkSpec, attr: str) -> object:
    if spec.ipv6 is None or spec.ipv6.dhcp is None:
        return None
    return getattr(spec.ipv6.dhcp, attr)


def _fwd(spec: NetworkSpec, attr: str) -> object:
    if spec.forward is None:
        return None
    value = getattr(spec.forward, attr)
    return value if value != () else None


def _nat(spec: NetworkSpec, attr: str) -> object:
    return None if spec.nat is None else getattr(spec.nat, attr)


_RANGE6 = f"{IPV6}/dhcp/range"
_NAT_ADDR = "forward/nat/address"
_NAT_PORT = "forward/nat/port"


def _pool(value: object) -> object:
    """A macvtap network's NICs: a pool libvirt picks a free one from, so in no order."""
    return tuple(sorted(str(v) for v in value)) if isinstance(value, tuple) and value else None


def forward_interface_xml(dev: str) -> str:
    """``<interface dev=.../>`` as ``virNetworkUpdate`` takes it for ``forward-interface``."""
    return ET.tostring(ET.Element("interface", {"dev": xml_text(dev, "interface")}),
                       encoding="unicode")  # fmt: skip


def _none_if_empty(value: object) -> object:
    """A list the XML has no element of reads as absent, as the manifest leaving it out."""
    return value if value else None

FIELDS: tuple[Field[NetworkSpec], ...] = (
    Field("ipv6.address", lambda s: _v6(s, "address"), Attr(IPV6, "address")),
    Field("ipv6.prefix", lambda s: _v6(s, "prefix"), Attr(IPV6, "prefix", INT)),
    Field("ipv6.dhcp.start", lambda s: _v6_dhcp(s, "start"), Attr(_RANGE6, "start")),
    Field("ipv6.dhcp.end", lambda s: _v6_dhcp(s, "end"), Attr(_RANGE6, "end")),
    Field("dns.forwarders", lambda s: s.dns.forwarders, _Forwarders(), show=_none_if_empty),
    Field("dns.enable", lambda s: s.dns.enable, Attr("dns", "enable", YES_NO)),
    Field("forward.mode", lambda s: _fwd(s, "mode"), _MacvtapMode()),
    Field("forward.managed", lambda s: _fwd(s, "managed"), Attr("forward", "managed", YES_NO)),
    Field("forward.interfaces", lambda s: _fwd(s, "interfaces"),
          Each("forward", "interface", "dev"), show=_pool, change=LIVE),
    Field("forward.devices", lambda s: _fwd(s, "devices"), _PciDevices(), show=_none_if_empty),
    Field("nat.addresses.start", lambda s: _nat(s, "address_start"), Attr(_NAT_ADDR, "start")),
    Field("nat.addresses.end", lambda s: _nat(s, "address_end"), Attr(_NAT_ADDR, "end")),
    Field("nat.ports.start", lambda s: _nat(s, "port_start"), Attr(_NAT_PORT, "start", INT)),
    Field("nat.ports.end", lambda s: _nat(s, "port_end"), Attr(_NAT_PORT, "end", INT)),
)  # fmt: skip


def _ranges(family: str) -> Device[DhcpRange]:
    return Device(
        section=f"{family}.dhcp.ranges",
        parent=f"{IPV4 if family == 'ipv4' else IPV6}/dhcp",
        tag="range",
        key=Attr("", "start"),
        key_of=lambda r: r.start,
        fields=(Field("end", lambda r: r.end, Attr("", "end"), change=LIVE),),
        change=LIVE,
    )


RANGES4 = _ranges("ipv4")
RANGES6 = _ranges("ipv6")

DHCP6_HOSTS: Device[Dhcp6Host] = Device(
    section="ipv6.dhcp.hosts",
    parent=f"{IPV6}/dhcp",
    tag="host",
    key=_HostKey(),
    key_of=lambda host: host.key,
    fields=(
        Field("ip", lambda host: host.ip, Attr("", "ip"), change=LIVE),
        Field("name", lambda host: host.name, Attr("", "name"), change=LIVE),
    ),
    change=LIVE,
)

ROUTES: Device[Route] = Device(
    section="routes",
    parent="",
    tag="route",
    key=_RouteKey(),
    key_of=lambda r: f"{r.address}/{r.prefix}",
    fields=(
        Field("gateway", lambda r: r.gateway, Attr("", "gateway")),
        Field("metric", lambda r: r.metric, Attr("", "metric", INT)),
    ),
)

DNS_TXT: Device[DnsTxt] = Device(
    section="dns.txt",
    parent="dns",
    tag="txt",
    key=Attr("", "name"),
    key_of=lambda t: t.name,
    fields=(Field("value", lambda t: t.value, Attr("", "value"), change=LIVE),),
    change=LIVE,
)

DNS_SRV: Device[DnsSrv] = Device(
    section="dns.srv",
    parent="dns",
    tag="srv",
    key=_SrvKey(),
    key_of=lambda r: r.key,
    fields=(
        Field("priority", lambda r: r.priority, Attr("", "priority", INT), change=LIVE),
        Field("weight", lambda r: r.weight, Attr("", "weight", INT), change=LIVE),
    ),
    change=LIVE,
)


def _rate(direction: str, attr: str) -> Field[Portgroup]:
    def get(group: Portgroup) -> object:
        rate = getattr(group, direction)
        return None if rate is None else getattr(rate, attr)

    return Field(f"bandwidth.{direction}.{attr}", get,
                 Attr(f"bandwidth/{direction}", attr, INT), change=LIVE)  # fmt: skip


PORTGROUPS: Device[Portgroup] = Device(
    section="portgroups",
    parent="",
    tag="portgroup",
    key=Attr("", "name"),
    key_of=lambda group: group.name,
    fields=(
        Field("default", lambda g: g.default, _Default(), change=LIVE),
        Field("vlan", lambda g: g.vlan or None, Each("vlan", "tag", "id", INT), change=LIVE,
              show=_none_if_empty),
        *(_rate(d, a) for d in ("inbound", "outbound") for a in ("average", "peak", "burst")),
    ),
    order=("vlan", "bandwidth"),
    change=LIVE,
)

DEVICES: tuple[Device[Any], ...] = (RANGES4, RANGES6, DHCP6_HOSTS, ROUTES, DNS_TXT, DNS_SRV,
                                    PORTGROUPS)  # fmt: skip

LIVE_SECTIONS: dict[str, tuple[str, str | None]] = {
    "ipv4.dhcp.hosts": ("ip-dhcp-host", "ipv4"),
    "ipv6.dhcp.hosts": ("ip-dhcp-host", "ipv6"),
    "ipv4.dhcp.ranges": ("ip-dhcp-range", "ipv4"),
    "ipv6.dhcp.ranges": ("ip-dhcp-range", "ipv6"),
    "dnsHosts": ("dns-host", None),
    "dns.txt": ("dns-txt", None),
    "dns.srv": ("dns-srv", None),
    "portgroups": ("portgroup", None),
}
"""Entry sections ``virNetworkUpdate`` changes on a running network (measured on
libvirt 9.0): section -> (its ``virsh net-update`` section, the ``<ip>`` family it
belongs to, whose index the update names; None: not under an ``<ip>``)."""


def items(spec: NetworkSpec) -> dict[str, tuple[Any, ...]]:
    """Each device section's desired entries (empty where the manifest names none)."""
    v6 = spec.ipv6.dhcp if spec.ipv6 is not None else None
    v4 = spec.ipv4.dhcp if spec.ipv4 is not None else None
    return {
        RANGES4.section: (v4.ranges or ()) if v4 is not None else (),
        RANGES6.section: (v6.ranges or ()) if v6 is not None else (),
        DHCP6_HOSTS.section: v6.hosts if v6 is not None else (),
        ROUTES.section: spec.routes or (),
        DNS_TXT.section: spec.dns.txt or (),
        DNS_SRV.section: spec.dns.srv or (),
        PORTGROUPS.section: spec.portgroups or (),
    }


# --- which keys a spec manages ------------------------------------------------------------

_OPTIONAL = (
    ("ipv4.dhcp.ranges[", "ipv4.dhcp.ranges"),
    ("ipv6.dhcp.ranges[", "ipv6.dhcp.ranges"),
    ("ipv6.", "ipv6"),
    ("routes[", "routes"),
    ("dns.forwarders", "dns.forwarders"),
    ("dns.enable", "dns.enable"),
    ("dns.txt[", "dns.txt"),
    ("dns.srv[", "dns.srv"),
    ("portgroups[", "portgroups"),
    ("forward.", "forward"),
    ("nat.", "nat"),
)


@functools.lru_cache(maxsize=8192)  # keys recur at every pass; entries carry identities
def managed_key(key: str, declared: frozenset[str]) -> bool:
    """Whether the projection ``key`` is managed by a spec naming ``declared``: the
    issue-13 sections only when named; ``ipv4.dhcp.start``/``end`` (the first range)
    not when the manifest names the exact ``ranges`` instead. Every other key: yes."""
    for family in ("ipv4", "ipv6"):
        first = key in (f"{family}.dhcp.start", f"{family}.dhcp.end")
        if first and f"{family}.dhcp.ranges" in declared:
            return False
    for prefix, section in _OPTIONAL:
        if key.startswith(prefix):
            return section in declared
    return True


@functools.cache
def declared_fields(declared: frozenset[str]) -> tuple[Field[NetworkSpec], ...]:
    """The issue-13 scalar fields a spec naming ``declared`` manages."""
    return tuple(f for f in FIELDS if managed_key(f.path, declared))


@functools.cache
def declared_devices(declared: frozenset[str]) -> tuple[Device[Any], ...]:
    """The device sections a spec naming ``declared`` manages."""
    return tuple(d for d in DEVICES if managed_key(d.section + "[", declared))


def ip_index(root: Element, family: str) -> int:
    """The index among the ``<ip>`` elements of the first one of ``family`` (``ipv4``:
    also the ``<ip>`` without a family), as ``virNetworkUpdate`` takes it; -1: none."""
    path = IPV4 if family == "ipv4" else IPV6
    wanted = find(root, path)
    for index, ip in enumerate(root.findall("ip")):
        if ip is wanted:
            return index
    return -1
