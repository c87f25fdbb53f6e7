"""The Plan value: what the planner decided and the executor carries out.

A ``Plan`` is data: an ordered tuple of ``Action``s, one per object, each
with its classification (SPEC §3), the field changes that caused it (old →
new) and the ``Step``s that carry it out. Steps hold everything they need
(rendered XML included), so ``apply`` executes the very value ``plan``
printed, and a plan can be serialised to JSON (see docs/plan-json.md).

Pure data; planner.py makes it, executor.py runs it (one ``ActionResult`` per
action), report.py prints it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.errors import Problem, SourcePosition
from reconciler.model import Kind
from reconciler.units import format_duration


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
    # the path as the manifest writes it, where that differs from ``path`` and is known:
    # ``disks[1].bus`` for ``disks[web-data].bus`` (the device's index in the manifest's list)
    where: str = ""

    @property
    def shown_path(self) -> str:
        """The path a person reads: as the manifest writes it, else ``path``."""
        return self.where or self.path


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A device added, removed or replaced as a whole, said once in the user's terms.

    ``section``: the manifest list (``disks``, ``cdroms``, ``interfaces``,
    ``ipv4.dhcp.hosts``, ``dnsHosts``); ``key``: its identity in ``Change.path``
    (``disks[web-data]``); ``how``: ``add`` | ``remove`` | ``replace`` | ``change``
    (the same device with some fields changed); ``label``: what the user named it by
    (the volume, file, MAC, IP); ``details``: the rest of its identity, shortest
    first (target, bus, size), or for ``change`` each field's ``name old -> new``;
    ``where``: its place in the manifest (``disks[1]``), "" for a device the
    manifest no longer has;
    ``replaces``: the label of the device it replaces (``replaces_key`` its identity
    when that differs: a NIC's old MAC); ``live``: done to the
    running object (else at its next restart). The field changes it stands for stay
    in ``Action.changes`` (their paths start with ``key``).
    """

    section: str
    key: str
    how: str
    label: str
    details: tuple[str, ...] = ()
    where: str = ""
    replaces: str = ""
    live: bool = False
    replaces_key: str = ""  # the identity of the device replaced, when it differs

    def covers(self, path: str) -> bool:
        """Whether the field change ``path`` is part of this device's change."""
        return path.startswith(self.key + ".") or bool(
            self.replaces_key and path.startswith(self.replaces_key + ".")
        )

    @property
    def noun(self) -> str:
        """``disk``, ``cdrom``, ``interface``, ``dhcp host``, ``dns host``."""
        return _DEVICE_NOUNS.get(self.section, self.section)


_DEVICE_NOUNS = {
    "disks": "disk",
    "cdroms": "cdrom",
    "interfaces": "interface",
    "ipv4.dhcp.hosts": "dhcp host",
    "dnsHosts": "dns host",
}


# Step arguments too long or too private to print (rendered XML with a display
# password, cloud-init seed files with whatever user-data holds).
# ``current``: the definition libvirt has now, kept for ``--show-xml`` to diff against.
# ``index``: which ``<ip>`` of a network a DHCP host goes to (libvirt's count, no meaning
# to a reader: the path names the entry).
HIDDEN_ARGS = frozenset({"xml", "files", "current", "index"})


@dataclass(frozen=True, slots=True)
class Step:
    """One call the executor makes. ``verb`` names it; ``args`` are plain values."""

    verb: str
    args: dict[str, Any] = field(default_factory=dict)

    def shown_args(self) -> dict[str, Any]:
        """The arguments worth printing (not ``HIDDEN_ARGS``)."""
        return {k: v for k, v in self.args.items() if k not in HIDDEN_ARGS}

    def disruption(self, op: Op) -> str:
        """What this step does that a user must know before saying yes, or "":
        a graceful stop that ends in a forced power-off, a volume's data deleted.
        ``op``: the action's classification (a replace deletes to recreate)."""
        timeout = self.args.get("timeout")
        after = "" if timeout is None else f", forced off after {format_duration(timeout)}"
        if self.verb == "stop-domain":
            return f"shuts the VM down: ACPI shutdown{after}"
        if self.verb == "restart-domain":
            return f"restarts the VM: ACPI shutdown{after}, then start"
        if self.verb == "delete-volume":
            if op is Op.REPLACE:
                return "deletes the volume and its data, then creates it again empty"
            return "deletes the volume and its data"
        return ""

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
    devices: tuple[DeviceChange, ...] = ()  # devices added/removed/replaced whole
    pending_devices: tuple[DeviceChange, ...] = ()  # the same, of ``restart_pending``

    @property
    def disruptions(self) -> tuple[str, ...]:
        """What the steps do that stops a VM or loses data (``Step.disruption``)."""
        return tuple(d for s in self.steps if (d := s.disruption(self.op)))

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


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What carrying out one ``Action`` came to (made by executor.py, printed by
    report.py, counted by metrics.py): a value, so printing a result needs no libvirt."""

    action: Action
    outcome: str  # ok | failed | skipped
    duration: float = 0.0
    error: str = ""
    notes: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # paths of live changes libvirt refused
    explanation: Problem | None = None  # a refused define/start, placed in the manifest
    failed_step: str = ""  # the verb of the step that failed (a restart's start: start-domain)


UNSETTLED_NOTE = "unsettled"
"""The first word of the note on a pending change that a restart already failed to
settle (``Change.note``, planner._plan_vm): a bug, reported once, never restarted for
again."""


def is_unsettled(change: Change) -> bool:
    """Whether ``change`` is a pending change a restart already failed to settle."""
    return change.note.startswith(UNSETTLED_NOTE + ":")
