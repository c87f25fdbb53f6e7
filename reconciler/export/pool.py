"""pool"""

from __future__ import annotations

from typing import Any

from reconciler.export.kept import kept_in_definition
from reconciler.export.notes import (
    Exported,
    _build,
    _check_name,
    _compare,
    _Notes,
    _unexportable,
    document,
)
from reconciler.model import POOL_TYPES, Kind, StoragePoolSpec
from reconciler.snapshot import PoolRecord
from reconciler.xml import pool as pool_xml
from reconciler.xml._fields import Projection


def pool_spec(projection: Projection, *, active: bool, autostart: bool) -> dict[str, Any]:
    """A StoragePool spec from ``pool_xml.observe``: its type, target path, the source
    fields its type has (formatstorage "Source elements"; an fs or disk pool's one
    device as ``device``), its state and autostart. Never ``build``: adopting a pool
    builds nothing."""
    kind = projection.get("type")
    spec: dict[str, Any] = {"type": kind}
    if projection.get("path") is not None:
        spec["path"] = projection.get("path")
    source: dict[str, Any] = {}
    for key in ("devices", "name", "host", "port", "dir", "format", "iqn", "initiator"):
        value = projection.get(f"source.{key}")
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            if kind in ("fs", "disk") and len(value) == 1:
                source["device"] = value[0]
            else:
                source[key] = list(value)
        else:
            source[key] = value
    if source:
        spec["source"] = source
    return {
        **spec,
        "state": "active" if active else "inactive",
        "autostart": autostart,
        "adopt": True,
    }


def export_pool(record: PoolRecord) -> Exported:
    notes = _Notes()
    kind = Kind.STORAGE_POOL
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    observed = pool_xml.observe(record.config_xml)
    if observed.get("type") not in POOL_TYPES:
        notes.add("type", f"a {observed.get('type')} pool cannot be expressed (manifests "
                  "have " + ", ".join(POOL_TYPES) + " pools)")  # fmt: skip
        return _unexportable(kind, record.name, notes)
    spec = pool_spec(observed, active=record.active, autostart=record.autostart)
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, StoragePoolSpec)
    _compare(pool_xml.project(m.spec), observed, notes)
    rendered = pool_xml.render(record.name, m.spec)
    kept = kept_in_definition(record.config_xml, rendered, notes, silent=_POOL_SILENT,
                              detail=True)  # fmt: skip
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))


_POOL_SILENT = ("uuid", "name", "capacity", "allocation", "available", "source/device/freeExtent")
"""Never listed as kept: the identity and the sizes libvirt reports (a disk pool's free
extents too: libvirt reads them from the partition table)."""
