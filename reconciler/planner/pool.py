"""pool"""

from __future__ import annotations

import dataclasses

from reconciler.diff import diff
from reconciler.model import POOL_BUILT_TYPES, Kind, Manifest, StoragePoolSpec
from reconciler.plan import (
    Action,
    AutostartPool,
    BuildPool,
    Change,
    DefinePool,
    Op,
    StartPool,
    Step,
    StopPool,
)
from reconciler.planner.context import (
    _adoption,
    _autostart,
    _conflict,
    _Context,
    _edit_error,
    _persist,
    _refused_path,
)
from reconciler.xml import edits
from reconciler.xml import pool as pool_xml
from reconciler.xml._fields import parse

# Pool types whose folder a plain build makes (mkdir -p, nothing else: BuildPool()),
# whenever it may have gone missing. Writing on a device (vgcreate, mkfs, a partition
# table: BuildPool(format=True), POOL_BUILT_TYPES) is done once, when the pool is
# created, and only when the manifest says ``build: true``; an iscsi pool never.
_MKDIR_TYPES = frozenset({"dir", "netfs", "fs"})


def _build_on_create(spec: StoragePoolSpec) -> BuildPool | None:
    if spec.type in POOL_BUILT_TYPES and spec.build:
        return BuildPool(format=True)
    return BuildPool() if spec.type in _MKDIR_TYPES else None


def _plan_pool(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, StoragePoolSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    live = ctx.observed.pools.get(m.name)
    record = ctx.owner_record(m)
    if live is None:
        typed = ""
        if spec.xml:  # the escape hatch: on the typed render first (an entry that names
            # nothing is an error at its line, not a ValueError out of render)
            typed = pool_xml.render(m.name, dataclasses.replace(spec, xml=()))
            wrong = pool_xml.edit_refusal(spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.STORAGE_POOL, *wrong)
        xml = pool_xml.render(m.name, spec)
        if spec.xml:  # and the composed definition against libvirt's schema
            wrong = pool_xml.edits_invalid(xml, spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.STORAGE_POOL, *wrong)
        new: list[Step] = [DefinePool(xml)]
        build = _build_on_create(spec)
        if build is not None:
            new.append(build)
        if spec.state == "active":
            new.append(StartPool())
        if spec.autostart:
            new.append(AutostartPool(on=True))
        return Action(
            Kind.STORAGE_POOL,
            m.name,
            Op.CREATE,
            (),
            tuple(new),
            source=m.source,
            owner_record=record,
        )
    key = f"StoragePool/{m.name}"
    owner = ctx.unrecorded_owner(key, ctx.inventory_entry(key) is not None)
    taken = ctx.taken(owner, key, recorded=False)
    if not owner.ours and not spec.adopt and not taken:
        return _conflict(m, f"storage pool '{m.name}'", owner, recorded=False, ctx=ctx)
    desired = pool_xml.project(spec)
    # only what the manifest names is compared (libvirt's own source format, a logical
    # pool's /dev/VG target path are kept); a dir pool names every field it has
    wrong = pool_xml.edit_refusal(spec, live.config_xml)
    if wrong is not None:  # an xml entry that would change a typed field
        return _edit_error(m, Kind.STORAGE_POOL, *wrong)
    config = {**live.config, **edits.observe(parse(live.config_xml), spec.xml)} if spec.xml \
        else live.config
    config_changes = diff(desired, {k: config.get(k) for k in desired})
    if config_changes and spec.xml:  # the composed definition against libvirt's schema
        typed = pool_xml.patch(live.config_xml, dataclasses.replace(spec, xml=()))
        wrong = pool_xml.edits_invalid(pool_xml.patch(live.config_xml, spec), spec, typed)
        if wrong is not None:
            return _edit_error(m, Kind.STORAGE_POOL, *wrong)
    was = live.config.get("type")
    restart = spec.type == "dir" and was == "dir"
    if config_changes and not restart:
        # a pool on a device or a mount (a volume group, a filesystem, an NFS export)
        # is not stopped under its guests, nor built again over its data: the new
        # definition takes effect when the pool next starts
        later = (f"takes effect when the pool next starts (virsh pool-destroy {m.name}; "
                 f"virsh pool-start {m.name})" if live.active else "")  # fmt: skip
        config_changes = [dataclasses.replace(c, live=False, note=later)
                          for c in config_changes]  # fmt: skip
    adoption = _adoption(owner, ctx, taken=taken, recorded=False)
    changes = adoption + config_changes + _persist(live.persistent)
    steps: list[Step] = []
    if config_changes or not live.persistent:
        # the current definition, patched: its <source>, <permissions> and the rest stay
        steps.append(DefinePool(pool_xml.patch(live.config_xml, spec),
                                current=live.config_xml))  # fmt: skip
    if config_changes and restart:
        # libvirt builds only a stopped pool ("already active"); a dir pool restarts
        # harmlessly, on its new definition
        if live.active:
            steps.append(StopPool())
        steps.append(BuildPool())
        if live.active and spec.state == "active":
            steps.append(StartPool())
    if spec.state == "active" and not live.active:
        changes.append(Change("state", "inactive", "active", live=True))
        if spec.type in _MKDIR_TYPES and was in _MKDIR_TYPES:
            steps.append(BuildPool())  # build: mkdir if it went missing
        steps.append(StartPool())
    elif spec.state == "inactive" and live.active:
        changes.append(Change("state", "active", "inactive", live=True))
        steps.append(StopPool())
    auto_changes, auto_steps = _autostart("pool", live.autostart, spec.autostart)
    changes += auto_changes
    steps += auto_steps
    op = Op.UPDATE_LIVE if changes else Op.NOOP
    return Action(
        Kind.STORAGE_POOL,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        owner_record=record,
    )
