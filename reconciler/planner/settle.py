"""settle"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from reconciler import inventory as inventory_file
from reconciler.plan import UNSETTLED_NOTE, Change


def _pending_key(change: Change) -> str:
    """One pending difference, as the VM's ``restartedFor`` record keeps it."""
    return f"{change.path}: {change.old!r} -> {change.new!r}"


def settle_key(change: Change) -> str:
    """One difference an apply made that did not settle, as the VM's ``unsettled``
    record (inventory.UNSETTLED) keeps it: the field and the value asked for."""
    return f"{change.path} -> {change.new!r}"


def _not_settled(change: Change) -> Change:
    return dataclasses.replace(change, note=(
        f"{UNSETTLED_NOTE}: an apply of this manifest set {change.new!r} and libvirt "
        f"kept {change.old!r}; not defining or restarting it again for this "
        "(a bug in reconciler: please report it)"
    ))  # fmt: skip


def _stuck_history(entry: Mapping[str, Any] | None, manifest_digest: str) -> dict[str, Any]:
    """The VM's ``unsettled`` record (inventory.UNSETTLED) to keep: the differences an
    apply of this same manifest digest made that did not settle; {} once the manifest
    changed (a new manifest may be tried again)."""
    record = (entry or {}).get(inventory_file.UNSETTLED)
    if not isinstance(record, Mapping) or record.get("digest") != manifest_digest:
        return {}
    changes = record.get("changes")
    if not isinstance(changes, list):
        return {}
    return {inventory_file.UNSETTLED: {"digest": manifest_digest,
                                       "changes": sorted(str(c) for c in changes)}}


def _unsettled(change: Change) -> Change:
    return dataclasses.replace(change, note=(
        f"{UNSETTLED_NOTE}: the VM was restarted for this manifest and still has "
        f"{change.old!r}, not {change.new!r}; not restarting it again for this "
        "(a bug in reconciler: please report it)"
    ))  # fmt: skip


def _restart_history(entry: Mapping[str, Any] | None, manifest_digest: str) -> dict[str, Any]:
    """The VM's ``restartedFor`` record (inventory.RESTARTED_FOR) to keep: the pending
    differences it was restarted for under this same manifest digest; {} once the
    manifest changed (a new manifest may be restarted for again)."""
    record = (entry or {}).get(inventory_file.RESTARTED_FOR)
    if not isinstance(record, Mapping) or record.get("digest") != manifest_digest:
        return {}
    changes = record.get("changes")
    if not isinstance(changes, list):
        return {}
    return {inventory_file.RESTARTED_FOR: {"digest": manifest_digest,
                                           "changes": [str(c) for c in changes],
                                           "boot": record.get("boot")}}  # fmt: skip
