"""volume"""

from __future__ import annotations

from typing import Any

from reconciler import rounding
from reconciler.export.notes import (
    Context,
    Exported,
    _build,
    _check_name,
    _compare,
    _Notes,
    _unexportable,
    document,
)
from reconciler.model import Kind, VolumeSpec
from reconciler.snapshot import VolumeRecord
from reconciler.units import format_size
from reconciler.xml import volume as volume_xml
from reconciler.xml._fields import Projection


def volume_spec(projection: Projection, pool: str, backing: str | None,
                reclaim_policy: str = "retain") -> dict[str, Any]:  # fmt: skip
    """A Volume spec from ``volume_xml.observe``; ``backing``: the backing volume's name;
    ``reclaim_policy``: ``"retain"`` or ``"delete"`` (the inventory's, for a managed one)."""
    spec: dict[str, Any] = {"pool": pool, "format": projection.get("format")}
    capacity = projection.get("capacity")
    spec["capacity"] = format_size(int(capacity)) if isinstance(capacity, int) else capacity
    if backing is not None:
        spec["backingVolume"] = backing
    spec["reclaimPolicy"] = reclaim_policy
    spec["adopt"] = True
    return spec


def export_volume(record: VolumeRecord, ctx: Context) -> Exported:
    notes = _Notes()
    kind = Kind.VOLUME
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes, record.pool)
    observed = record.config
    if observed.get("format") not in ("qcow2", "raw"):
        notes.add("format", f"a {observed.get('format')} volume cannot be expressed "
                  "(manifests have qcow2 and raw volumes)")  # fmt: skip
        return _unexportable(kind, record.name, notes, record.pool)
    backing_path = observed.get("backingVolume")
    backing = None
    if isinstance(backing_path, str):
        base = ctx.volume_by_path(backing_path)
        if base is None or base.pool != record.pool:
            where = "no volume" if base is None else f"volume {base.pool}/{base.name}"
            why = f"a manifest names a backing volume in the same pool ({record.pool})"
            notes.add("backingVolume", f"the backing file {backing_path} is {where}; {why}")
            return _unexportable(kind, record.name, notes, record.pool)
        backing = base.name
    # a volume the tool manages keeps the reclaimPolicy its inventory record holds
    entry = ctx.observed.inventory.get(f"{kind.value}/{record.name}") or {}
    policy = "delete" if entry.get("pool") == record.pool \
        and entry.get("reclaimPolicy") == "delete" else "retain"
    doc = document(kind, record.name, volume_spec(observed, record.pool, backing, policy))
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes, record.pool)
    assert isinstance(m.spec, VolumeSpec)
    backing_format = None if backing is None else ctx.volume_formats.get(backing)
    desired = volume_xml.project(m.spec, backing_path=str(backing_path) if backing else None,
                                 backing_format=backing_format)  # fmt: skip
    # compared as the planner compares it: what libvirt makes of the manifest's bytes by
    # either path it may have taken (a qcow2 resize keeps 512-byte multiples; rounding.py)
    have = observed.get("capacity")
    desired["capacity"] = rounding.volume_capacity(
        m.spec.capacity, m.spec.format, have if isinstance(have, int) else None)
    _compare(desired, observed, notes)
    return Exported(kind, record.name, doc, notes.all(), record.pool)
