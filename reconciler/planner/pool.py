"""pool"""

from __future__ import annotations

from reconciler.diff import diff
from reconciler.model import Kind, Manifest, StoragePoolSpec
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
    _persist,
    _refused_path,
)
from reconciler.xml import pool as pool_xml


def _plan_pool(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, StoragePoolSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    live = ctx.observed.pools.get(m.name)
    record = ctx.owner_record(m)
    if live is None:
        new: list[Step] = [DefinePool(pool_xml.render(m.name, spec)), BuildPool()]
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
    config_changes = diff(pool_xml.project(spec), live.config)
    changes = _adoption(owner, ctx, taken=taken) + config_changes + _persist(live.persistent)
    steps: list[Step] = []
    if config_changes or not live.persistent:
        # the current definition, patched: its <source>, <permissions> and the rest stay
        steps.append(DefinePool(pool_xml.patch(live.config_xml, spec),
                                current=live.config_xml))  # fmt: skip
    if config_changes:
        # libvirt builds only a stopped pool ("already active"); a dir pool restarts
        # harmlessly, on its new definition
        if live.active:
            steps.append(StopPool())
        steps.append(BuildPool())
        if live.active and spec.state == "active":
            steps.append(StartPool())
    if spec.state == "active" and not live.active:
        changes.append(Change("state", "inactive", "active", live=True))
        steps += [BuildPool(), StartPool()]  # build: mkdir if it went missing
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
