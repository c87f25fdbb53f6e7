"""network"""

from __future__ import annotations

from typing import Any

from reconciler.diff import device_of
from reconciler.export.hatch import network_entries
from reconciler.export.kept import kept_in_definition
from reconciler.export.notes import (
    _IPV4,
    Exported,
    _build,
    _check_name,
    _compare,
    _entries,
    _Notes,
    _tuple,
    _unexportable,
    document,
)
from reconciler.model import Kind, NetworkSpec
from reconciler.snapshot import NetworkRecord
from reconciler.xml import network as network_xml
from reconciler.xml import network_vocab
from reconciler.xml._fields import Projection


def network_spec(projection: Projection, *, active: bool, autostart: bool,
                 notes: _Notes | None = None) -> dict[str, Any]:  # fmt: skip
    """A Network spec from ``network_xml.observe(..., bridge_declared=True)``."""
    notes = notes if notes is not None else _Notes()
    p = projection
    spec: dict[str, Any] = {"mode": p.get("mode")}
    if p.get("bridge") is not None:
        spec["bridge"] = p["bridge"]
    for key in ("mtu", "domain"):
        if p.get(key) is not None:
            spec[key] = p[key]
    address = p.get("ipv4.address")
    if isinstance(address, str) and not _IPV4.match(address):
        notes.add("ipv4", f"the IPv4 <ip> has the address {address}, which is not IPv4")
    elif address is not None:
        ipv4: dict[str, Any] = {"address": address, "prefix": p.get("ipv4.prefix")}
        if p.get("ipv4.dhcp.start") is not None:
            hosts = []
            for mac in _entries(p, "ipv4.dhcp.hosts"):
                host = {"mac": mac, "ip": p.get(f"ipv4.dhcp.hosts[{mac}].ip")}
                if p.get(f"ipv4.dhcp.hosts[{mac}].name") is not None:
                    host["name"] = p[f"ipv4.dhcp.hosts[{mac}].name"]
                hosts.append(host)
            dhcp: dict[str, Any] = {"start": p["ipv4.dhcp.start"], "end": p.get("ipv4.dhcp.end")}
            if hosts:
                dhcp["hosts"] = hosts
            ipv4["dhcp"] = dhcp
        spec["ipv4"] = ipv4
    if "dhcp" in spec.get("ipv4", {}):
        ranges = _ranges(p, "ipv4")
        if len(ranges) > 1:
            dhcp4 = spec["ipv4"]["dhcp"]
            del dhcp4["start"], dhcp4["end"]
            spec["ipv4"]["dhcp"] = {"ranges": ranges, **dhcp4}
    spec.update(_vocabulary(p))
    dns = [{"ip": ip, "names": list(_tuple(p.get(f"dnsHosts[{ip}].names")))}
           for ip in _entries(p, "dnsHosts")]  # fmt: skip
    if dns:
        spec["dnsHosts"] = dns
    spec["state"] = "active" if active else "inactive"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


def _keys(p: Projection, section: str) -> list[str]:
    """Identities of a section's entries, in libvirt's order, also an entry whose every
    field is absent (``<portgroup name='eng'/>``)."""
    keys: list[str] = []
    for path in p:
        dev = device_of(path)
        if dev is not None and dev[0] == section and dev[1] not in keys:
            keys.append(dev[1])
    return keys


def _ranges(p: Projection, family: str) -> list[dict[str, Any]]:
    section = f"{family}.dhcp.ranges"
    return [{"start": start, "end": p.get(f"{section}[{start}].end")}
            for start in _keys(p, section)]  # fmt: skip


