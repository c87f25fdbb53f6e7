"""Who owns a libvirt object: this reconciler instance, another one, or nobody.

SPEC §3, "Owners are distinct": every reconciler instance (one state
directory) has an id (``statedir.instance_id``) that its ownership records
carry. Records live in the object where libvirt keeps one (a domain's and a
network's ``<metadata>``) and in the instance's inventory; pools and volumes
carry none in libvirt 9.0, so for them the inventory is the only record.

The rules (``judge``), from the record the object carries and this instance's
inventory:

* a record naming this instance: ours;
* a record naming another instance: that instance's (a conflict naming it:
  instance id, manifest, revision), which ``adopt: true`` takes over once;
* a record naming another instance on an object our inventory lists: it was
  ours and that instance took it over (``Standing.TAKEN``): a conflict naming
  the new owner that ``adopt: true`` never takes back (two instances applying
  the same ``adopt: true`` manifests would otherwise take it back and forth
  on every pass); ``reconciler adopt --from-instance`` is the deliberate way;
* a record without an instance id (written before instances had ids): ours if
  our inventory has the object (the record is then rewritten with our id,
  ``Owner.retag``, once this instance has an id), else a conflict, "owned by an
  unknown reconciler instance";
* no record: ours if our inventory has it, else unmanaged (a conflict).

An instance without an id yet (a state directory never written: ``plan`` does
not make one) owns no record that names an instance.

Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Standing(enum.Enum):
    OURS = "ours"
    OTHER = "other-instance"  # a record naming another instance, not in our inventory
    TAKEN = "taken-over"  # a record naming another instance, in our inventory: taken from us
    UNKNOWN = "unknown-instance"  # a record without an instance id, not in our inventory
    UNMANAGED = "unmanaged"  # no record, not in our inventory


@dataclass(frozen=True, slots=True)
class Record:
    """An ownership record as read from libvirt (domain or network ``<metadata>``)."""

    instance: str | None
    manifest: str | None = None
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    """The verdict on one object. ``record``: the one it carries, if any. ``retag``:
    ours, but its record does not name us yet (written before instances had ids)."""

    standing: Standing
    record: Record | None = None
    retag: bool = False

    @property
    def ours(self) -> bool:
        return self.standing is Standing.OURS

    @property
    def instance(self) -> str | None:
        """The other instance's id (``Standing.OTHER``, ``Standing.TAKEN``), else None."""
        if self.standing in (Standing.OTHER, Standing.TAKEN) and self.record is not None:
            return self.record.instance
        return None

    @property
    def adoptable(self) -> bool:
        """Whether ``adopt: true`` takes it over: anything not ours but an object that
        another instance took over from us (that would take it back and forth)."""
        return not self.ours and self.standing is not Standing.TAKEN

    def describe(self) -> str:
        """Who owns it, in a sentence's terms: ``reconciler instance 1b2c... (manifest
        vms/web.yaml, revision abc123)``."""
        rec = self.record
        details = []
        if rec is not None and rec.manifest:
            details.append(f"manifest {rec.manifest}")
        if rec is not None and rec.revision:
            details.append(f"revision {rec.revision}")
        detail = f" ({', '.join(details)})" if details else ""
        if self.standing in (Standing.OTHER, Standing.TAKEN) and rec is not None:
            return f"reconciler instance {rec.instance}{detail}"
        if self.standing is Standing.UNKNOWN:
            return ("an unknown reconciler instance (its record has no instance id: written "
                    f"before instances had ids{', ' + ', '.join(details) if details else ''})")
        if self.standing is Standing.OURS:
            return "this reconciler instance"
        return "nobody (not managed by reconciler)"

    def label(self) -> str:
        """The ``ownership`` change's old value when it is taken over."""
        if self.standing in (Standing.OTHER, Standing.TAKEN) and self.record is not None:
            return f"instance {self.record.instance}"
        if self.standing is Standing.UNKNOWN:
            return "unknown instance"
        if self.standing is Standing.OURS:
            return "record without instance id"
        return "unmanaged"


def judge(record: Record | None, *, in_inventory: bool, ours: str | None) -> Owner:
    """The owner of an object carrying ``record`` (None: it carries none, or its kind
    cannot), that this instance's inventory lists or not; ``ours``: this instance's
    id (None: it has none yet)."""
    if record is not None and record.instance is not None:
        if ours is not None and record.instance == ours:
            return Owner(Standing.OURS, record)
        return Owner(Standing.TAKEN if in_inventory else Standing.OTHER, record)
    if record is not None:  # written before instances had ids
        if in_inventory:  # (an instance without an id has none to write into it)
            return Owner(Standing.OURS, record, retag=ours is not None)
        return Owner(Standing.UNKNOWN, record)
    return Owner(Standing.OURS if in_inventory else Standing.UNMANAGED)


def ours_label(ours: str | None) -> str:
    """The ``ownership`` change's new value: this instance."""
    return f"instance {ours}" if ours else "this instance (its id is made by the first apply)"


def conflict_reason(what: str, owner: Owner, *, recorded: bool = True) -> str:
    """Why a manifest's object is left alone. ``recorded``: libvirt can keep a record
    on this kind (False for pools and volumes: then the inventory is the record, and
    an object not in it may be another instance's as well as hand-made)."""
    if owner.standing is Standing.TAKEN:
        return (
            f"{what} was this reconciler instance's (its inventory lists it) and has been "
            f"taken over by {owner.describe()}; left alone: adopt: true does not take it "
            "back (two instances would take it back and forth). To take it back on purpose: "
            f"reconciler adopt --from-instance {owner.instance} DIR; to let it go: remove "
            "its manifest here (it is then dropped from this instance's inventory)"
        )
    if owner.standing is Standing.OTHER:
        return (
            f"{what} exists in libvirt and is owned by {owner.describe()}; set adopt: true "
            "to take it over, or rename the manifest (if that instance's state directory is "
            f"lost: reconciler adopt --from-instance {owner.instance} DIR takes back all it "
            "owned)"
        )
    if owner.standing is Standing.UNKNOWN:
        return (
            f"{what} exists in libvirt and is owned by {owner.describe()}; set adopt: true "
            "to take it over, or rename the manifest"
        )
    if recorded:
        return (
            f"{what} exists in libvirt and is not managed by reconciler; "
            "set adopt: true to take it over, or rename the manifest"
        )
    return (
        f"{what} exists in libvirt and is not in this reconciler instance's inventory "
        "(libvirt keeps no owner record on pools and volumes: it is unmanaged, or another "
        "instance's); set adopt: true to take it over, or rename the manifest"
    )


TAKEN_BACK = "taken back"  # the note of an ``ownership`` change made by take_over
# the note of an ``ownership`` change taking a live instance's object (adopt: true): once
TAKEN_FROM = ("taken over from another reconciler instance: that instance will show it as "
              "a conflict naming this one, and not take it back")
# the note of an ``ownership`` change taking over a pool or volume (adopt: true)
NO_RECORD = ("libvirt keeps no owner record on pools and volumes: another reconciler "
             "instance may still list it in its inventory and manage it (its prune or delete "
             "re-checks that no domain uses a volume before deleting its data)")
