"""prune"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.manifests import LoadResult
from reconciler.plan import Action
from reconciler.planner.context import PlanOptions, _other_owner
from reconciler.planner.delete import _delete, _down_order
from reconciler.planner.usage import in_use
from reconciler.snapshot import Observed


def _plan_prune(
    load: LoadResult, observed: Observed, options: PlanOptions
) -> tuple[list[Action], str, tuple[str, ...]]:
    """Delete what the tool owns and no manifest declares any more (SPEC §3 prune rules);
    also why some are kept, and which removals wait for confirmation."""
    declared = {f"{m.kind.value}/{m.name}" for m in load.manifests}
    # Only the inventory decides what is pruned: a domain's metadata proves ownership
    # but may have been written by another reconciler (another state directory).
    owned: dict[str, Mapping[str, Any]] = dict(observed.inventory.objects)
    orphans = sorted(k for k in owned if k not in declared)
    if not orphans:
        return [], "", ()
    if not load.complete:
        return [], (
            f"{len(orphans)} owned object(s) without a manifest kept: "
            "not every manifest loaded and passed its checks (see the problems), and a "
            "manifest with a problem may still declare them "
            f"({', '.join(orphans)})"
        ), ()
    if not options.prune:
        return [], f"{len(orphans)} owned object(s) without a manifest kept: prune is off", ()
    # another instance owns it now (its record names it): only dropped from our
    # inventory, which deletes nothing, so neither use nor confirmation holds it (a
    # taken-over network our VMs still use was held, and logged, on every pass)
    forgotten = [a for key in orphans
                 if (a := _other_owner(key, observed, options.instance)) is not None]  # fmt: skip
    orphans = [k for k in orphans if k not in {a.key for a in forgotten}]
    blocked: str = ""
    held: tuple[str, ...] = ()
    elsewhere = [k for k in orphans if k in options.manifests_elsewhere]
    if elsewhere:
        orphans = [k for k in orphans if k not in options.manifests_elsewhere]
        blocked = (
            f"{len(elsewhere)} owned object(s) kept: "
            + "; ".join(f"{k}: its manifest {options.manifests_elsewhere[k]} still exists "
                        f"outside {load.root}" for k in elsewhere)
            + ": this state directory was applied from another manifest directory; apply "
            "that one, or use one state directory per manifest directory"
        )  # fmt: skip
    if options.confirmed_removals is not None:
        held = tuple(k for k in orphans if k not in options.confirmed_removals)
        orphans = [k for k in orphans if k in options.confirmed_removals]
        if held:
            note = (
                f"{len(held)} owned object(s) without a manifest kept until the removal is "
                f"confirmed by a second read of unchanged files ({', '.join(held)})"
            )
            blocked = f"{blocked}; {note}" if blocked else note
    users = in_use(observed, load.manifests, going=set(orphans))
    busy = [k for k in orphans if k in users]
    if busy:
        orphans = [k for k in orphans if k not in users]
        note = (f"{len(busy)} owned object(s) without a manifest kept while in use: "
                + "; ".join(f"{k} by {', '.join(sorted(users[k]))}" for k in busy))  # fmt: skip
        blocked = f"{blocked}; {note}" if blocked else note
    actions = forgotten + [a for key in orphans
                           if (a := _delete(key, owned[key], observed)) is not None]  # fmt: skip
    return _down_order(actions, observed), blocked, held


def manifests_elsewhere(
    records: Mapping[str, Mapping[str, Any]],
    root: str,
    *,
    snapshots: str | None = None,
    exists: Callable[[str], bool] = os.path.isfile,
) -> dict[str, str]:
    """The owned objects (inventory ``Kind/name`` -> record) whose recorded manifest
    path lies outside the manifest directory ``root`` and still exists (``exists``, a
    file test; the only I/O, and the caller's): key -> that path. A state directory
    applied from one manifest directory and then planned with another would otherwise
    prune everything the first declares. Relative recorded paths (records written
    before paths were recorded absolute) are taken from the current directory.
    ``snapshots``: the state directory's git snapshot folder; a path under it is the
    same source at another commit (a file removed by a later commit stays in an old
    snapshot), never "elsewhere"."""
    base = os.path.realpath(root)
    under_snapshots = None if snapshots is None else os.path.realpath(snapshots)
    found: dict[str, str] = {}
    for key, record in records.items():
        path = record.get("manifest")
        if not isinstance(path, str) or not path or path.startswith("<"):
            continue
        real = os.path.realpath(path)
        if _within(real, base) or (under_snapshots is not None
                                   and _within(real, under_snapshots)):  # fmt: skip
            continue
        if exists(real):
            found[key] = path
    return found


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
