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
from reconciler.xml import network_vocab as vocab
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

_ORDER = ("name", "uuid", "metadata", "forward", "bridge", "mtu", "mac", "domain", "dns",
          "bandwidth", "portgroup", "ip", "route")


@dataclass(frozen=True, slots=True)
class _Forward:
    """``mode``: ``<forward mode=.../>``; no ``<forward>`` at all means isolated."""

    def write(self, root: Element, value: Any) -> None:
        if value == "macvtap":
            ensure(root, "forward")  # its mode is forward.mode's (bridge, vepa, ...)
        elif value != "isolated":
            ensure(root, "forward").set("mode", xml_text(str(value), "mode"))

    def clear(self, root: Element) -> None:
        for forward in root.findall("forward"):
            remove(forward)

    def read(self, root: Element) -> object:
        forward = root.find("forward")
        if forward is None:
            return "isolated"
        mode = forward.get("mode", "nat")
        # macvtap: the modes of a direct interface, or bridge without a bridge of its own
        # but with a pool of host interfaces (formatnetwork: Connectivity)
        if mode in ("private", "vepa", "passthrough") or (
            mode == "bridge" and root.find("bridge") is None
            and (forward.find("interface") is not None or forward.get("dev") is not None)
        ):  # fmt: skip
            return "macvtap"
        return mode

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
    declared = spec.declared
    render_fields(root, _fields(spec), spec)
    render_fields(root, vocab.declared_fields(declared), spec)
    DNS_HOSTS.render(root, spec.dns_hosts)
    DHCP_HOSTS.render(root, _dhcp_hosts(spec))
    items = vocab.items(spec)
    for device in vocab.declared_devices(declared):
        device.render(root, items[device.section])
    _forward_dev(root, spec)
    reorder(root, _ORDER)
    for dhcp in root.findall("ip/dhcp"):
        reorder(dhcp, ("range", "host"))
    edits.apply(root, spec.xml)  # the escape hatch, after the typed fields (xml/edits.py)
    return serialize(root)


def _forward_dev(root: Element, spec: NetworkSpec) -> None:
    """A macvtap network's ``<forward dev=>`` is its first interface, as libvirt writes it
    when it reads the definition (it is not a field of its own)."""
    forward = root.find("forward")
    pool = spec.forward.interfaces if spec.forward is not None else ()
    if spec.mode == "macvtap" and pool and forward is not None:
        forward.set("dev", xml_text(pool[0], "interface"))
        forward[:] = sorted(forward, key=lambda child: child.tag != "interface")


def _fields(spec: NetworkSpec) -> tuple[Field[NetworkSpec], ...]:
    """The fields ``spec`` manages: a bridge only when named (``bridge_declared``), the
    first DHCP range only when the manifest does not name the exact ``ranges``."""
    return tuple(f for f in FIELDS if vocab.managed_key(f.path, spec.declared)
                 and (f.path != "bridge" or spec.bridge is not None))  # fmt: skip


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
    declared = spec.declared
    if "ipv6" in declared:
        ipv6 = find(root, vocab.IPV6)
        if spec.ipv6 is None:
            for ip in findall(root, vocab.IPV6):
                remove(ip)
        elif ipv6 is not None and spec.ipv6.dhcp is None:
            for dhcp in ipv6.findall("dhcp"):
                remove(dhcp)
    patch_fields(root, _fields(spec), spec)
    patch_fields(root, vocab.declared_fields(declared), spec)
    domain = root.find("domain")
    if domain is not None and domain.get("name") is None:
        remove(domain)  # localOnly and the rest mean nothing without the name
    DNS_HOSTS.patch(root, spec.dns_hosts)
    DHCP_HOSTS.patch(root, _dhcp_hosts(spec))
    items = vocab.items(spec)
    for device in vocab.declared_devices(declared):
        if items[device.section] or find(root, device.parent) is not None:
            device.patch(root, items[device.section])
    for ip in root.findall("ip"):
        for dhcp in ip.findall("dhcp"):
            reorder(dhcp, ("range", "host"))
    _forward_dev(root, spec)
    for group in [*root.findall("portgroup"), *root.findall("forward")]:
        # a value taken away leaves no empty element
        for element in [*group.findall("bandwidth"), *group.findall("vlan"),
                        *group.findall("nat")]:  # fmt: skip
            if len(element) == 0 and not element.attrib:
                remove(element)
    dns = root.find("dns")
    if dns is not None and len(dns) == 0 and not dns.attrib:
        remove(dns)
    if ownership is not None:
        _set_ownership(root, ownership)
    else:
        for owner in root.findall(f"metadata/{_tag('owner')}"):
            remove(owner)
    edits.apply(root, spec.xml)  # the escape hatch: only the entries not satisfied yet
    return serialize(root)


