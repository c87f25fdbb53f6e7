"""Storage volume XML (``<volume>``): render, project, observe.

The planner renders this for ``pool.createXML`` and compares ``project(spec)``
with ``observe(vol.XMLDesc(0))``. A clone's backing store is named by path,
which only libvirt knows (``backing_path``: the backing volume's
``vol.path()``), so render and project take it as a keyword. libvirt's
``<key>``, allocation, physical size, permissions and timestamps are ignored.

libvirt creates qcow2 images in whole KiB, so a qcow2 capacity is rendered
and projected as rounding.created_capacity gives it (raw files keep the exact
size); the planner also accepts the 512-byte rounding of a resize
(rounding.volume_capacity).
Growing the volume (``vol.resize``) and copying ``source`` in are the
executor's business, not the XML's.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree as ET

from reconciler.model import VolumeSpec
from reconciler.rounding import created_capacity
from reconciler.units import format_size
from reconciler.xml._fields import (
    INT,
    Attr,
    ChangeClass,
    Element,
    Field,
    Projection,
    Text,
    observe_fields,
    parse,
    project_fields,
    render_fields,
    serialize,
    xml_text,
)

__all__ = ["FIELDS", "copy_xml", "observe", "project", "render"]

@dataclass(frozen=True, slots=True)
class _Desired:
    spec: VolumeSpec
    backing_path: str | None
    backing_format: str | None


def format_size_of(value: object) -> object:
    """A capacity in bytes as a manifest writes it (``format_size``)."""
    return format_size(value) if isinstance(value, int) else value


def _capacity(desired: _Desired) -> int:
    return created_capacity(desired.spec.capacity, desired.spec.format)


FIELDS: tuple[Field[_Desired], ...] = (
    # grown in place (resize, or QEMU's block_resize under a running guest); libvirt
    # keeps it rounded by format (rounding.volume_capacity); shrinking is refused
    Field("capacity", _capacity, Text("capacity", INT, fixed={"unit": "bytes"}),
          change=ChangeClass.LIVE, unit="bytes", export=format_size_of),
    # anything else is a new volume: made again, its data lost (--allow-replace)
    Field("format", lambda d: d.spec.format, Attr("target/format", "type"),
          change=ChangeClass.REPLACE, default="qcow2"),
    Field("backingVolume", lambda d: d.backing_path, Text("backingStore/path"),
          change=ChangeClass.REPLACE, export=None),
    Field("backingFormat", lambda d: d.backing_format, Attr("backingStore/format", "type"),
          change=ChangeClass.REPLACE, export=None),
)


def _desired(spec: VolumeSpec, backing_path: str | None, backing_format: str | None) -> _Desired:
    if spec.backing_volume is not None and backing_path is None:
        raise ValueError(f"a clone of {spec.backing_volume!r} needs its path (backing_path)")
    if spec.backing_volume is None:
        backing_path = backing_format = None
    return _Desired(spec, backing_path, backing_format)


def render(
    name: str,
    spec: VolumeSpec,
    *,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> str:
    """Volume XML for ``pool.createXML``; a clone needs the backing volume's path (and format)."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = xml_text(name, "name")
    render_fields(root, FIELDS, _desired(spec, backing_path, backing_format))
    return serialize(root)


def project(
    spec: VolumeSpec,
    *,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> Projection:
    """The desired fields, keyed like ``observe`` keys them."""
    return project_fields(FIELDS, _desired(spec, backing_path, backing_format))


def observe(xml: str | Element) -> Projection:
    """The declared fields read from ``vol.XMLDesc(0)``."""
    return observe_fields(parse(xml), FIELDS)


def allocation(xml: str | Element) -> int | None:
    """Bytes the volume takes on disk (``<allocation>``, in whole filesystem blocks for
    a dir pool), or None when libvirt does not say."""
    text = parse(xml).findtext("allocation")
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def modified(xml: str | Element) -> str | None:
    """When the volume's content last changed (``<timestamps><mtime>``), as libvirt reports
    it for file-backed pools; None where it does not (logical, iSCSI...)."""
    text = parse(xml).findtext("target/timestamps/mtime")
    return text.strip() if text and text.strip() not in ("", "0") else None


def copy_xml(current: str) -> str:
    """XML for ``storageVolCreateXMLFrom`` that makes a volume like ``current`` (its
    ``XMLDesc``) again: name, capacity, format and backing store, nothing libvirt assigns
    (key, path, allocation, permissions, timestamps)."""
    old = parse(current)
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = old.findtext("name")
    capacity = ET.SubElement(root, "capacity", unit="bytes")
    capacity.text = str(observe(current).get("capacity") or 0)
    fmt = old.find("target/format")
    if fmt is not None:
        ET.SubElement(ET.SubElement(root, "target"), "format", type=fmt.get("type", "raw"))
    backing = old.find("backingStore")
    path = None if backing is None else backing.findtext("path")
    if backing is not None and path:
        store = ET.SubElement(root, "backingStore")
        ET.SubElement(store, "path").text = path
        backing_format = backing.find("format")
        if backing_format is not None:
            ET.SubElement(store, "format", type=backing_format.get("type", "raw"))
    return serialize(root)


def backing_path(xml: str | Element) -> str | None:
    """The path of a volume's backing store (``<backingStore><path>``), or None."""
    text = parse(xml).findtext("backingStore/path")
    return text.strip() if text and text.strip() else None
