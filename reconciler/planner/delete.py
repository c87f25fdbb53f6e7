"""delete"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model import Kind
from reconciler.plan import (
    Action,
    Change,
    DeleteSeed,
    DeleteVolume,
    Op,
    Plan,
    Step,
    StopDomain,
    StopNetwork,
    StopPool,
    UndefineDomain,
    UndefineNetwork,
    UndefinePool,
)
from reconciler.planner.context import other_owner
from reconciler.planner.usage import in_use
from reconciler.snapshot import Observed


def _down_order(actions: list[Action], observed: Observed) -> list[Action]:
    """Deletes in the order they can run: VMs, networks, volumes (clones first), pools."""
    order = {Kind.VIRTUAL_MACHINE: 0, Kind.NETWORK: 1, Kind.VOLUME: 2, Kind.STORAGE_POOL: 3}
    clones = {a.name for a in actions if a.kind is Kind.VOLUME and _has_backing(a, observed)}
    return sorted(actions, key=lambda a: (order[a.kind], a.name not in clones, a.name))


def plan_delete(keys: Sequence[str], observed: Observed, *, delete_data: bool = False,
                instance: str | None = None) -> Plan:  # fmt: skip
    """The plan of ``reconciler delete``: the owned objects ``keys`` (``Kind/name``, each in
    ``observed.inventory``; KeyError otherwise) deleted as a prune deletes them: a VM
    shut down gracefully (forced off after its shutdownTimeout) and undefined, with its
    cloud-init seed; a network or pool stopped and undefined (a pool's files kept); a
    volume's data deleted only under ``reclaimPolicy: delete`` or with ``delete_data``,
    else it is forgotten (kept, no longer managed). One whose record names another
    instance than ``instance`` (this one's id) is refused. Pure, like ``make_plan``."""
    actions = []
    users = in_use(observed, (), going=set(keys))
    for key in keys:
        owner = other_owner(key, observed, instance)
        if owner is not None:
            kind, _, name = key.partition("/")
            actions.append(Action(Kind(kind), name, Op.ERROR,
                                  reason=f"owned by {owner.describe()} now: not deleted"))
            continue
        if key in users:
            kind, _, name = key.partition("/")
            actions.append(Action(
                Kind(kind), name, Op.ERROR,
                reason=f"in use by {', '.join(sorted(users[key]))}: not deleted; delete those "
                "too, or take it out of their manifests first",
            ))  # fmt: skip
            continue
        entry = dict(observed.inventory.objects[key])
        why = "deleted on request"
        if delete_data and key.startswith(f"{Kind.VOLUME.value}/"):
            if entry.get("reclaimPolicy") != "delete":
                why = "deleted on request with --delete-data (its reclaimPolicy retain overridden)"
            entry["reclaimPolicy"] = "delete"
        action = _delete(key, entry, observed, why=why)
        if action is None:
            continue
        if action.op is Op.FORGET and action.kind is Kind.VOLUME and not delete_data:
            action = dataclasses.replace(action, reason="deleted on request; reclaimPolicy "
                                         "retain keeps its data (pass --delete-data to delete "
                                         "it)")  # fmt: skip
        actions.append(action)
    return Plan(actions=tuple(_down_order(actions, observed)))


def _has_backing(action: Action, observed: Observed) -> bool:
    for (_pool, name), record in observed.volumes.items():
        if name == action.name:
            return record.config.get("backingVolume") is not None
    return False


def _delete(
    key: str, entry: Mapping[str, Any], observed: Observed, why: str = ""
) -> Action | None:
    kind_name, _, name = key.partition("/")
    kind = Kind(kind_name)
    where = why or f"manifest {entry.get('manifest', '?')} is gone"
    gone = Action(kind, name, Op.FORGET, reason="already gone from libvirt; dropped from inventory")
    if kind is Kind.VIRTUAL_MACHINE:
        dom = observed.domains.get(name)
        if dom is None:
            seeds = _delete_seeds(entry, observed)
            if not seeds:
                return gone
            why = where + "; its cloud-init seed goes too"
            return Action(kind, name, Op.DELETE, (Change("exists", True, False),),
                          tuple(seeds), reason=why)  # fmt: skip
        steps: list[Step] = []
        if dom.active:
            timeout = float(entry.get("shutdownTimeout", 120))
            steps.append(StopDomain(timeout))
        if dom.persistent:  # a transient domain is gone once stopped
            steps.append(UndefineDomain())
        steps += _delete_seeds(entry, observed)
        return Action(
            kind, name, Op.DELETE, (Change("exists", True, False),), tuple(steps), reason=where
        )
    if kind is Kind.NETWORK:
        net = observed.networks.get(name)
        if net is None:
            return gone
        steps = [StopNetwork()] if net.active else []
        steps += [UndefineNetwork()] if net.persistent else []
        return Action(
            kind, name, Op.DELETE, (Change("exists", True, False),), tuple(steps), reason=where
        )
    if kind is Kind.STORAGE_POOL:
        pool = observed.pools.get(name)
        if pool is None:
            return gone
        steps = [StopPool()] if pool.active else []
        steps += [UndefinePool()] if pool.persistent else []
        return Action(
            kind,
            name,
            Op.DELETE,
            (Change("exists", True, False),),
            tuple(steps),
            reason=where + "; the pool's directory and files are kept",
        )
    pool_name = str(entry.get("pool", ""))
    live_pool = observed.pools.get(pool_name)
    if live_pool is not None and not live_pool.active and entry.get("reclaimPolicy") == "delete":
        return Action(kind, name, Op.NOOP, reason=where + f"; reclaimPolicy delete, but pool "
                      f"{pool_name} is not active: deleted once it runs")  # fmt: skip
    if (pool_name, name) not in observed.volumes and (live_pool is None or live_pool.active):
        return gone
    if entry.get("reclaimPolicy") != "delete":
        return Action(kind, name, Op.FORGET, reason=where + "; reclaimPolicy retain keeps its data")
    return Action(
        kind,
        name,
        Op.DELETE,
        (Change("exists", True, False),),
        (DeleteVolume(pool_name),),
        reason=where if "--delete-data" in where else where + "; reclaimPolicy delete",
    )


def _delete_seeds(entry: Mapping[str, Any], observed: Observed) -> list[Step]:
    """Steps that delete the cloud-init seed volumes of a VM that goes."""
    steps: list[Step] = []
    for seed in entry.get("seeds", ()):
        if not isinstance(seed, Mapping):
            continue
        pool, volume = str(seed.get("pool")), str(seed.get("volume"))
        if (pool, volume) in observed.volumes:
            steps.append(DeleteSeed(pool, volume))
    return steps
