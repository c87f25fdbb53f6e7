"""volume"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler import inventory as inventory_file
from reconciler import rounding
from reconciler.diff import devices, diff
from reconciler.model import Kind, Manifest, StoragePoolSpec, VolumeSpec
from reconciler.plan import (
    Action,
    BlockResize,
    Change,
    CreateVolume,
    DeleteVolume,
    FetchImage,
    ImportVolume,
    Op,
    ResizeVolume,
    Step,
)
from reconciler.planner.context import (
    _adoption,
    _conflict,
    _Context,
    _recorded,
    _refused_path,
    _rounding_notes,
)
from reconciler.snapshot import DomainRecord
from reconciler.units import format_size
from reconciler.xml import volume as volume_xml
from reconciler.xml._fields import ChangeClass, change_class


def _backing_first(volumes: list[Manifest]) -> list[Manifest]:
    names = {m.name: m for m in volumes}
    ordered: list[Manifest] = []
    seen: set[str] = set()

    def visit(m: Manifest) -> None:
        if m.name in seen:
            return
        seen.add(m.name)
        assert isinstance(m.spec, VolumeSpec)
        base = names.get(m.spec.backing_volume or "")
        if base is not None:
            visit(base)
        ordered.append(m)

    for m in volumes:
        visit(m)
    return ordered


def _plan_volume(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, VolumeSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    wrong_pool = _pool_refusal(m, spec, ctx)
    if wrong_pool is not None:
        return wrong_pool
    logical = _pool_type(spec.pool, ctx) in _BLOCK_POOLS
    live = ctx.observed.volumes.get((spec.pool, m.name))
    requires = [f"StoragePool/{spec.pool}"]
    backing_path = backing_format = None
    if spec.backing_volume:
        requires.append(f"Volume/{spec.backing_volume}")
        backing_path = ctx.volume_path(spec.pool, spec.backing_volume)
        backing_format = ctx.volume_formats.get(spec.backing_volume)
    entry = ctx.inventory_entry(f"Volume/{m.name}")
    owned = entry is not None and entry.get("pool") == spec.pool
    pending = _content_pending(entry) if owned else None
    copies = live is None or pending is not None  # the source's facts matter only then
    too_big = (
        (_source_too_big(m, spec, ctx) if copies else None)
        or (_wrong_image_format(m, spec, ctx) if copies else None)
        or _remote_overlay(m, spec, ctx)
    )
    if too_big is not None:
        return too_big
    # A volume with a source is done only when its content is (issue 11): the record
    # says "content pending" until the executor has copied and verified it.
    record = ctx.owner_record(m, pool=spec.pool, reclaimPolicy=spec.reclaim_policy)
    # the record a create or a re-copy writes before the copy starts
    copying = {**record, inventory_file.CONTENT_PENDING: {"source": spec.content}}
    xml = volume_xml.render(m.name, spec, backing_path=backing_path, backing_format=backing_format)
    copy = ImportVolume(spec.pool, spec.source, backing_path, url=spec.source_url,
                        sha256=spec.source_sha256)  # fmt: skip
    # a URL's image is fetched and verified first: a wrong one fails before libvirt
    fetch: list[Step] = [
        FetchImage(spec.source_url, spec.source_sha256, spec.format, spec.capacity)
    ] if spec.source_url and spec.source_sha256 else []
    create: list[Step] = [*fetch, CreateVolume(spec.pool, xml)]
    if spec.content:
        create.append(copy)
    if live is None and spec.pool in ctx.unlisted_pools:
        unseen = _unseen_volume(m, spec, ctx, owned)
        if unseen is not None:
            return unseen
    if live is None:
        # what the volume will be, said on the plan's create line (a create has no old)
        made = [Change("capacity", None, spec.capacity), Change("format", None, spec.format)]
        if spec.backing_volume:
            made.append(Change("backingVolume", None, spec.backing_volume))
        return Action(
            Kind.VOLUME,
            m.name,
            Op.CREATE,
            tuple(made),
            tuple(create),
            source=m.source,
            owner_record=copying if spec.content else record,
            requires=tuple(requires),
        )
    owner = ctx.unrecorded_owner(f"Volume/{m.name}", owned)
    taking_back = ctx.taken(owner, f"Volume/{m.name}", recorded=False)
    if not owned and not spec.adopt and not taking_back:
        return _conflict(m, f"volume '{m.name}' in pool '{spec.pool}'", owner, recorded=False,
                         ctx=ctx)  # fmt: skip
    desired = volume_xml.project(spec, backing_path=backing_path, backing_format=backing_format)
    current = live.config
    have = current.get("capacity")
    # what libvirt makes of the manifest's bytes, by the path it took (rounding.py)
    desired["capacity"] = (
        rounding.logical_capacity(spec.capacity) if logical
        else rounding.volume_capacity(spec.capacity, spec.format,
                                      have if isinstance(have, int) else None)
    )  # fmt: skip
    if logical:
        # an LV's XML names no format (libvirt's logical backend has no volume formats);
        # raw is required of the manifest (_pool_refusal), not read back
        desired["format"] = current.get("format")
    adoption = _adoption(owner, ctx, taken=taking_back, recorded=False)
    changes = _rounding_notes(adoption + diff(desired, current),
                              {"capacity": spec.capacity})  # fmt: skip
    recorded = _recorded(entry if owned else None, record, ["reclaimPolicy"])
    steps: list[Step] = []
    replace = [c for c in changes
               if change_class(volume_xml.FIELDS, c.path) is ChangeClass.REPLACE]  # fmt: skip
    changes += recorded
    capacity = next((c for c in changes if c.path == "capacity"), None)
    key = f"Volume/{m.name}"
    if replace:
        if key not in ctx.options.allow_replace:
            return Action(
                Kind.VOLUME,
                m.name,
                Op.REPLACE,
                tuple(changes),
                (),
                reason="changing "
                + ", ".join(c.path for c in replace)
                + " recreates the volume and loses its data; not done unless asked: "
                f"reconciler apply --allow-replace {key}",
                source=m.source,
                requires=tuple(requires),
            )
        create[len(fetch)] = CreateVolume(spec.pool, xml, current=live.xml)
        steps = [*fetch, DeleteVolume(spec.pool), *create[len(fetch):]]
        return Action(
            Kind.VOLUME,
            m.name,
            Op.REPLACE,
            tuple(changes),
            tuple(steps),
            source=m.source,
            owner_record=copying if spec.content else record,
            requires=tuple(requires),
        )
    if capacity is not None:
        old, new = int(capacity.old or 0), int(capacity.new or 0)
        if new < old:
            return Action(
                Kind.VOLUME,
                m.name,
                Op.ERROR,
                tuple(changes),
                (),
                reason=f"shrinking capacity from {format_size(old)} to {format_size(new)} is "
                f"refused (it would cut off data); set capacity: {format_size(old)} or more",
                source=m.source,
            )
        if logical:
            return Action(
                Kind.VOLUME, m.name, Op.ERROR, tuple(changes), (), source=m.source,
                reason=f"growing a logical volume from {format_size(old)} to "
                f"{format_size(new)} is not something libvirt 9.0 can do (its logical "
                "storage backend has no resize); grow it by hand (lvextend -L SIZE "
                f"{live.path}, then virsh pool-refresh {spec.pool}), or set capacity: "
                f"{format_size(old)}",
            )  # fmt: skip
        user = _running_user(ctx.observed.domains.values(), spec.pool, m.name)
        taken = live.allocation
        if user is None and rounding.resize_refused(new, taken):  # (QEMU's resize is not)
            return Action(
                Kind.VOLUME,
                m.name,
                Op.ERROR,
                tuple(changes),
                (),
                reason=f"growing capacity from {old} to {new} bytes is refused by libvirt: "
                f"the volume's file already takes {taken} bytes (whole filesystem blocks), "
                f"and libvirt resizes to no less than that; set capacity: {taken}B or more",
                source=m.source,
            )
        if user is not None:
            steps.append(
                BlockResize(domain=user[0], target=user[1], capacity=new)
            )
        else:
            steps.append(ResizeVolume(spec.pool, new))
        changes = [dataclasses.replace(c, live=True) if c is capacity else c for c in changes]
    if pending is not None and spec.content:
        # made by this tool, its copy never finished (killed, or the copy failed):
        # copy again over the whole volume, unless a running VM uses it by now
        user = _running_user(ctx.observed.domains.values(), spec.pool, m.name)
        if user is not None:
            return Action(
                Kind.VOLUME, m.name, Op.ERROR, tuple(changes), (), source=m.source,
                owner_record=copying,
                reason=f"the copy of {spec.content} into this volume never completed, and "
                f"running VM {user[0]} uses it now; not overwriting it. Stop the VM (the "
                "copy is retried), or delete the volume to have it made again",
            )  # fmt: skip
        was = pending.get("source") or spec.content
        changes.append(Change("content", f"copy of {was} pending", f"copy of {spec.content}",
                              live=True))  # fmt: skip
        steps += [*fetch, copy]
        record = copying
    op = Op.UPDATE_LIVE if changes else Op.NOOP
    return Action(
        Kind.VOLUME,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        owner_record=record,
        requires=tuple(requires),
    )


_BLOCK_POOLS = frozenset({"logical", "zfs"})
"""Pool types whose volumes are block devices (LVs, zvols): raw data, no image format."""


def _pool_type(pool: str, ctx: _Context) -> str | None:
    """The pool's type: its manifest's, else libvirt's; None when neither is known."""
    m = ctx.manifests.get((Kind.STORAGE_POOL, pool))
    if m is not None and isinstance(m.spec, StoragePoolSpec):
        return m.spec.type
    live = ctx.observed.pools.get(pool)
    kind = None if live is None else live.config.get("type")
    return kind if isinstance(kind, str) else None


