"""network"""

from __future__ import annotations

from typing import Any

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
    dns = [{"ip": ip, "names": list(_tuple(p.get(f"dnsHosts[{ip}].names")))}
           for ip in _entries(p, "dnsHosts")]  # fmt: skip
    if dns:
        spec["dnsHosts"] = dns
    spec["state"] = "active" if active else "inactive"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


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
    observed = network_xml.observe(record.config_xml, bridge_declared=True)
    if observed.get("mode") not in ("nat", "route", "isolated", "bridge"):
        notes.add("mode", f"forward mode {observed.get('mode')} cannot be expressed "
                  "(nat, route, isolated or bridge)")  # fmt: skip
        return _unexportable(kind, record.name, notes)
    spec = network_spec(observed, active=record.active, autostart=record.autostart, notes=notes)
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, NetworkSpec)
    _compare(network_xml.project(m.spec), observed, notes)
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
