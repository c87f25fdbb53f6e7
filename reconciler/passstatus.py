"""What a pass leaves in the status file, beyond the planned objects: manifests that
failed to load, shown as failed objects, and the report a one-shot ``apply`` writes.

A manifest that fails to load is not planned, so without this it would
vanish from ``reconciler status`` exactly when it needs attention. Each load
problem becomes a *failed* object named by the document it is in: its
``kind`` and ``metadata.name`` when the document can still be read, else
kind ``Manifest`` and the file's path (a YAML syntax error, a file that
cannot be read). The daemon (daemon.py) adds them to every report;
``reconciler apply`` writes a report of the same shape (``apply_report``),
so ``status`` reflects the last apply as well as the daemon's last pass.

Reads the manifest files named by problems (already read by the pass) and
nothing else; decides nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from reconciler.errors import Problem
from reconciler.status import ObjectState, ObjectStatus, StatusReport, keep_last_change
from reconciler.yamlsource import Document, YamlProblem, parse_documents

UNREADABLE_KIND = "Manifest"  # the kind of a status entry for a file no document of which reads


def load_error(problems: Sequence[Problem]) -> str | None:
    """The pass-wide ``last_error`` for manifests that failed to load, or None."""
    if not problems:
        return None
    return (
        f"{len(problems)} manifest problem(s); nothing is deleted until they are fixed. "
        f"First: {problems[0]}"
    )


def failed_manifests(
    problems: Iterable[Problem], now: datetime, revision: str | None
) -> list[ObjectStatus]:
    """One failed object per document (or unreadable file) with a problem, in file order;
    several problems of one document are one entry, the first one's message and a count.
    Problems that are not in a file (a missing manifest directory) are left to
    ``last_error``."""
    found: dict[tuple[str, str], list[Problem]] = {}
    documents: dict[str, list[Document] | None] = {}
    for problem in problems:
        path = problem.position.path
        if not os.path.isfile(path):
            continue
        if path not in documents:
            documents[path] = _documents(path)
        found.setdefault(_owner(problem, documents[path]), []).append(problem)
    statuses = []
    for (kind, name), listed in found.items():
        message = str(listed[0])
        if len(listed) > 1:
            message += f" (and {len(listed) - 1} more problem{'s' if len(listed) > 2 else ''})"
        statuses.append(ObjectStatus(kind, name, ObjectState.FAILED, message, now, revision))
    return statuses


def with_load_failures(
    statuses: Sequence[ObjectStatus], problems: Iterable[Problem], now: datetime,
    revision: str | None,
) -> list[ObjectStatus]:  # fmt: skip
    """``statuses`` with ``failed_manifests`` added; a planned object a problem names
    (its manifest did not load, so the plan only saw what libvirt has) becomes failed."""
    failed = {(s.kind, s.name): s for s in failed_manifests(problems, now, revision)}
    merged = [failed.pop((s.kind, s.name), s) for s in statuses]
    return [*merged, *failed.values()]


def apply_report(
    objects: Sequence[ObjectStatus],
    problems: Sequence[Problem],
    *,
    previous: StatusReport | None,
    now: datetime,
    duration: float,
    revision: str | None,
) -> StatusReport:
    """The report ``reconciler apply`` writes after its pass (``written_by: apply``);
    ``objects`` as the daemon makes them (``daemon.object_statuses``)."""
    return StatusReport(
        written_at=now,
        daemon_pid=os.getpid(),
        revision=revision,
        reconcile_count=1,
        last_duration=duration,
        objects=keep_last_change(previous, objects),
        connected=True,
        last_error=load_error(problems),
        written_by="apply",
    )


def _documents(path: str) -> list[Document] | None:
    """The documents of ``path`` that parse, up to the first that does not; None if the
    file cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    documents: list[Document] = []
    with contextlib.suppress(YamlProblem):  # the documents before a broken one still count
        for document in parse_documents(text):
            documents.append(document)
    return documents


def _owner(problem: Problem, documents: list[Document] | None) -> tuple[str, str]:
    """(kind, name) of the document ``problem`` is in, else (``Manifest``, file path)."""
    unreadable = (UNREADABLE_KIND, problem.position.path)
    line = problem.position.line
    if not documents or not line:
        return unreadable
    for document in documents:
        first = int(document.node.start_mark.line) + 1
        last = int(document.node.end_mark.line) + 1
        if first <= line <= last:
            value = document.value
            if not isinstance(value, dict):
                return unreadable
            kind, metadata = value.get("kind"), value.get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            if isinstance(kind, str) and kind and isinstance(name, str) and name:
                return kind, name
            return unreadable
    return unreadable
