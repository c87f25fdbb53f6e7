"""Why an object is planned for a change: its manifest moved, or libvirt did.

The planner says *what* differs; this says *who* moved. Every object the tool
applied carries the digest of the manifest it applied (``planner.digest``,
kept in the inventory, and in a domain's own metadata). When the digest the
plan would record equals the one recorded last time, the manifest is what
was applied and libvirt moved away from it: *drift* (``virsh edit``, a VM
destroyed, a network stopped, an object undefined). When they differ, the
manifest was edited: a *change*. Actions on objects new to the tool are
*creates*; deletions of objects whose manifest is gone are *removals*.

The daemon names its log events after ``cause`` (``drift`` / ``change`` /
``plan.create`` / ``plan.delete``) and counts drift in metrics.py. Pure:
plans and inventory in, a label out.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from reconciler.inventory import Inventory
from reconciler.plan import Action, Op, Plan


class Cause(StrEnum):
    NONE = "none"  # nothing to do (in sync, refused, in conflict)
    CREATE = "create"  # a manifest for an object the tool never applied
    CHANGE = "change"  # the manifest differs from the one last applied
    DRIFT = "drift"  # libvirt differs from the manifest last applied, which is unchanged
    REMOVAL = "removal"  # the manifest is gone: delete, or forget


# the daemon's log event per cause
EVENTS: Mapping[Cause, str] = {
    Cause.CREATE: "plan.create",
    Cause.CHANGE: "change",
    Cause.DRIFT: "drift",
    Cause.REMOVAL: "plan.delete",
}


def cause(action: Action, inventory: Inventory) -> Cause:
    """Why ``action`` changes anything, judged against the inventory read with the plan."""
    if not action.changes_anything:
        return Cause.NONE
    if action.op in (Op.DELETE, Op.FORGET):
        return Cause.REMOVAL
    record = inventory.get(action.key)
    applied = _digest(record)
    wanted = _digest(action.owner_record)
    if record is None or applied is None:
        return Cause.CREATE if action.op is Op.CREATE else Cause.CHANGE
    # an owned object recreated (undefined out of band) is drift when its manifest is the same
    return Cause.DRIFT if wanted is not None and wanted == applied else Cause.CHANGE


def causes(plan: Plan, inventory: Inventory) -> dict[str, Cause]:
    """``cause`` of every action that changes anything, by action key."""
    found = {a.key: cause(a, inventory) for a in plan.actions}
    return {key: c for key, c in found.items() if c is not Cause.NONE}


def _digest(record: Mapping[str, Any] | None) -> str | None:
    value = record.get("digest") if record is not None else None
    return value if isinstance(value, str) else None
