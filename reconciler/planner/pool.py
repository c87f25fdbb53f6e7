"""pool"""

from __future__ import annotations

import dataclasses

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
    _edit_error,
    _persist,
    _refused_path,
)
from reconciler.xml import edits
from reconciler.xml import pool as pool_xml
from reconciler.xml._fields import parse


def _plan_pool(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, StoragePoolSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    live = ctx.observed.pools.get(m.name)
    record = ctx.owner_record(m)
    if live is None:
        xml = pool_xml.render(m.name, spec)
        if spec.xml:  # the escape hatch: on the typed render, against libvirt's schema
            typed = pool_xml.render(m.name, dataclasses.replace(spec, xml=()))
            wrong = pool_xml.edit_refusal(spec, typed) or pool_xml.edits_invalid(xml, spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.STORAGE_POOL, *wrong)
        new: list[Step] = [DefinePool(xml), BuildPool()]
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
    wrong = pool_xml.edit_refusal(spec, live.config_xml)
    if wrong is not None:  # an xml entry that would change a typed field
        return _edit_error(m, Kind.STORAGE_POOL, *wrong)
    config = {**live.config, **edits.observe(parse(live.config_xml), spec.xml)}
    config_changes = diff(pool_xml.project(spec), config)
    if config_changes and spec.xml:  # the composed definition against libvirt's schema
        typed = pool_xml.patch(live.config_xml, dataclasses.replace(spec, xml=()))
        wrong = pool_xml.edits_invalid(pool_xml.patch(live.config_xml, spec), spec, typed)
        if wrong is not None:
            return _edit_error(m, Kind.STORAGE_POOL, *wrong)
    adoption = _adoption(owner, ctx, taken=taken, recorded=False)
    changes = adoption + config_changes + _persist(live.persistent)
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