def _some(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _vocabulary(p: Projection) -> dict[str, Any]:
    """The issue-13 sections of a Network spec (IPv6, routes, DNS forwarders/SRV/TXT,
    portgroups, the macvtap/hostdev pool, NAT ranges), each only where libvirt has it."""
    out: dict[str, Any] = {}
    if p.get("ipv6.address") is not None:
        ipv6: dict[str, Any] = {"address": p["ipv6.address"], "prefix": p.get("ipv6.prefix")}
        ranges = _ranges(p, "ipv6")
        if ranges or p.get("ipv6.dhcp.start") is not None:
            dhcp: dict[str, Any] = ({"ranges": ranges} if len(ranges) > 1 else
                                    {"start": p["ipv6.dhcp.start"], "end": p.get("ipv6.dhcp.end")})
            hosts = []
            for key in _keys(p, "ipv6.dhcp.hosts"):
                at = f"ipv6.dhcp.hosts[{key}]"
                host = {"id": key} if ":" in key else {}
                hosts.append({**host, **_some(name=p.get(f"{at}.name"), ip=p.get(f"{at}.ip"))})
            if hosts:
                dhcp["hosts"] = hosts
            ipv6["dhcp"] = dhcp
        out["ipv6"] = ipv6
    routes = []
    for key in _keys(p, "routes"):
        address, prefix = key.rsplit("/", 1)
        routes.append({"address": address, "prefix": int(prefix),
                       **_some(gateway=p.get(f"routes[{key}].gateway"),
                               metric=p.get(f"routes[{key}].metric"))})  # fmt: skip
    if routes:
        out["routes"] = routes
    dns: dict[str, Any] = {}
    forwarders = [_some(addr=addr, domain=domain) for addr, domain in
                  map(network_vocab.forwarder_of, _tuple(p.get("dns.forwarders")))]  # fmt: skip
    if forwarders:
        dns["forwarders"] = forwarders
    srv = []
    for key in _keys(p, "dns.srv"):
        service, protocol, domain, target, port = key.split("/")
        srv.append(_some(service=service, protocol=protocol, domain=domain or None,
                         target=target or None, port=int(port) if port else None,
                         priority=p.get(f"dns.srv[{key}].priority"),
                         weight=p.get(f"dns.srv[{key}].weight")))  # fmt: skip
    if srv:
        dns["srv"] = srv
    txt = [{"name": name, "value": p.get(f"dns.txt[{name}].value")}
           for name in _keys(p, "dns.txt")]  # fmt: skip
    if txt:
        dns["txt"] = txt
    if p.get("dns.enable") is not None:
        dns["enable"] = p["dns.enable"]
    if dns:
        out["dns"] = dns
    groups = []
    for name in _keys(p, "portgroups"):
        at = f"portgroups[{name}]"
        group: dict[str, Any] = {"name": name}
        if p.get(f"{at}.default"):
            group["default"] = True
        if p.get(f"{at}.vlan"):
            group["vlan"] = list(_tuple(p[f"{at}.vlan"]))
        bandwidth = {}
        for direction in ("inbound", "outbound"):
            rate = _some(**{a: p.get(f"{at}.bandwidth.{direction}.{a}")
                            for a in ("average", "peak", "burst")})  # fmt: skip
            if rate:
                bandwidth[direction] = rate
        if bandwidth:
            group["bandwidth"] = bandwidth
        groups.append(group)
    if groups:
        out["portgroups"] = groups
    if p.get("mode") in ("macvtap", "hostdev"):
        forward = _some(mode=p.get("forward.mode") if p.get("mode") == "macvtap" else None,
                        managed=p.get("forward.managed"))  # fmt: skip
        if p.get("forward.interfaces"):
            forward["interfaces"] = list(_tuple(p["forward.interfaces"]))
        if p.get("forward.devices"):
            forward["devices"] = list(_tuple(p["forward.devices"]))
        out["forward"] = forward
    addresses = _some(start=p.get("nat.addresses.start"), end=p.get("nat.addresses.end"))
    ports = _some(start=p.get("nat.ports.start"), end=p.get("nat.ports.end"))
    if addresses or ports:
        out["nat"] = _some(addresses=addresses or None, ports=ports or None)
    return out


# Never listed as kept: the identity and our record, what libvirt adds to any network
# (the bridge's MAC, stp and delay), and manifest fields in another spelling.
_NETWORK_SILENT = (
    "uuid", "name", "metadata", "mac", "bridge@stp", "bridge@delay", "ip@family",
    "ip@netmask",
)  # fmt: skip


def export_network(record: NetworkRecord) -> Exported:
    notes = _Notes()
    kind = Kind.NETWORK
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    observed = network_xml.observe(record.config_xml, bridge_declared=True, declared=None)
    if observed.get("mode") not in ("nat", "route", "isolated", "bridge", "macvtap", "hostdev"):
        notes.add("mode", f"forward mode {observed.get('mode')} cannot be expressed "
                  "(nat, route, isolated, bridge, macvtap or hostdev)")  # fmt: skip
        return _unexportable(kind, record.name, notes)
    spec = network_spec(observed, active=record.active, autostart=record.autostart, notes=notes)
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, NetworkSpec)
    _compare(network_xml.project(m.spec),
             network_xml.observe(record.config_xml, declared=m.spec.declared), notes)
    rendered = network_xml.render(record.name, m.spec)
    # what the typed fields cannot say goes to the escape hatch (export/hatch.py), so a
    # network created from the manifest elsewhere has it too; the rest is kept (a
    # redefine patches the current definition)
    hatch = network_entries(record.config_xml, rendered, m.spec, _NETWORK_SILENT)
    if hatch:
        doc["spec"]["xml"] = hatch
        with_hatch = _build(kind, doc, notes)
        if with_hatch is None:
            return _unexportable(kind, record.name, notes)
        assert isinstance(with_hatch.spec, NetworkSpec)
        rendered = network_xml.render(record.name, with_hatch.spec)
    kept = kept_in_definition(record.config_xml, rendered, notes, silent=_NETWORK_SILENT,
                              namespace=network_xml.OWNER_NAMESPACE, detail=True)  # fmt: skip
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))
