"""prune"""

from __future__ import annotations

from collections.abc import Mapping
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
    blocked: str = ""
    held: tuple[str, ...] = ()
    if options.confirmed_removals is not None:
        held = tuple(k for k in orphans if k not in options.confirmed_removals)
        orphans = [k for k in orphans if k in options.confirmed_removals]
        if held:
            blocked = (
                f"{len(held)} owned object(s) without a manifest kept until the removal is "
                f"confirmed by a second read of unchanged files ({', '.join(held)})"
            )
    users = in_use(observed, load.manifests, going=set(orphans))
    busy = [k for k in orphans if k in users]
    if busy:
        orphans = [k for k in orphans if k not in users]
        note = (f"{len(busy)} owned object(s) without a manifest kept while in use: "
                + "; ".join(f"{k} by {', '.join(sorted(users[k]))}" for k in busy))  # fmt: skip
        blocked = f"{blocked}; {note}" if blocked else note
    actions = [a for key in orphans
               if (a := _other_owner(key, observed, options.instance)
                   or _delete(key, owned[key], observed)) is not None]  # fmt: skip
    return _down_order(actions, observed), blocked, held
