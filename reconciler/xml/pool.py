"""Storage pool XML (``<pool type='dir'>``): render, project, observe.

The planner renders this for ``storagePoolDefineXML`` and compares
``project(spec)`` with ``observe(pool.XMLDesc(0))``. Only the fields a
manifest declares are read back: libvirt's ``<uuid>``, capacity, allocation,
available space and target permissions are its own business. A pool's state
and autostart are not in its XML; the hypervisor layer reads those.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import re

from lxml import etree as ET

from reconciler.model import StoragePoolSpec
from reconciler.xml._fields import (
    Attr,
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

__all__ = ["FIELDS", "observe", "project", "render"]


def _clean_path(path: str) -> str:
    """The path as libvirt stores it: no repeated or trailing slashes."""
    cleaned = re.sub("/+", "/", path)
    return cleaned.rstrip("/") or "/"


FIELDS: tuple[Field[StoragePoolSpec], ...] = (
    Field("type", lambda spec: spec.type, Attr("", "type")),
    Field("path", lambda spec: _clean_path(spec.path), Text("target/path")),
)


def render(name: str, spec: StoragePoolSpec, *, uuid: str | None = None) -> str:
    """Pool XML for ``storagePoolDefineXML``; ``uuid`` keeps an existing pool's identity."""
    root = ET.Element("pool")
    ET.SubElement(root, "name").text = xml_text(name, "name")
    if uuid is not None:
        ET.SubElement(root, "uuid").text = xml_text(uuid, "uuid")
    render_fields(root, FIELDS, spec)
    return serialize(root)


def project(spec: StoragePoolSpec) -> Projection:
    """The desired fields, keyed like ``observe`` keys them."""
    return project_fields(FIELDS, spec)


def observe(xml: str) -> Projection:
    """The declared fields read from ``pool.XMLDesc(0)``."""
    return observe_fields(parse(xml), FIELDS)
