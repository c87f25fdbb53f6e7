"""Storage pool XML (``<pool type='dir'>``): render, patch, project, observe.

The planner renders this for ``storagePoolDefineXML`` on creation, patches the
current definition on a redefine (``patch``), and compares ``project(spec)``
with ``observe(pool.XMLDesc(0))``. Only the fields a manifest declares are read
back: libvirt's ``<uuid>``, capacity, allocation, available space, the
``<source>`` and target ``<permissions>`` are not the manifest's, and a
redefine keeps them. A pool's state
and autostart are not in its XML; the hypervisor layer reads those.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import re

from lxml import etree as ET

from reconciler.model import StoragePoolSpec
from reconciler.xml import edits
from reconciler.xml._fields import (
    Attr,
    Element,
    Field,
    Projection,
    Text,
    observe_fields,
    parse,
    parse_own,
    patch_fields,
    project_fields,
    render_fields,
    serialize,
    xml_text,
)

__all__ = ["FIELDS", "observe", "patch", "project", "render"]


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
    edits.apply(root, spec.xml)  # the escape hatch, after the typed fields (xml/edits.py)
    return serialize(root)


def patch(current: str | Element, spec: StoragePoolSpec) -> str:
    """Pool XML for redefining an existing pool: ``current`` (its persistent definition,
    read ``VIR_STORAGE_XML_INACTIVE``) with the declared fields that differ set and
    everything else kept as it is (formatstorage: ``<source>``, target
    ``<permissions>``, unknown elements). Raises ValueError on a value XML cannot hold."""
    root = parse_own(current)
    patch_fields(root, FIELDS, spec)
    edits.apply(root, spec.xml)  # the escape hatch: only the entries not satisfied yet
    return serialize(root)


def project(spec: StoragePoolSpec) -> Projection:
    """The desired fields, keyed like ``observe`` keys them."""
    return {**project_fields(FIELDS, spec), **edits.project(spec.xml)}


def observe(xml: str | Element) -> Projection:
    """The declared fields read from ``pool.XMLDesc(0)``."""
    return observe_fields(parse(xml), FIELDS)


def edit_refusal(spec: StoragePoolSpec, base: str | Element) -> tuple[int, str] | None:
    """Why an ``xml`` entry of ``spec`` cannot be applied to ``base`` (the current
    definition, or the typed render of a new pool): it would change a typed field
    (``edits.refusal``; the typed fields win), or cannot be applied. None: it can."""
    return edits.refusal(spec.xml, parse(base), observe) if spec.xml else None


def edits_invalid(composed: str, spec: StoragePoolSpec, base: str) -> tuple[int, str] | None:
    """The first ``xml`` entry that makes ``composed`` invalid against libvirt's pool
    schema, with the schema's message, or None (``edits.invalid``)."""
    return edits.invalid(parse(composed), spec.xml, parse(base), edits.LIBVIRT_POOL_RNG)
