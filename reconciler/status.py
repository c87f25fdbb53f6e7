"""The status file: what the daemon last found, per object, for ``reconciler status``.

daemon.py builds a ``StatusReport`` from each pass's results and writes it
to ``state_dir/status.json`` (atomically, like the inventory: readers see
the old or the new file, whole); ``reconciler status`` reads it and prints
``render_table`` (``watch`` re-renders it every few seconds); ``summary_line``
is the one-line ``STATUS=`` the daemon sends to systemd. ``reconciler apply``
writes the same file (passstatus.py), marked ``written_by: apply``. The JSON
shape is documented in docs/status-json.md and versioned; fields may be
added, none renamed.

Pure values and file I/O in the state directory only; nothing here talks to
libvirt or decides anything.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from reconciler import statedir
from reconciler.atomicfile import write_atomically
from reconciler.errors import ReconcilerError, StateDirError

VERSION = 1


class ObjectState(StrEnum):
    """Where one object stands after the last pass; worst last."""

    IN_SYNC = "in-sync"  # libvirt matches the manifest
    HEALED = "healed"  # it had drifted (or stopped) and was put back
    PENDING = "pending"  # not yet applied (waiting for a pass, or a dependency)
    RESTART_PENDING = "restart-pending"  # config redefined; takes effect at the next boot
    CONFLICT = "conflict"  # an object of that name exists and is not ours
    FAILED = "failed"  # the last attempt failed; retried with backoff


_LABELS = {
    ObjectState.IN_SYNC: "in sync",
    ObjectState.HEALED: "healed",
    ObjectState.PENDING: "pending",
    ObjectState.RESTART_PENDING: "restart pending",
    ObjectState.CONFLICT: "in conflict",
    ObjectState.FAILED: "failed",
}


@dataclass(frozen=True, slots=True)
class ObjectStatus:
    """One managed object: its state, why, since when, and the revision last applied."""

    kind: str  # "VirtualMachine", "Network", "StoragePool", "Volume"
    name: str
    state: ObjectState
    message: str  # why (the error, what drifted, the fields awaiting a restart); may be ""
    last_change: datetime  # when ``state`` last changed (UTC)
    revision: str | None = None  # source revision (e.g. git commit) last applied to it


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What the daemon wrote after its last pass."""

    written_at: datetime  # UTC
    daemon_pid: int
    revision: str | None  # source revision of the manifests of the last pass
    reconcile_count: int  # passes since the daemon started
    last_duration: float | None  # seconds the last pass took
    objects: tuple[ObjectStatus, ...]
    connected: bool  # whether libvirt answered in the last pass
    written_by: str = "daemon"  # "daemon" (reconciler run) or "apply" (one-shot)
    last_error: str | None = None  # a pass-wide error (manifests failed to load, libvirt down)
    # the git source (gitsource.py): why the last fetched commit is not applied, one line
    source_error: str | None = None


def keep_last_change(
    previous: StatusReport | None, objects: Iterable[ObjectStatus]
) -> tuple[ObjectStatus, ...]:
    """``objects``, with ``last_change`` taken from ``previous`` where the state is unchanged."""
    before = {(o.kind, o.name): o for o in previous.objects} if previous else {}
    kept: list[ObjectStatus] = []
    for obj in objects:
        old = before.get((obj.kind, obj.name))
        if old is not None and old.state == obj.state:
            obj = replace(obj, last_change=old.last_change)
        kept.append(obj)
    return tuple(kept)


# --------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------


def status_path(state_dir: Path) -> Path:
    return statedir.path(state_dir, statedir.STATUS)


def write_status(state_dir: Path, report: StatusReport) -> None:
    """Replace ``state_dir/status.json`` atomically; ``StateDirError`` naming the path
    on any OS error (the previous file stays whole)."""
    path = status_path(state_dir)
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps(to_json(report), indent=2) + "\n")
    except OSError as exc:
        raise statedir.error(path, "write the status file", exc) from None


def read_status(state_dir: Path) -> StatusReport | None:
    """The last report written to ``state_dir``, or None if there is none yet (no
    file, or no state directory: no daemon has run). ``StateDirError`` naming the
    path when it cannot be read (a file in the way of the folder, no permission);
    ``ReconcilerError`` for a file that is not a status file."""
    path = status_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if os.path.lexists(state_dir) and not os.path.isdir(state_dir):
            raise StateDirError(
                f"{state_dir}: the state directory is not a folder; a file is in the way "
                "(move it, or choose another --state-dir or stateDir)"
            ) from None
        return None
    except OSError as exc:
        raise statedir.error(path, "read the status file", exc) from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} status file")
        return from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ReconcilerError(f"{path}: not a valid status file: {exc}") from None


def to_json(report: StatusReport) -> dict[str, Any]:
    """The documented JSON shape (docs/status-json.md)."""
    return {
        "version": VERSION,
        "written_at": _timestamp(report.written_at),
        "daemon_pid": report.daemon_pid,
        "revision": report.revision,
        "reconcile_count": report.reconcile_count,
        "last_duration": report.last_duration,
        "connected": report.connected,
        "last_error": report.last_error,
        "source_error": report.source_error,
        "summary": summary_line(report),
        "written_by": report.written_by,
        "objects": [
            {
                "kind": o.kind,
                "name": o.name,
                "state": o.state.value,
                "message": o.message,
                "last_change": _timestamp(o.last_change),
                "revision": o.revision,
            }
            for o in report.objects
        ],
    }


