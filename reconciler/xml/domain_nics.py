"""The NIC fields of issue 13, declared once: direct (macvtap) NICs, VLAN tags and
trunks, portgroup, bandwidth, link state, MTU (formatdomain "Network interfaces":
"Direct attachment to physical interface", "Setting VLAN tag", "Quality of
service", "Modifying virtual link state", "MTU configuration").

``FIELDS`` are fields of ``domain.INTERFACES``; render, patch, observe and the plan
come from them as for every other NIC field. A field the manifest does not name
(``Interface.declared``) is ``KEPT``: kept as the domain has it, never a change.

Direct NICs are a device set of their own inside ``interfaces``: a manifest that
declares no direct NIC keeps the domain's direct NICs as they are (as before this
module: ``domain.observe`` sees them only with ``direct``); one that declares
any makes the whole set of direct NICs exact, like network and bridge NICs.

Change classes: bandwidth and link state are live (the running NIC is updated
with ``virDomainUpdateDeviceFlags``, which applies both); direct source, VLAN,
portgroup and MTU take a restart.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import Interface, Rate, VirtualMachineSpec, Vlan, VlanTag
from reconciler.xml._fields import (
    INT,
    KEPT,
    Attr,
    ChangeClass,
    Element,
    Field,
    ensure,
    find,
    remove,
    xml_text,
)

__all__ = ["FIELDS", "declares_direct", "exported", "parse_vlan", "tidy"]


def _kept(nic: Interface, name: str, value: object) -> object:
    return value if name in nic.declared else KEPT


@dataclass(frozen=True, slots=True)
class _Vlan:
    """``<vlan [trunk='yes']><tag id= [nativeMode=]/>...</vlan>``, as ``Vlan.describe``
    text (``42``, ``42/untagged,43 trunk``)."""

    def write(self, root: Element, value: Any) -> None:
        vlan = parse_vlan(str(value))
        element = ET.SubElement(root, "vlan")
        if vlan.trunk:
            element.set("trunk", "yes")
        for tag in vlan.tags:
            attrs = {"id": str(tag.id)}
            if tag.native_mode:
                attrs["nativeMode"] = xml_text(tag.native_mode, "nativeMode")
            ET.SubElement(element, "tag", attrs)

    def clear(self, root: Element) -> None:
        for element in root.findall("vlan"):
            remove(element)

    def read(self, root: Element) -> object:
        element = root.find("vlan")
        if element is None:
            return None
        tags = tuple(VlanTag(int(t.get("id", "0")), t.get("nativeMode"))
                     for t in element.findall("tag"))  # fmt: skip
        trunk = element.get("trunk") == "yes" or len(tags) > 1
        return Vlan(tags, trunk).describe()

    def canon(self, value: Any) -> object:
        return parse_vlan(str(value)).describe()


def parse_vlan(text: str) -> Vlan:
    """The ``Vlan`` a ``Vlan.describe`` text says. ValueError for another text."""
    body, _, trunk = text.partition(" ")
    tags = []
    for part in body.split(","):
        number, _, mode = part.partition("/")
        tags.append(VlanTag(int(number), mode or None))
    return Vlan(tuple(tags), trunk == "trunk" or len(tags) > 1)


@dataclass(frozen=True, slots=True)
class _Defaulted:
    """An attribute that reads as ``default`` when the element leaves it out (a direct
    NIC's mode, libvirt's vepa; a link's state, up)."""

    path: str
    name: str
    default: str

    def write(self, root: Element, value: Any) -> None:
        ensure(root, self.path).set(self.name, xml_text(str(value), self.name))

    def clear(self, root: Element) -> None:
        Attr(self.path, self.name).clear(root)

    def read(self, root: Element) -> object:
        element = find(root, self.path)
        value = None if element is None else element.get(self.name)
        return self.default if value is None else value

    def canon(self, value: Any) -> object:
        return str(value)


def _rate(nic: Interface, direction: str, name: str) -> object:
    if "bandwidth" not in nic.declared:
        return KEPT
    rate: Rate | None = None if nic.bandwidth is None else getattr(nic.bandwidth, direction)
    return None if rate is None else getattr(rate, name)


def _rate_of(direction: str, name: str) -> Callable[[Interface], object]:
    return lambda nic: _rate(nic, direction, name)


def _bandwidth_fields() -> tuple[Field[Interface], ...]:
    out: list[Field[Interface]] = []
    for direction in ("inbound", "outbound"):
        for name in ("average", "peak", "burst"):
            out.append(Field(
                f"bandwidth.{direction}.{name}",
                _rate_of(direction, name),
                Attr(f"bandwidth/{direction}", name, INT),
                change=ChangeClass.LIVE,
                unit="KiB" if name == "burst" else "KiB/s",
            ))  # fmt: skip
    return tuple(out)


FIELDS: tuple[Field[Interface], ...] = (
    Field("direct.dev", lambda nic: nic.direct, Attr("source", "dev"), variant="direct"),
    Field("direct.mode", lambda nic: nic.direct_mode, _Defaulted("source", "mode", "vepa"),
          variant="direct", default="vepa"),
    Field("vlan", lambda nic: _kept(nic, "vlan", None if nic.vlan is None
                                    else nic.vlan.describe()), _Vlan()),
    Field("portgroup", lambda nic: _kept(nic, "portgroup", nic.portgroup),
          Attr("source", "portgroup"), variant="network"),
    *_bandwidth_fields(),
    Field("link", lambda nic: _kept(nic, "link", nic.link), _Defaulted("link", "state", "up"),
          change=ChangeClass.LIVE),  # no default: a manifest without it keeps the state
    Field("mtu", lambda nic: _kept(nic, "mtu", nic.mtu), Attr("mtu", "size", INT)),
)  # fmt: skip
"""The issue-13 fields of ``domain.INTERFACES`` (projection keys below
``interfaces[MAC].``); bandwidth values in libvirt's units (KiB/s, burst KiB)."""

ORDER = ("source", "vlan", "model", "bandwidth", "link", "mtu")


def tidy(element: Element, nic: Interface) -> None:
    """Drop a ``<bandwidth>`` left empty by a patch (its limits removed one by one)."""
    for bandwidth in element.findall("bandwidth"):
        if len(bandwidth) == 0 and not bandwidth.attrib:
            remove(bandwidth)


def declares_direct(spec: VirtualMachineSpec) -> bool:
    """Whether ``spec`` names any direct NIC: then the domain's direct NICs are one exact
    set, as its network and bridge NICs are; else they are kept as they are."""
    return any(nic.direct is not None for nic in spec.interfaces)


def exported(projection: Mapping[str, object], at: str) -> dict[str, Any]:
    """The issue-13 fields of the NIC ``at`` (``interfaces[MAC]``) of an observed
    ``projection`` as a manifest writes them: each the domain has (vlan, portgroup,
    bandwidth in libvirt's units, link when down, mtu); nothing for what it has not,
    which a manifest that does not name the field keeps as it is."""
    out: dict[str, Any] = {}
    vlan = projection.get(f"{at}.vlan")
    if vlan is not None:
        parsed = parse_vlan(str(vlan))
        if len(parsed.tags) == 1 and not parsed.trunk:
            out["vlan"] = parsed.tags[0].id
        else:
            tags = [{"id": t.id, **({"nativeMode": t.native_mode} if t.native_mode else {})}
                    for t in parsed.tags]  # fmt: skip
            out["vlan"] = {"tags": tags, "trunk": True}
    if projection.get(f"{at}.portgroup") is not None:
        out["portgroup"] = projection[f"{at}.portgroup"]
    bandwidth: dict[str, dict[str, object]] = {}
    for direction in ("inbound", "outbound"):
        values = {name: projection.get(f"{at}.bandwidth.{direction}.{name}")
                  for name in ("average", "peak", "burst")}  # fmt: skip
        if values["average"] is not None:
            bandwidth[direction] = {k: v for k, v in values.items() if v is not None}
    if bandwidth:
        out["bandwidth"] = bandwidth
    if projection.get(f"{at}.link") == "down":
        out["link"] = "down"
    if projection.get(f"{at}.mtu") is not None:
        out["mtu"] = projection[f"{at}.mtu"]
    return out
