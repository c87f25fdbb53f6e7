"""Network XML (``<network>``): render, patch, project, observe.

The planner renders this for ``networkDefineXML`` on creation, patches the
current definition on a redefine (``patch``), and compares ``project(spec)`` with
``observe(net.XMLDesc(0))``. Static DHCP leases are keyed by MAC
(``ipv4.dhcp.hosts[52:54:00:12:34:80].ip``) and DNS records by IP
(``dnsHosts[10.100.0.10].names``), so the planner can turn a difference into
one ``net-update`` per entry.

What libvirt adds and ``observe`` ignores: ``<uuid>``, the bridge's
``<mac>``, ``stp``/``delay``, the NAT port range of a running network and,
when the manifest names no bridge, the ``virbrN`` libvirt picked (the caller
says so with ``bridge_declared=False``). An ``<ip>`` written with a
``netmask`` reads as the same prefix. Only the IPv4 ``<ip>`` (``family='ipv4'``
or no family) is managed, its first DHCP range and its DHCP hosts; an IPv6
``<ip>`` is never read as ``ipv4`` and is kept by a redefine (``patch``, which
keeps whatever the manifest does not say). Active/inactive and autostart are
not in the XML.

The ownership record (``NetworkOwnership``) lives in the network's
``<metadata>`` in the tool's own namespace, as a domain's does: libvirt 9.0
keeps a network's ``<metadata>`` (only the API that edits it alone,
``virNetworkSetMetadata``, is 9.7's), so it is written with a define.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import DhcpHost, DnsHost, NetworkSpec
from reconciler.xml import edits
from reconciler.xml._fields import (
    INT,
    MAC,
    Attr,
    Device,
    Each,
    Element,
    Field,
    Projection,
    drop_attr,
    ensure,
    find,
    findall,
    observe_fields,
    parse,
    parse_own,
    patch_fields,
    project_fields,
    remove,
    render_fields,
    reorder,
    serialize,
    xml_text,
)

__all__ = [
    "DEVICES", "FIELDS", "IPV4", "OWNER_NAMESPACE", "NetworkOwnership", "dhcp_parent_index",
    "entry_xml", "observe", "patch", "project", "read_ownership", "render", "with_ownership",
]  # fmt: skip

OWNER_NAMESPACE = "https://reconciler.dev/xmlns/network/v1"
ET.register_namespace("rcn", OWNER_NAMESPACE)

IPV4 = "ip[@family?='ipv4']"
"""The IPv4 ``<ip>``: ``family='ipv4'`` or no family (libvirt's default). The manifest's
``ipv4`` fields read and write only that one; an IPv6 ``<ip>`` is not theirs."""

_ORDER = ("name", "uuid", "metadata", "forward", "bridge", "mtu", "mac", "domain", "dns", "ip")


@dataclass(frozen=True, slots=True)
class _Forward:
    """``mode``: ``<forward mode=.../>``; no ``<forward>`` at all means isolated."""

    def write(self, root: Element, value: Any) -> None:
        if value != "isolated":
            ensure(root, "forward").set("mode", xml_text(str(value), "mode"))

    def clear(self, root: Element) -> None:
        for forward in root.findall("forward"):
            remove(forward)

    def read(self, root: Element) -> object:
        forward = root.find("forward")
        if forward is None:
            return "isolated"
        return forward.get("mode", "nat")

    def canon(self, value: Any) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _Prefix:
    """``ipv4.prefix``: ``<ip prefix='24'>``, also read from ``netmask='255.255.255.0'``."""

    def write(self, root: Element, value: Any) -> None:
        ensure(root, IPV4).set("prefix", str(int(value)))

    def clear(self, root: Element) -> None:
        ip = find(root, IPV4)
        if ip is not None:
            drop_attr(ip, "prefix")
            drop_attr(ip, "netmask")

    def read(self, root: Element) -> object:
        ip = find(root, IPV4)
        if ip is None:
            return None
        if ip.get("prefix") is not None:
            return int(ip.get("prefix", ""))
        netmask = ip.get("netmask")
        if netmask is None:
            return None
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen

    def canon(self, value: Any) -> object:
        return int(value)


def _dhcp(spec: NetworkSpec, attr: str) -> str | None:
    if spec.ipv4 is None or spec.ipv4.dhcp is None:
        return None
    value: str = getattr(spec.ipv4.dhcp, attr)
    return value


_RANGE = f"{IPV4}/dhcp/range"  # the first range: others are kept as they are

FIELDS: tuple[Field[NetworkSpec], ...] = (
    Field("mode", lambda spec: spec.mode, _Forward()),
    Field("bridge", lambda spec: spec.bridge, Attr("bridge", "name")),
    Field("mtu", lambda spec: spec.mtu, Attr("mtu", "size", INT)),
    Field("domain", lambda spec: spec.domain, Attr("domain", "name")),
    Field("ipv4.address", lambda spec: spec.ipv4 and spec.ipv4.address, Attr(IPV4, "address")),
    Field("ipv4.prefix", lambda spec: spec.ipv4 and spec.ipv4.prefix, _Prefix()),
    Field("ipv4.dhcp.start", lambda spec: _dhcp(spec, "start"), Attr(_RANGE, "start")),
    Field("ipv4.dhcp.end", lambda spec: _dhcp(spec, "end"), Attr(_RANGE, "end")),
)

DHCP_HOSTS: Device[DhcpHost] = Device(
    section="ipv4.dhcp.hosts",
    parent=f"{IPV4}/dhcp",
    tag="host",
    key=Attr("", "mac", MAC),
    key_of=lambda host: host.mac,
    fields=(
        Field("ip", lambda host: host.ip, Attr("", "ip")),
        Field("name", lambda host: host.name, Attr("", "name")),
    ),
)

DNS_HOSTS: Device[DnsHost] = Device(
    section="dnsHosts",
    parent="dns",
    tag="host",
    key=Attr("", "ip"),
    key_of=lambda host: host.ip,
    fields=(Field("names", lambda host: host.names, Each("", "hostname")),),
)

DEVICES = (DHCP_HOSTS, DNS_HOSTS)


def _dhcp_hosts(spec: NetworkSpec) -> tuple[DhcpHost, ...]:
    if spec.ipv4 is None or spec.ipv4.dhcp is None:
        return ()
    return spec.ipv4.dhcp.hosts


# --- ownership -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkOwnership:
    """What the tool records in a network it owns (``<metadata><rcn:owner>``): which
    reconciler instance (None in a record without one), manifest, spec and commit."""

    instance: str | None
    manifest: str
    digest: str = ""
    revision: str | None = None


def _tag(name: str) -> str:
    return f"{{{OWNER_NAMESPACE}}}{name}"


def _set_ownership(root: Element, ownership: NetworkOwnership) -> None:
    """The one writer of the record: it replaces an old one where it stands."""
    metadata = ensure(root, "metadata")
    olds = metadata.findall(_tag("owner"))
    owner = ET.SubElement(metadata, _tag("owner"))
    if olds:
        olds[0].addprevious(owner)
    for old in olds:
        remove(old)
    fields = (("instance", ownership.instance), ("manifest", ownership.manifest),
              ("digest", ownership.digest or None), ("revision", ownership.revision))  # fmt: skip
    for tag, value in fields:
        if value is not None:
            ET.SubElement(owner, _tag(tag)).text = xml_text(value, tag)


def read_ownership(xml: str | Element) -> NetworkOwnership | None:
    """The ownership record in a network's XML, or None when it carries none."""
    owner = parse(xml).find(f"metadata/{_tag('owner')}")
    if owner is None:
        return None
    manifest = owner.findtext(_tag("manifest"))
    if not manifest:
        return None
    return NetworkOwnership(
        instance=(owner.findtext(_tag("instance")) or "").strip() or None,
        manifest=manifest,
        digest=owner.findtext(_tag("digest")) or "",
        revision=owner.findtext(_tag("revision")),
    )


def with_ownership(xml: str, ownership: NetworkOwnership) -> str:
    """The network definition ``xml`` (as libvirt returns it) with ``ownership`` as its
    record and all else as it was: a record written without a redefine from the
    manifest (adopting, or taking a record over)."""
    root = parse(xml)
    _set_ownership(root, ownership)  # libvirt reads its XML in any order
    return serialize(root)


def render(
    name: str,
    spec: NetworkSpec,
    *,
    uuid: str | None = None,
    ownership: NetworkOwnership | None = None,
) -> str:
    """Network XML for ``networkDefineXML``; ``uuid`` keeps an existing network's identity,
    ``ownership`` is the record it carries."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = xml_text(name, "name")
    if uuid is not None:
        ET.SubElement(root, "uuid").text = xml_text(uuid, "uuid")
    if ownership is not None:
        _set_ownership(root, ownership)
    render_fields(root, FIELDS, spec)
    DNS_HOSTS.render(root, spec.dns_hosts)
    DHCP_HOSTS.render(root, _dhcp_hosts(spec))
    reorder(root, _ORDER)
    dhcp = find(root, f"{IPV4}/dhcp")
    if dhcp is not None:
        reorder(dhcp, ("range", "host"))
    edits.apply(root, spec.xml)  # the escape hatch, after the typed fields (xml/edits.py)
    return serialize(root)


def patch(
    current: str | Element, spec: NetworkSpec, *, ownership: NetworkOwnership | None = None
) -> str:
    """Network XML for redefining an existing network: ``current`` (its persistent
    definition, read ``VIR_NETWORK_XML_INACTIVE``) with the declared fields that differ
    set and the managed sets made exact (DHCP hosts of the IPv4 ``<ip>`` by MAC, DNS
    hosts by IP); everything else kept as it is (formatnetwork: an IPv6 ``<ip>``, other
    DHCP ranges, ``<dns>`` forwarders, SRV and TXT records, ``<route>``, ``<portgroup>``,
    ``<bandwidth>``, ``<nat>`` port ranges, other tools' ``<metadata>``, unknown
    elements). A bridge the manifest does not name stays as libvirt picked it; no
    ``ipv4`` removes the IPv4 ``<ip>``, no ``ipv4.dhcp`` its ``<dhcp>``. ``ownership``
    replaces our record where it stands (None: the record goes). Raises ValueError on
    a value XML cannot hold."""
    root = parse_own(current)
    ipv4 = find(root, IPV4)
    if spec.ipv4 is None:
        for ip in findall(root, IPV4):
            remove(ip)
    elif ipv4 is not None and spec.ipv4 is not None and spec.ipv4.dhcp is None:
        for dhcp in ipv4.findall("dhcp"):
            remove(dhcp)
    fields = FIELDS if spec.bridge is not None else tuple(f for f in FIELDS if f.path != "bridge")
    patch_fields(root, fields, spec)
    domain = root.find("domain")
    if domain is not None and domain.get("name") is None:
        remove(domain)  # localOnly and the rest mean nothing without the name
    DNS_HOSTS.patch(root, spec.dns_hosts)
    DHCP_HOSTS.patch(root, _dhcp_hosts(spec))
    if ownership is not None:
        _set_ownership(root, ownership)
    else:
        for owner in root.findall(f"metadata/{_tag('owner')}"):
            remove(owner)
    edits.apply(root, spec.xml)  # the escape hatch: only the entries not satisfied yet
    return serialize(root)


def dhcp_parent_index(xml: str | Element) -> int:
    """The index of the IPv4 ``<ip>`` among the network's ``<ip>`` elements, as
    ``virNetworkUpdate`` takes it for ``ip-dhcp-host`` (-1, libvirt's "most appropriate",
    picks the first ``<ip>`` with DHCP, which may be the IPv6 one). -1 without one."""
    root = parse(xml)
    ipv4 = find(root, IPV4)
    for index, ip in enumerate(root.findall("ip")):
        if ip is ipv4:
            return index
    return -1


def project(spec: NetworkSpec) -> Projection:
    """The desired fields, keyed like ``observe`` keys them."""
    out = project_fields(FIELDS, spec)
    out.update(DHCP_HOSTS.project(_dhcp_hosts(spec)))
    out.update(DNS_HOSTS.project(spec.dns_hosts))
    out.update(edits.project(spec.xml))
    return out


def edit_refusal(spec: NetworkSpec, base: str | Element) -> tuple[int, str] | None:
    """Why an ``xml`` entry of ``spec`` cannot be applied to ``base`` (the current
    definition, or the typed render of a new network): it would change a typed field
    (``edits.refusal``; the typed fields win), or cannot be applied. None: it can."""
    if not spec.xml:
        return None
    declared = spec.bridge is not None
    return edits.refusal(spec.xml, parse(base),
                         lambda root: observe(root, bridge_declared=declared))  # fmt: skip


def edits_invalid(composed: str, spec: NetworkSpec, base: str) -> tuple[int, str] | None:
    """The first ``xml`` entry that makes ``composed`` invalid against libvirt's network
    schema, with the schema's message, or None (``edits.invalid``)."""
    return edits.invalid(parse(composed), spec.xml, parse(base), edits.LIBVIRT_NETWORK_RNG)


def entry_xml(xml: str, section: str, key: str) -> str | None:
    """One DHCP host (``ipv4.dhcp.hosts``, by MAC) or DNS host (``dnsHosts``, by IP) of a
    network XML, as ``virNetworkUpdate`` takes it."""
    tables: dict[str, Device[Any]] = {DHCP_HOSTS.section: DHCP_HOSTS, DNS_HOSTS.section: DNS_HOSTS}
    element = tables[section].element(parse(xml), key)
    return None if element is None else serialize(element).strip()


def observe(xml: str | Element, *, bridge_declared: bool = True) -> Projection:
    """The declared fields read from ``net.XMLDesc(0)``.

    ``bridge_declared=False`` (the manifest names no bridge) drops the bridge
    libvirt picked (``virbr1``), which is not a difference.
    """
    root = parse(xml)
    out = observe_fields(root, FIELDS)
    if not bridge_declared:
        out["bridge"] = None
    out.update(DHCP_HOSTS.observe(root))
    out.update(DNS_HOSTS.observe(root))
    return out