def from_json(data: dict[str, Any]) -> StatusReport:
    """The inverse of ``to_json``; raises ValueError, KeyError or TypeError on a bad shape."""
    duration = data["last_duration"]
    return StatusReport(
        written_at=_parse_time(data["written_at"]),
        daemon_pid=int(data["daemon_pid"]),
        revision=_optional_text(data.get("revision")),
        reconcile_count=int(data["reconcile_count"]),
        last_duration=None if duration is None else float(duration),
        objects=tuple(
            ObjectStatus(
                kind=str(o["kind"]),
                name=str(o["name"]),
                state=ObjectState(o["state"]),
                message=str(o.get("message") or ""),
                last_change=_parse_time(o["last_change"]),
                revision=_optional_text(o.get("revision")),
            )
            for o in data["objects"]
        ),
        written_by=str(data.get("written_by") or "daemon"),
        connected=bool(data["connected"]),
        last_error=_optional_text(data.get("last_error")),
        source_error=_optional_text(data.get("source_error")),
    )


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: object) -> datetime:
    if not isinstance(text, str):
        raise TypeError(f"expected a timestamp, got {text!r}")
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------
# For people and for systemd
# --------------------------------------------------------------------------


def summary_line(report: StatusReport) -> str:
    """``12 objects: 10 in sync, 1 restart pending, 1 failed`` (+ ``; libvirt unreachable``)."""
    counts = Counter(o.state for o in report.objects)
    total = len(report.objects)
    text = f"{total} object{'' if total == 1 else 's'}"
    parts = [f"{counts[state]} {_LABELS[state]}" for state in ObjectState if counts[state]]
    if parts:
        text += ": " + ", ".join(parts)
    if not report.connected:
        text += "; libvirt unreachable"
    return text


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this host's /proc)."""
    return pid > 0 and Path(f"/proc/{pid}").exists()


def render_table(
    report: StatusReport,
    *,
    now: datetime | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> str:
    """A header (daemon, freshness, revision, libvirt) and one aligned row per object."""
    now = now or datetime.now(UTC)
    running = alive(report.daemon_pid)
    if report.written_by == "apply":
        writer = f"written by apply (pid {report.daemon_pid}{', running' if running else ''})"
    else:
        writer = f"daemon pid {report.daemon_pid} ({'running' if running else 'not running'})"
    header = [
        writer,
        f"status written {_age(report.written_at, now)} ago",
        f"revision {report.revision or '-'}",
        f"{report.reconcile_count} pass{'' if report.reconcile_count == 1 else 'es'}"
        + (f" (last took {report.last_duration:.1f}s)" if report.last_duration is not None else ""),
        "libvirt connected" if report.connected else "libvirt unreachable",
    ]
    lines = [", ".join(header)]
    if report.last_error:
        lines.append(f"last error: {_one_line(report.last_error)}")
    if report.source_error:
        lines.append(f"git source: {_one_line(report.source_error)}")
    lines.append(summary_line(report))
    if not report.objects:
        return "\n".join(lines) + "\n"
    rows = [("KIND", "NAME", "STATE", "SINCE", "MESSAGE")] + [
        (o.kind, o.name, o.state.value, _age(o.last_change, now), _one_line(o.message))
        for o in report.objects
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines.append("")
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append(("  ".join([*cells, row[4]])).rstrip())
    return "\n".join(lines) + "\n"


def _age(when: datetime, now: datetime) -> str:
    """``45s``, ``12m``, ``5h``, ``3d``: how long ago ``when`` was."""
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# On a terminal each frame is drawn over the last in place: cursor home, every line
# cleared to its end as it is written, then the rest of the screen. Clearing the
# whole screen first (as `clear` does) would flash blank between frames.
_HOME, _CLEAR_SCREEN, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[2J", "\x1b[K", "\x1b[J"


def watch(
    frame: Callable[[], tuple[str, int]],
    *,
    interval: float,
    out: TextIO,
    tty: bool,
    count: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show ``frame()`` (text, exit code) every ``interval`` seconds until Ctrl-C, or
    ``count`` frames; returns the last frame's exit code. The screen is cleared only
    on a terminal (``tty``); elsewhere frames follow each other, a blank line apart."""
    code = 0
    shown = 0
    try:
        while True:
            text, code = frame()
            if tty:
                lines = text.rstrip("\n").split("\n")
                start = _HOME + (_CLEAR_SCREEN if not shown else "")
                out.write(start + "".join(line + _CLEAR_LINE + "\n" for line in lines)
                          + _CLEAR_BELOW)  # fmt: skip
            else:
                out.write(("\n" if shown else "") + text)
            out.flush()
            shown += 1
            if count is not None and shown >= count:
                return code
            sleep(interval)
    except KeyboardInterrupt:
        return code