def _pool_refusal(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """A volume its pool's type cannot hold: an LV or zvol in another format than raw
    (libvirt would make it anyway, holding raw data labelled qcow2), a volume in a
    disk or iscsi pool (partitions and LUNs are not Volume manifests)."""
    kind = _pool_type(spec.pool, ctx)
    if kind in _BLOCK_POOLS and spec.format != "raw":
        said = "format: qcow2" if "format" in m.document["spec"] else "no format (qcow2)"
        return Action(
            Kind.VOLUME, m.name, Op.ERROR,
            source=m.position(("spec", "format")) if "format" in m.document["spec"]
            else m.source,
            reason=f"volume in {kind} pool {spec.pool} has {said}: a "
            f"{'logical volume' if kind == 'logical' else 'zvol'} holds raw data only; "
            "set format: raw",
        )  # fmt: skip
    if kind in ("disk", "iscsi"):
        what = "partitions" if kind == "disk" else "LUNs made on the iSCSI target"
        return Action(
            Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "pool")),
            reason=f"the volumes of {kind} pool {spec.pool} are {what}: they are not made "
            "from Volume manifests; put the volume in a dir, fs, netfs or logical pool",
        )  # fmt: skip
    return None


def _content_pending(entry: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The volume's unfinished copy, from its inventory entry (``CONTENT_PENDING``)."""
    found = None if entry is None else entry.get(inventory_file.CONTENT_PENDING)
    return found if isinstance(found, Mapping) else None


def _source_too_big(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """A source image larger than the volume cannot be copied in: an error at plan time
    (the size is known when reconcile.py could read the file)."""
    size = ctx.options.source_sizes.get(spec.content) if spec.content else None
    if size is None or size <= spec.capacity:
        return None
    return Action(
        Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "source")),
        reason=f"source {spec.content} holds {format_size(size)} ({size} bytes), more than "
        f"capacity {format_size(spec.capacity)}: the copy cannot fit; set capacity: "
        f"{format_size(size)} or more",
    )  # fmt: skip


