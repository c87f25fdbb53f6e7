"""Planner: desired manifests + observed libvirt state -> an ordered, classified Plan.

What arrives: a ``LoadResult`` (manifests.py), an ``Observed`` snapshot
(observe.py) and ``PlanOptions``. What leaves: a ``Plan`` (plan.py) whose
actions each say what changes (field, old -> new), how (SPEC §3 classes) and
the steps that do it, with all XML rendered. Order: VMs that go away first
(freeing names, ports, disks), then pools, volumes, networks and VMs on the
way up, then the networks, volumes and pools that go away.

Pure: the same inputs give the same plan. Nothing here calls libvirt or
reads files; executor.py carries the plan out.


One file per kind, as ``reconciler/xml/`` is: ``pool.py``, ``volume.py``,
``network.py``, ``vm.py`` plan one manifest of their kind; ``seeds.py`` the
cloud-init seed of a VM; ``prune.py`` the owned objects no manifest declares;
``delete.py`` the steps that delete (prune and ``reconciler delete``);
``usage.py`` who uses what; ``settle.py`` changes that did not settle;
``context.py`` the options and the context they all share. This module holds
``make_plan`` and re-exports the public names of the others.
"""

from __future__ import annotations

from reconciler.manifests import LoadResult
from reconciler.model import Kind, Manifest, VolumeSpec
from reconciler.plan import Action, Plan
from reconciler.planner.context import (
    LIVE_INCOMPARABLE,
    PlanOptions,
    _Context,
    digest,
    fingerprint,
    other_owner,
)
from reconciler.planner.delete import plan_delete
from reconciler.planner.network import _plan_network
from reconciler.planner.pool import _plan_pool
from reconciler.planner.prune import _plan_prune
from reconciler.planner.seeds import SEED_CAPACITY
from reconciler.planner.settle import settle_key
from reconciler.planner.usage import in_use
from reconciler.planner.vm import _plan_vm
from reconciler.planner.volume import _backing_first, _plan_volume
from reconciler.snapshot import Observed
from reconciler.userterms import in_user_terms

__all__ = [
    "LIVE_INCOMPARABLE",
    "SEED_CAPACITY",
    "PlanOptions",
    "digest",
    "fingerprint",
    "in_use",
    "make_plan",
    "other_owner",
    "plan_delete",
    "settle_key",
]


def make_plan(load: LoadResult, observed: Observed, options: PlanOptions) -> Plan:
    """The plan that makes libvirt match ``load.manifests``."""
    ctx = _Context(load.manifests, observed, options)
    by_kind: dict[Kind, list[Manifest]] = {k: [] for k in Kind}
    for m in load.manifests:
        by_kind[m.kind].append(m)
    up: list[Action] = []
    up += [_plan_pool(m, ctx) for m in by_kind[Kind.STORAGE_POOL]]
    up += [_plan_volume(m, ctx) for m in _backing_first(by_kind[Kind.VOLUME])]
    up += [_plan_network(m, ctx) for m in by_kind[Kind.NETWORK]]
    up += [_plan_vm(m, ctx) for m in by_kind[Kind.VIRTUAL_MACHINE]]
    down, blocked, held = _plan_prune(load, observed, options)
    first = [a for a in down if a.kind is Kind.VIRTUAL_MACHINE]
    last = [a for a in down if a.kind is not Kind.VIRTUAL_MACHINE]
    sizes = {m.name: m.spec.capacity for m in by_kind[Kind.VOLUME]
             if isinstance(m.spec, VolumeSpec)}  # fmt: skip
    actions = [in_user_terms(a, ctx.manifests.get((a.kind, a.name)), sizes)
               for a in first + up + last]  # fmt: skip
    return Plan(actions=tuple(actions), prune_blocked=blocked, held_removals=held)
