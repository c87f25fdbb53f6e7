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
from reconciler.model import Kind, StoragePoolSpec
from reconciler.snapshot import PoolRecord
from reconciler.xml import pool as pool_xml
from reconciler.xml._fields import Projection


def pool_spec(projection: Projection, *, active: bool, autostart: bool) -> dict[str, Any]:
    """A StoragePool spec from ``pool_xml.observe``."""
    return {
        "type": projection.get("type"),
        "path": projection.get("path"),
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
    if observed.get("type") != "dir":
        notes.add("type", f"a {observed.get('type')} pool cannot be expressed "
                  "(manifests have directory pools only)")  # fmt: skip
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


_POOL_SILENT = ("uuid", "name", "capacity", "allocation", "available")
"""Never listed as kept: the identity and the sizes libvirt reports."""