def dhcp_parent_index(xml: str | Element, family: str = "ipv4") -> int:
    """The index of the ``<ip>`` of ``family`` (``ipv4``: also the one without a family)
    among the network's ``<ip>`` elements, as ``virNetworkUpdate`` takes it for
    ``ip-dhcp-host`` and ``ip-dhcp-range`` (-1, libvirt's "most appropriate", picks the
    first ``<ip>`` with DHCP, which may be the other family's). -1 without one."""
    return vocab.ip_index(parse(xml), family)


def project(spec: NetworkSpec) -> Projection:
    """The desired fields, keyed like ``observe`` keys them; the issue-13 sections only
    where the manifest names them (``NetworkSpec.declared``)."""
    out = project_fields(FIELDS, spec)
    out.update(DHCP_HOSTS.project(_dhcp_hosts(spec)))
    out.update(DNS_HOSTS.project(spec.dns_hosts))
    out.update(project_fields(vocab.declared_fields(spec.declared), spec))
    if spec.declared:
        items = vocab.items(spec)
        for device in vocab.declared_devices(spec.declared):
            out.update(device.project(items[device.section]))
    out = {k: v for k, v in out.items() if vocab.managed_key(k, spec.declared)}
    out.update(edits.project(spec.xml))
    return out


_ENTRIES: dict[str, Device[Any]] = {DHCP_HOSTS.section: DHCP_HOSTS, DNS_HOSTS.section: DNS_HOSTS}
_ENTRIES.update((device.section, device) for device in vocab.DEVICES)


def edit_refusal(spec: NetworkSpec, base: str | Element) -> tuple[int, str] | None:
    """Why an ``xml`` entry of ``spec`` cannot be applied to ``base`` (the current
    definition, or the typed render of a new network): it would change a typed field
    (``edits.refusal``; the typed fields win), or cannot be applied. None: it can."""
    if not spec.xml:
        return None
    declared = spec.bridge is not None
    # every typed section, named or not (declared=None): an entry adding an IPv6 <ip>, a
    # route or a portgroup is network_vocab's, and the typed field is the way to say it
    return edits.refusal(spec.xml, parse(base),
                         lambda root: observe(root, bridge_declared=declared,
                                              declared=None))  # fmt: skip


def edits_invalid(composed: str, spec: NetworkSpec, base: str) -> tuple[int, str] | None:
    """The first ``xml`` entry that makes ``composed`` invalid against libvirt's network
    schema, with the schema's message, or None (``edits.invalid``)."""
    return edits.invalid(parse(composed), spec.xml, parse(base), edits.LIBVIRT_NETWORK_RNG)


def entry_xml(xml: str, section: str, key: str) -> str | None:
    """One entry of a device section (``ipv4.dhcp.hosts`` by MAC, ``dnsHosts`` by IP,
    ``ipv6.dhcp.hosts``, DHCP ranges, DNS TXT and SRV, portgroups) of a network XML, as
    ``virNetworkUpdate`` takes it."""
    element = _ENTRIES[section].element(parse(xml), key)
    return None if element is None else serialize(element).strip()


def observe(
    xml: str | Element, *, bridge_declared: bool = True,
    declared: frozenset[str] | None = frozenset(),
) -> Projection:
    """The declared fields read from ``net.XMLDesc(0)``.

    ``bridge_declared=False`` (the manifest names no bridge) drops the bridge
    libvirt picked (``virbr1``), which is not a difference. ``declared``: the
    issue-13 sections the manifest names (``NetworkSpec.declared``); the others are
    left out (default: none of them). None (export): every section libvirt has.
    """
    root = parse(xml)
    out = observe_fields(root, FIELDS)
    if not bridge_declared:
        out["bridge"] = None
    out.update(DHCP_HOSTS.observe(root))
    out.update(DNS_HOSTS.observe(root))
    fields = vocab.FIELDS if declared is None else vocab.declared_fields(declared)
    more = observe_fields(root, fields)
    for device in vocab.DEVICES if declared is None else vocab.declared_devices(declared):
        more.update(device.observe(root))
    if declared is None:
        # all there is (export); a section libvirt does not have is no key, the device
        # pool only on a macvtap or hostdev network, the exact ranges only where an <ip>
        # has more than one (one reads as start/end, as ever)
        pool = out.get("mode") in ("macvtap", "hostdev")
        several = {f: sum(k.startswith(f"{f}.dhcp.ranges[") for k in more) > 1
                   for f in ("ipv4", "ipv6")}  # one field (end) per range
        if (more.get("nat.ports.start"), more.get("nat.ports.end")) == (1024, 65535):
            more["nat.ports.start"] = more["nat.ports.end"] = None  # libvirt's, when running
        out.update((k, v) for k, v in more.items() if (v is not None or "[" in k)
                   and (pool or not k.startswith("forward."))
                   and not any(k.startswith(f"{f}.dhcp.ranges[") and not several[f]
                               for f in several))  # fmt: skip
        return out
    out.update(more)
    return {k: v for k, v in out.items() if vocab.managed_key(k, declared)}
