"""Diff by meaning: two flat projections in, field changes out.

Both sides come from ``reconciler.xml`` (``project`` of the desired spec,
``observe`` of live XML), keyed by the manifest's own field paths, devices by
identity (``disks[web-data].bus``). Comparing them is then a matter of keys and
values; this module adds the grouping the planner needs (which device a key
belongs to, whether a whole device came or went).

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

from reconciler.plan import Change
from reconciler.xml._fields import KEPT

Projection = Mapping[str, object]

_DEVICE = re.compile(r"^([A-Za-z0-9.]+)\[([^\]]+)\]\.")


def diff(desired: Projection, actual: Projection, *, ignore: Collection[str] = ()) -> list[Change]:
    """Every key whose values differ (old: ``actual``, new: ``desired``), in key order.
    A desired ``KEPT`` (a field the manifest does not name) differs from nothing."""
    changes = []
    for key in sorted(set(desired) | set(actual)):
        if key in ignore:
            continue
        new = desired.get(key)
        if new is KEPT:
            continue
        old = actual.get(key)
        if new != old:
            changes.append(Change(key, old, new))
    return changes


def device_of(path: str) -> tuple[str, str] | None:
    """``disks[web-data].bus`` -> ``("disks", "web-data")``; None for a scalar field."""
    match = _DEVICE.match(path)
    return None if match is None else (match.group(1), match.group(2))


def devices(projection: Projection, section: str) -> set[str]:
    """Identities of the devices of ``section`` present in ``projection``."""
    found = set()
    prefix = section + "["
    for key in projection:
        if not key.startswith(prefix):  # (cheap first: most keys are other sections')
            continue
        dev = device_of(key)
        if dev is not None and dev[0] == section and projection[key] is not None:
            found.add(dev[1])
    return found


def by_device(changes: Iterable[Change]) -> dict[tuple[str, str] | None, list[Change]]:
    """Changes grouped by the device they touch (None: scalar fields)."""
    grouped: dict[tuple[str, str] | None, list[Change]] = {}
    for change in changes:
        grouped.setdefault(device_of(change.path), []).append(change)
    return grouped