def _wrong_image_format(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """A URL source whose image is not in the volume's format: libvirt's upload copies
    the image as it is, so a qcow2 volume needs a qcow2 image and a raw one raw data
    (known when reconcile.py could read the cached file or the image's first bytes)."""
    found = ctx.options.source_formats.get(spec.source_url) if spec.source_url else None
    if found is None or found == spec.format:
        return None
    return Action(
        Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "format")),
        reason=f"source {spec.source_url} is a {found} image, but the volume's format is "
        f"{spec.format}; set format: {found}" if found in ("qcow2", "raw") else
        f"source {spec.source_url} is a {found} image, which a {spec.format} volume cannot "
        "hold; convert it to qcow2 or raw (qemu-img convert) and publish that",
    )  # fmt: skip


def _remote_overlay(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """``source`` with ``backingVolume`` on a remote host: libvirt's copy from another
    volume (``virStorageVolCreateXMLFrom``) writes the whole image and drops the backing
    store, and nothing runs qemu-img on the controller, so it cannot be made there."""
    if not (ctx.options.remote and spec.source and spec.backing_volume):
        return None
    return Action(
        Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "backingVolume")),
        reason=f"a copy of source {spec.source} on backing volume {spec.backing_volume} "
        "cannot be made on a remote host (libvirt's storage API copies whole images); "
        "drop backingVolume to copy the whole image, or run reconciler on that host",
    )  # fmt: skip


def _unseen_volume(m: Manifest, spec: VolumeSpec, ctx: _Context, owned: bool) -> Action | None:
    """A volume in a pool that is not active: libvirt cannot list it. One we own is
    taken to be there (it is compared once the pool runs); one we do not is created
    after the pool starts (None), which needs the pool to be wanted active."""
    if owned:
        return Action(Kind.VOLUME, m.name, Op.NOOP, source=m.source,
                      reason=f"pool {spec.pool} is not active: the volume is checked "
                      "once it runs")  # fmt: skip
    pool = ctx.manifests.get((Kind.STORAGE_POOL, spec.pool))
    if pool is not None and isinstance(pool.spec, StoragePoolSpec) and pool.spec.state == "active":
        return None
    reason = (
        f"pool {spec.pool} is not active, so the volume cannot be made; start it "
        f"(state: active in its manifest, or virsh pool-start {spec.pool})"
    )
    return Action(Kind.VOLUME, m.name, Op.ERROR, source=m.source, reason=reason)


def _running_user(
    domains: Iterable[DomainRecord], pool: str, volume: str
) -> tuple[str, str] | None:
    """(domain, target) of a running domain that has the volume as a disk."""
    for d in domains:
        live = d.live
        if live is None:
            continue
        for key in devices(live, "disks"):
            if (
                live.get(f"disks[{key}].pool") == pool
                and live.get(f"disks[{key}].volume") == volume
            ):
                return (d.name, str(live.get(f"disks[{key}].target")))
    return None
