"""The inventory: which libvirt objects the tool owns, kept in the state directory.

libvirt lets a domain and a network carry our ownership record in their own
``<metadata>``; pools and volumes (libvirt 9.0) cannot, so the inventory is
their record, and a second one for domains and networks. Each entry names the
reconciler instance that wrote it (``"instance"``, ``statedir.instance_id``;
absent in entries written before instances had ids): see owners.py. One JSON
file, replaced atomically (atomicfile.py: a temporary file, fsync, rename, fsync
the directory): a reconciler
killed at any point leaves the old or the new inventory, never a torn one.

Shape (version 1)::

    {"version": 1, "objects": {"Network/lab": {"instance": "5f0c2a4e-...", "manifest": "net.yaml",
        "digest": "sha256:...", "revision": "abc123", "applied": "2026-11-26T23:00:00Z"},
        "Volume/root": {"pool": "images", "reclaimPolicy": "retain", ...}}}

A VM whose last start libvirt refused also has ``startFailure`` (``START_FAILURE``,
made by ``start_failure``; the executor writes it and removes it after a start that
works; the planner keeps it while the VM should run and does not)::

    "VirtualMachine/web-1": {..., "startFailure": {
        "error": "vms/web-1.yaml:9:11: spec.disks[0].file: start-domain: ...; QEMU runs as ...",
        "message": "start-domain: starting domain web-1: internal error: ...",
        "hint": "QEMU runs as user libvirt-qemu ...", "field": "spec.disks[0].file",
        "at": "2026-11-30T09:00:00Z"}}

A Volume with a ``source`` carries ``contentPending`` (``CONTENT_PENDING``) from
before it is created (or its copy retried) until the executor has copied the
source in and compared the result with it: a volume whose entry still has it is
not in sync, and the next plan copies again::

    "Volume/web-root": {"pool": "images", ..., "contentPending": {"source": "/var/tmp/base.qcow2"}}

A VM with ``updatePolicy: restart`` that was restarted for pending changes carries
``restartedFor`` (``RESTARTED_FOR``): the manifest digest, each difference
(``path: old -> new``) it was restarted for, and the domain id before the restart
(``boot``: while the id is unchanged the restart has not happened, skipped or
failed, and may be tried again). A restart leaves them settled; if one is still
there after the restart, under the same digest, the planner reports it as
unsettled and never restarts the VM for it again (no restart loop)::

    "VirtualMachine/web-1": {..., "restartedFor": {"digest": "sha256:...",
        "changes": ["maxMemory: 201326592 -> 200278016"], "boot": "7"}}

A VM an apply defined (or restarted) and that still differed right after, in the
settle check (reconcile.py), carries ``unsettled`` (``UNSETTLED``): the manifest
digest and each difference (``path -> new``) that did not settle. Under the same
digest the planner neither defines nor restarts it again for those differences
alone; it shows them as unsettled (a bug), in plan, apply and status. A new
manifest (another digest) may try again::

    "VirtualMachine/web-1": {..., "unsettled": {"digest": "sha256:...",
        "changes": ["boot -> ()"]}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import statedir
from reconciler.atomicfile import write_atomically
from reconciler.errors import Problem, ReconcilerError, StateDirError

VERSION = 1
START_FAILURE = "startFailure"  # key of a VM entry: its last refused start
# key of a VM entry: the pending differences (``path: old -> new``) an update policy
# ``restart`` restarted it for, with the manifest digest they were for (planner/settle.py):
# never restarted again for the same ones under the same digest
RESTARTED_FOR = "restartedFor"
# key of a VM entry: differences an apply made that did not settle (reconcile.py),
# with the manifest digest they were for: never defined or restarted for again
UNSETTLED = "unsettled"
CONTENT_PENDING = "contentPending"  # key of a Volume entry: its source copy is unfinished


@dataclass(frozen=True, slots=True)
class Inventory:
    """Owned objects by key ``Kind/name``; each entry is a plain JSON object."""

    objects: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def get(self, key: str) -> Mapping[str, Any] | None:
        return self.objects.get(key)

    def with_entry(self, key: str, entry: Mapping[str, Any]) -> Inventory:
        return Inventory({**self.objects, key: dict(entry)})

    def without(self, key: str) -> Inventory:
        return Inventory({k: v for k, v in self.objects.items() if k != key})


def start_failure(error: str, explanation: Problem | None, when: datetime) -> dict[str, Any]:
    """The ``startFailure`` record of a refused start: the whole error line, and its parts."""
    return {
        "error": error,
        "message": explanation.message if explanation is not None else error,
        "hint": explanation.hint if explanation is not None else "",
        "field": explanation.field if explanation is not None else "",
        "at": when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def load(state_dir: Path) -> Inventory:
    """The inventory in ``state_dir``; empty when there is none yet.

    Raises ``StateDirError`` when the folder or the file cannot be read (not a
    folder, no permission, an I/O error): an unreadable inventory is never
    taken for an empty one. ``ReconcilerError`` for a file that is not an
    inventory.
    """
    path = statedir.path(state_dir, statedir.INVENTORY)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not state_dir.is_dir():  # a missing folder, or one under a file
            raise StateDirError(
                f"{state_dir}: the state directory does not exist or is not a folder; "
                "no inventory can be read (create it, or choose another --state-dir)"
            ) from None
        return Inventory()
    except OSError as exc:
        raise statedir.error(path, "read the inventory", exc) from None
    except ValueError as exc:
        raise ReconcilerError(
            f"{path}: unreadable inventory ({exc}); move it aside to rebuild ownership "
            "from domain metadata"
        ) from exc
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ReconcilerError(f"{path}: not a version {VERSION} inventory")
    return Inventory(dict(data.get("objects", {})))


def save(state_dir: Path, inventory: Inventory) -> None:
    """Replace the inventory atomically: the old file stays whole if this fails.

    Raises ``StateDirError`` naming the path on any OS error (a full disk, a
    read-only or missing folder)."""
    path = statedir.path(state_dir, statedir.INVENTORY)
    payload = json.dumps(
        {"version": VERSION, "objects": dict(sorted(inventory.objects.items()))},
        indent=2,
        sort_keys=True,
    )
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, payload)
    except OSError as exc:
        raise statedir.error(path, "write the inventory", exc) from None


