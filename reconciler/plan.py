"""The Plan value: what the planner decided and the executor carries out.

A ``Plan`` is data: an ordered tuple of ``Action``s, one per object, each
with its classification (SPEC §3), the field changes that caused it (old →
new) and the ``Step``s that carry it out. Steps hold everything they need
(rendered XML included), so ``apply`` executes the very value ``plan``
printed, and a plan can be serialised to JSON (see docs/plan-json.md).

Pure data; planner.py makes it, executor.py runs it, report.py prints it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.errors import SourcePosition
from reconciler.model import Kind


class Op(StrEnum):
    """How an object changes. Order of severity is the order here."""

    NOOP = "noop"
    CREATE = "create"
    UPDATE_LIVE = "update-live"  # applied to the running object and its config
    UPDATE_RESTART = "update-restart"  # config redefined now; takes effect at next start
    REPLACE = "replace"  # destroy and recreate: data-losing, never implicit
    DELETE = "delete"
    CONFLICT = "conflict"  # an object of that name exists and is not ours
    FORGET = "forget"  # manifest gone, object kept (reclaimPolicy: retain): stop managing it
    ERROR = "error"  # the change cannot be made (e.g. shrinking a volume)


MARKERS = {
    Op.NOOP: " ",
    Op.CREATE: "+",
    Op.UPDATE_LIVE: "~",
    Op.UPDATE_RESTART: "~",
    Op.REPLACE: "!",
    Op.DELETE: "-",
    Op.CONFLICT: "!",
    Op.FORGET: "-",
    Op.ERROR: "!",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: its path in manifest terms, what libvirt has, what is wanted.

    ``note``: what the user should know about this change, e.g. on a VM's ``state``
    the cause of its last failed start (``last start failed at ...: <error>; <hint>``).
    """

    path: str
    old: Any
    new: Any
    live: bool = False  # can be applied to the running object
    origin: str = ""  # where the new value came from when not the manifest (host defaults)
    note: str = ""  # what the user should know about it (a VM's last refused start)


# Step arguments too long or too private to print (rendered XML with a display
# password, cloud-init seed files with whatever user-data holds).
HIDDEN_ARGS = frozenset({"xml", "files"})


@dataclass(frozen=True, slots=True)
class Step:
    """One call the executor makes. ``verb`` names it; ``args`` are plain values."""

    verb: str
    args: dict[str, Any] = field(default_factory=dict)

    def shown_args(self) -> dict[str, Any]:
        """The arguments worth printing (not ``HIDDEN_ARGS``)."""
        return {k: v for k, v in self.args.items() if k not in HIDDEN_ARGS}

    def describe(self) -> str:
        shown = self.shown_args()
        if not shown:
            return self.verb
        return self.verb + " " + " ".join(f"{k}={v}" for k, v in shown.items())


@dataclass(frozen=True, slots=True)
class Action:
    """What happens to one object."""

    kind: Kind
    name: str
    op: Op
    changes: tuple[Change, ...] = ()
    steps: tuple[Step, ...] = ()
    reason: str = ""
    source: SourcePosition | None = None
    restart_pending: tuple[Change, ...] = ()  # running config differs from the defined one
    owner_record: dict[str, Any] | None = None  # inventory entry written after success
    requires: tuple[str, ...] = ()  # keys of actions that must not have failed
    fingerprint: str | None = None  # set on a VM found in sync: see planner.fingerprint

    @property
    def key(self) -> str:
        return f"{self.kind.value}/{self.name}"

    @property
    def refused(self) -> bool:
        """Not carried out: in conflict, impossible, or a replace nobody allowed."""
        return self.op in (Op.CONFLICT, Op.ERROR) or (self.op is Op.REPLACE and not self.steps)

    @property
    def changes_anything(self) -> bool:
        return self.op not in (Op.NOOP, Op.CONFLICT, Op.ERROR) or bool(self.steps)


@dataclass(frozen=True, slots=True)
class Plan:
    """Every action, in the order they must run (up: pools first; down: VMs first)."""

    actions: tuple[Action, ...]
    prune_blocked: str = ""  # why owned objects without manifests are not deleted
    # owned objects no manifest declares whose removal awaits confirmation (the daemon's
    # two-read rule, PlanOptions.confirmed_removals): neither deleted nor forgotten yet
    held_removals: tuple[str, ...] = ()

    @property
    def has_changes(self) -> bool:
        return any(a.changes_anything for a in self.actions)

    @property
    def has_errors(self) -> bool:
        return any(a.refused for a in self.actions)

    def counts(self) -> Counter[Op]:
        return Counter(a.op for a in self.actions)

    def summary(self) -> str:
        """``Plan: 2 to create, 1 to update (1 needs restart), 0 to delete.``"""
        c = self.counts()
        updates = c[Op.UPDATE_LIVE] + c[Op.UPDATE_RESTART] + c[Op.REPLACE]
        restart = c[Op.UPDATE_RESTART]
        text = f"Plan: {c[Op.CREATE]} to create, {updates} to update"
        if restart:
            text += f" ({restart} needs restart)" if restart == 1 else f" ({restart} need restart)"
        text += f", {c[Op.DELETE]} to delete."
        extra = []
        pending = sum(1 for a in self.actions if a.restart_pending)
        if pending:
            extra.append(f"{pending} restart pending")
        if c[Op.FORGET]:
            extra.append(f"{c[Op.FORGET]} to forget (data kept)")
        if c[Op.CONFLICT]:
            extra.append(f"{c[Op.CONFLICT]} in conflict")
        refused = sum(1 for a in self.actions if a.refused and a.op is not Op.CONFLICT)
        if refused:
            extra.append(f"{refused} refused")
        if extra:
            text += " " + ", ".join(extra).capitalize() + "."
        return text
