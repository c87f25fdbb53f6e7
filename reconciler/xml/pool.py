"""Storage pool XML (``<pool type=...>``): render, patch, project, observe.

The planner renders this for ``storagePoolDefineXML`` on creation, patches the
current definition on a redefine (``patch``), and compares ``project(spec)``
with ``observe(pool.XMLDesc(0))``. Only the fields a manifest declares are read
back: libvirt's ``<uuid>``, capacity, allocation, available space and target
``<permissions>`` are not the manifest's, and a redefine keeps them. Of
``<source>`` (formatstorage "Source elements") each type has its own fields
(``fields_for``), and only those the manifest names are compared and written:
what it leaves out (a logical pool's ``<format type='lvm2'/>`` and target path
``/dev/VG``, which libvirt fills in) stays as libvirt has it. A pool's state
and autostart are not in its XML; the hypervisor layer reads those.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import re

from lxml import etree as ET

from reconciler.model import StoragePoolSpec
from reconciler.xml import edits
from reconciler.xml._fields import (
    INT,
    Attr,
    Each,
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

__all__ = ["FIELDS", "fields_for", "observe", "patch", "project", "render"]


def _clean_path(path: str) -> str:
    """The path as libvirt stores it: no repeated or trailing slashes."""
    cleaned = re.sub("/+", "/", path)
    return cleaned.rstrip("/") or "/"


def _path(spec: StoragePoolSpec) -> str | None:
    return None if spec.path is None else _clean_path(spec.path)


def _dir(spec: StoragePoolSpec) -> str | None:
    return None if spec.source.dir is None else _clean_path(spec.source.dir)


TYPE: Field[StoragePoolSpec] = Field("type", lambda spec: spec.type, Attr("", "type"))
PATH: Field[StoragePoolSpec] = Field("path", _path, Text("target/path"))
# formatstorage "Source elements"; a changed source is a redefinition the pool takes
# at its next start (planner/pool.py: a pool on a device is not stopped under its guests)
_F = Field[StoragePoolSpec]
DEVICES: _F = Field("source.devices", lambda spec: spec.source.devices or None,
                    Each("source", "device", attr="path"))  # fmt: skip
HOST: _F = Field("source.host", lambda spec: spec.source.host, Attr("source/host", "name"))
PORT: _F = Field("source.port", lambda spec: spec.source.port,
                 Attr("source/host", "port", INT))  # fmt: skip
DIR: _F = Field("source.dir", _dir, Attr("source/dir", "path"))
NAME: _F = Field("source.name", lambda spec: spec.source.name, Text("source/name"))
FORMAT: _F = Field("source.format", lambda spec: spec.source.format,
                   Attr("source/format", "type"))  # fmt: skip
IQN: _F = Field("source.iqn", lambda spec: spec.source.iqn, Attr("source/device", "path"))
INITIATOR: _F = Field("source.initiator", lambda spec: spec.source.initiator,
                      Attr("source/initiator/iqn", "name"))  # fmt: skip

_BY_TYPE: dict[str, tuple[Field[StoragePoolSpec], ...]] = {
    "dir": (TYPE, PATH),
    "fs": (TYPE, DEVICES, FORMAT, PATH),
    "netfs": (TYPE, HOST, DIR, FORMAT, PATH),
    "logical": (TYPE, DEVICES, NAME, FORMAT, PATH),
    "disk": (TYPE, DEVICES, FORMAT, PATH),
    "iscsi": (TYPE, HOST, PORT, IQN, INITIATOR, PATH),
    "zfs": (TYPE, DEVICES, NAME, PATH),
}

FIELDS: tuple[Field[StoragePoolSpec], ...] = (
    TYPE, PATH, DEVICES, HOST, PORT, DIR, NAME, FORMAT, IQN, INITIATOR,
)
"""Every pool field; ``fields_for`` gives the ones a pool type has."""


def fields_for(pool_type: str | None) -> tuple[Field[StoragePoolSpec], ...]:
    """The fields a pool of ``pool_type`` has (an unknown type: type and path only)."""
    return _BY_TYPE.get(pool_type or "dir", (TYPE, PATH))


def _declared(spec: StoragePoolSpec) -> tuple[Field[StoragePoolSpec], ...]:
    """The fields ``spec`` names: its type's, less those it leaves out (None)."""
    return tuple(f for f in fields_for(spec.type) if f.get(spec) is not None)


def render(name: str, spec: StoragePoolSpec, *, uuid: str | None = None) -> str:
    """Pool XML for ``storagePoolDefineXML``; ``uuid`` keeps an existing pool's identity."""
    root = ET.Element("pool")
    ET.SubElement(root, "name").text = xml_text(name, "name")
    if uuid is not None:
        ET.SubElement(root, "uuid").text = xml_text(uuid, "uuid")
    render_fields(root, _declared(spec), spec)
    target = _default_target(name, spec)
    if target is not None:
        # libvirt's schema (storagepool.rng) wants a <target> for these types; what
        # libvirt itself fills in when it is left out. Not declared, so not compared.
        ET.SubElement(ET.SubElement(root, "target"), "path").text = xml_text(target, "path")
    edits.apply(root, spec.xml)  # the escape hatch, after the typed fields (xml/edits.py)
    return serialize(root)


def _default_target(name: str, spec: StoragePoolSpec) -> str | None:
    """The target path of a pool whose manifest names none (formatstorage examples):
    a logical pool's /dev/VG, an iscsi pool's /dev/disk/by-path, a disk pool's /dev."""
    if spec.path is not None:
        return None
    if spec.type == "logical":
        return f"/dev/{spec.source.name or name}"
    return {"iscsi": "/dev/disk/by-path", "disk": "/dev"}.get(spec.type)


def patch(current: str | Element, spec: StoragePoolSpec) -> str:
    """Pool XML for redefining an existing pool: ``current`` (its persistent definition,
    read ``VIR_STORAGE_XML_INACTIVE``) with the declared fields that differ set and
    everything else kept as it is (formatstorage: ``<source>``, target
    ``<permissions>``, unknown elements). Raises ValueError on a value XML cannot hold."""
    root = parse_own(current)
    patch_fields(root, _declared(spec), spec)
    edits.apply(root, spec.xml)  # the escape hatch: only the entries not satisfied yet
    return serialize(root)


def project(spec: StoragePoolSpec) -> Projection:
    """The desired fields, keyed like ``observe`` keys them: those ``spec`` names (the
    others are not compared, and a redefine keeps them)."""
    return {**project_fields(_declared(spec), spec), **edits.project(spec.xml)}


def observe(xml: str | Element) -> Projection:
    """The fields of the pool's type read from ``pool.XMLDesc(0)`` (absent ones None)."""
    root = parse(xml)
    return observe_fields(root, fields_for(root.get("type")))


def edit_refusal(spec: StoragePoolSpec, base: str | Element) -> tuple[int, str] | None:
    """Why an ``xml`` entry of ``spec`` cannot be applied to ``base`` (the current
    definition, or the typed render of a new pool): it would change a typed field
    (``edits.refusal``; the typed fields win), or cannot be applied. None: it can."""
    return edits.refusal(spec.xml, parse(base), observe) if spec.xml else None


def edits_invalid(composed: str, spec: StoragePoolSpec, base: str) -> tuple[int, str] | None:
    """The first ``xml`` entry that makes ``composed`` invalid against libvirt's pool
    schema, with the schema's message, or None (``edits.invalid``)."""
    return edits.invalid(parse(composed), spec.xml, parse(base), edits.LIBVIRT_POOL_RNG)
