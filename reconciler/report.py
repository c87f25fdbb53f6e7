"""Plans and results for people (coloured text on a TTY) and machines (JSON).

Text: one line per object with a ``+ ~ - !`` marker, its fields old -> new
beneath, and Terraform's style of summary line. JSON: the stable shape
documented in docs/plan-json.md (version 1). Pure: values in, text out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.errors import Problem
from reconciler.plan import MARKERS, Action, Change, Op, Plan
from reconciler.units import format_size

if TYPE_CHECKING:  # executor imports libvirt: not needed to print a plan
    from reconciler.executor import ActionResult

JSON_VERSION = 1

_COLOURS = {"+": "32", "~": "33", "-": "31", "!": "35", " ": "0"}
_SIZE_FIELDS = ("memory", "maxMemory", "capacity")


def _paint(text: str, marker: str, colour: bool) -> str:
    if not colour:
        return text
    return f"\033[{_COLOURS[marker]}m{text}\033[0m"


def show_value(path: str, value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, int) and not isinstance(value, bool) and path.endswith(_SIZE_FIELDS):
        return format_size(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _change_line(change: Change, pending: bool = False) -> str:
    how = " (live)" if change.live else ""
    if pending:
        how = " (restart pending)"
    origin = f" [{change.origin}]" if change.origin else ""
    return (
        f"{change.path}: {show_value(change.path, change.old)} -> "
        f"{show_value(change.path, change.new)}{how}{origin}"
    )


def render_plan(plan: Plan, *, colour: bool = False, verbose: bool = False) -> str:
    """The plan as a person reads it, ending with the summary line."""
    lines: list[str] = []
    for action in plan.actions:
        if action.op is Op.NOOP and not (action.restart_pending or action.reason or verbose):
            continue
        marker = MARKERS[action.op]
        if action.op is Op.NOOP and action.restart_pending:
            marker = "!"
        head = f"{marker} {action.kind.value} {action.name}: {action.op.value}"
        if action.source is not None:
            head += f"  ({action.source})"
        lines.append(_paint(head, marker, colour))
        if action.reason:
            lines.append(f"    {action.reason}")
        for change in action.changes:
            lines.append("    " + _change_line(change))
            if change.note:
                lines.append("      " + change.note)
        restart_fields = ", ".join(c.path for c in action.restart_pending)
        if action.restart_pending:
            lines.append(f"    restart pending: {restart_fields}")
            for change in action.restart_pending:
                if change.path not in {c.path for c in action.changes}:
                    lines.append("      " + _change_line(change, pending=True))
        if verbose:
            for step in action.steps:
                lines.append(f"    > {step.describe()}")
    if plan.prune_blocked:
        lines.append(_paint(f"! {plan.prune_blocked}", "!", colour))
    if lines:
        lines.append("")
    lines.append(plan.summary() if plan.has_changes or plan.has_errors else "No changes.")
    return "\n".join(lines)


def render_results(results: Sequence[ActionResult], *, colour: bool = False) -> str:
    lines = []
    for r in results:
        mark = {"ok": "+", "failed": "!", "skipped": "!"}[r.outcome]
        text = (
            f"{'ok' if r.outcome == 'ok' else r.outcome.upper():7} {r.action.kind.value} "
            f"{r.action.name}: {r.action.op.value} ({r.duration:.2f}s)"
        )
        lines.append(_paint(text, mark if r.outcome != "ok" else " ", colour))
        for note in r.notes:
            lines.append(f"        {note}")
        if r.error:
            lines.append(f"        {r.error}")
    return "\n".join(lines)


def render_unsettled(actions: Iterable[Action]) -> str:
    lines = []
    for a in actions:
        lines.append(
            f"! {a.kind.value} {a.name} does not settle: applied, but libvirt still differs "
            "(a bug in reconciler; please report it with this output):"
        )
        lines += ["    " + _change_line(c) for c in a.changes]
    return "\n".join(lines)


# --- JSON ---------------------------------------------------------------------


def _json_value(value: object) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def change_json(change: Change) -> dict[str, Any]:
    """A change as docs/plan-json.md shows it; ``note`` only when there is one."""
    data = {
        "path": change.path,
        "old": _json_value(change.old),
        "new": _json_value(change.new),
        "live": change.live,
        "origin": change.origin or None,
    }
    if change.note:
        data["note"] = change.note
    return data


def action_json(action: Action) -> dict[str, Any]:
    source = action.source
    return {
        "kind": action.kind.value,
        "name": action.name,
        "op": action.op.value,
        "source": None
        if source is None
        else {"file": source.path, "line": source.line or None, "column": source.column or None},
        "reason": action.reason or None,
        "changes": [change_json(c) for c in action.changes],
        "restartPending": [change_json(c) for c in action.restart_pending],
        "steps": [
            {"verb": s.verb, "args": {k: _json_value(v) for k, v in s.shown_args().items()}}
            for s in action.steps
        ],
    }


def problem_json(problem: Problem) -> dict[str, Any]:
    pos = problem.position
    return {
        "file": pos.path,
        "line": pos.line or None,
        "column": pos.column or None,
        "field": problem.field or None,
        "message": problem.message,
        "hint": problem.hint or None,
        "text": str(problem),
    }


def plan_json(
    plan: Plan, problems: Sequence[Problem] = (), notes: Sequence[str] = ()
) -> dict[str, Any]:
    counts = plan.counts()
    return {
        "version": JSON_VERSION,
        "changes": plan.has_changes,
        "summary": plan.summary() if plan.has_changes or plan.has_errors else "No changes.",
        "counts": {op.value: counts.get(op, 0) for op in Op},
        "pruneBlocked": plan.prune_blocked or None,
        "actions": [action_json(a) for a in plan.actions],
        "problems": [problem_json(p) for p in problems],
        "notes": list(notes),
    }


def results_json(results: Sequence[ActionResult], unsettled: Sequence[Action]) -> dict[str, Any]:
    return {
        "results": [
            {
                "kind": r.action.kind.value,
                "name": r.action.name,
                "op": r.action.op.value,
                "outcome": r.outcome,
                "duration": round(r.duration, 3),
                "error": r.error or None,
                "hint": (r.explanation.hint or None) if r.explanation is not None else None,
                "notes": list(r.notes),
            }
            for r in results
        ],
        "unsettled": [action_json(a) for a in unsettled],
    }


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str)
