"""Plans and results for people (coloured text on a TTY) and machines (JSON).

Text: one line per object with a ``+ ~ - !`` marker, its fields old -> new
beneath, and Terraform's style of summary line. JSON: the stable shape
documented in docs/plan-json.md (version 1). Pure: values in, text out.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.errors import Problem
from reconciler.model import Kind
from reconciler.plan import MARKERS, Action, ActionResult, Change, DeviceChange, Op, Plan
from reconciler.units import format_bandwidth, format_duration, format_size
from reconciler.xml._fields import ParseError, parse, serialize
from reconciler.xml.domain import secret_token

JSON_VERSION = 2  # 2: disks keyed by image, devices[].change "change"

_COLOURS = {"+": "32", "~": "33", "-": "31", "!": "35", " ": "0", "!!": "31"}
_SIZE_FIELDS = ("memory", "maxMemory", "capacity")
_DURATION_FIELDS = ("shutdownTimeout",)
_DEVICE_MARKERS = {"add": "+", "remove": "-", "replace": "~", "change": "~"}
DISRUPTION_MARKER = "!!"
"""Starts each line that says a step stops a VM or deletes data (``Step.disruption``)."""


def _paint(text: str, marker: str, colour: bool) -> str:
    if not colour:
        return text
    return f"\033[{_COLOURS[marker]}m{text}\033[0m"


def show_value(path: str, value: object) -> str:
    """``value`` of field ``path`` as a manifest writes it: sizes in the largest exact
    binary unit (``1GiB``), timeouts in seconds (``120s``), bandwidths in KiB/s or KiB
    (``units.format_bandwidth``), lists in brackets."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    rate = format_bandwidth(path, value)
    if rate is not None:
        return rate
    if isinstance(value, int | float) and path.endswith(_DURATION_FIELDS):
        return format_duration(value)
    if isinstance(value, int) and path.endswith(_SIZE_FIELDS):
        return format_size(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _change_line(change: Change, pending: bool = False) -> str:
    how = " (live)" if change.live else ""
    if pending:
        how = " (restart pending)"
    origin = f" [{change.origin}]" if change.origin else ""
    return (
        f"{change.shown_path}: {show_value(change.path, change.old)} -> "
        f"{change.shown or show_value(change.path, change.new)}{how}{origin}"
    )


def device_line(device: DeviceChange) -> str:
    """``+ disk web-data (vdb, virtio, 20GiB), live``: marker, noun, the name the user
    gave it, the rest of its identity, and whether the running object gets it now."""
    label = device.label
    if device.how == "change":  # changed in place: its fields, one line
        where = device.where or device.key
        named = "" if label in where else f" ({label})"
        what = f"~ {where}{named}: {', '.join(device.details)}"
        return what + (", live" if device.live else "")
    if device.how == "replace":
        if device.replaces and device.replaces != device.label:
            label = f"{device.replaces} -> {device.label}"
        else:
            label += " (replaced)"
    what = f"{_DEVICE_MARKERS[device.how]} {device.noun} {label}"
    if device.details:
        what += f" ({', '.join(device.details)})"
    return what + (", live" if device.live else "")


def _covered(change: Change, devices: Sequence[DeviceChange]) -> bool:
    return any(d.covers(change.path) for d in devices)


def _restart_what(action: Action) -> str:
    if action.kind is Kind.NETWORK:
        return "takes effect when the network restarts (virsh net-destroy, then net-start)"
    return (
        "takes effect when the VM restarts (shut it down and start it, "
        "or set updatePolicy: restart)"
    )


def render_plan(
    plan: Plan, *, colour: bool = False, verbose: bool = False, problems: int = 0
) -> str:
    """The plan as a person reads it, ending with the summary line.

    Per action: a head line (marker, kind, name, op or ``restart pending``, manifest
    position), its reason, one line per device added/removed/replaced, one per other
    field (old -> new, manifest paths and units), a ``!!`` line per step that stops a
    VM or deletes data, and what waits for a restart. ``verbose`` adds unchanged
    objects and every step."""
    lines: list[str] = []
    for action in plan.actions:
        if action.op is Op.NOOP and not (action.restart_pending or action.reason or verbose):
            continue
        marker = MARKERS[action.op]
        op = action.op.value
        if action.op is Op.NOOP and action.restart_pending:
            marker, op = "!", "restart pending"
        head = f"{marker} {action.kind.value} {action.name}: {op}"
        if action.source is not None:
            head += f"  ({action.source})"
        lines.append(_paint(head, marker, colour))
        if action.reason:
            lines.append(f"    {action.reason}")
        lines += ["    " + device_line(d) for d in action.devices]
        for change in action.changes:
            if _covered(change, action.devices) or (
                action.op is Op.DELETE and change.path == "exists"
            ):
                continue
            if action.op is Op.CREATE and change.old is None:
                lines.append(f"    {change.shown_path}: {show_value(change.path, change.new)}")
                continue
            lines.append("    " + _change_line(change))
            if change.note:
                lines.append("      " + change.note)
        for text in action.disruptions:
            lines.append(_paint(f"    {DISRUPTION_MARKER} {text}", DISRUPTION_MARKER, colour))
        if action.restart_pending:
            shown = [d.where or d.key for d in action.pending_devices]
            shown += [c.shown_path for c in action.restart_pending
                      if not _covered(c, action.pending_devices)]  # fmt: skip
            lines.append(f"    restart pending: {', '.join(shown)}; {_restart_what(action)}")
            told = {c.path for c in action.changes}
            told_devices = {(d.key, d.how) for d in action.devices}
            for device in action.pending_devices:
                if (device.key, device.how) not in told_devices:
                    lines.append("      " + device_line(device))
            for change in action.restart_pending:
                if change.path not in told and not _covered(change, action.pending_devices):
                    lines.append("      " + _change_line(change, pending=True))
                    if change.note:
                        lines.append("        " + change.note)
        if verbose:
            for step in action.steps:
                lines.append(f"    > {step.describe()}")
    if plan.prune_blocked:
        lines.append(_paint(f"! {plan.prune_blocked}", "!", colour))
    if lines:
        lines.append("")
    lines.append(plan.summary() if plan.has_changes or plan.has_errors else "No changes.")
    if problems:  # the objects they concern were left out of the plan
        lines.append(_paint(
            f"! {problems} problem{'s' if problems > 1 else ''} (on stderr): the objects "
            "concerned were not planned and are left as they are.", "!", colour))  # fmt: skip
    return "\n".join(lines)


# Steps that send a definition to libvirt, and what libvirt call takes it.
XML_VERBS = {
    "define-domain": "domain",
    "define-network": "network",
    "define-pool": "pool",
    "create-volume": "volume",
    "write-seed": "volume",
}
_PASSWORD = re.compile(r"""(passwd=)(['"])(.*?)\2""")


def mask_secrets(xml: str) -> str:
    """``xml`` with every display password (``passwd='...'``) replaced by its token
    (``domain.secret_token``): equal passwords show equal, none can be read."""
    return _PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{secret_token(m.group(3))}"
                         f"{m.group(2)}", xml)  # fmt: skip


def _normalised(xml: str) -> list[str]:
    """One layout for both sides of a diff (libvirt indents and quotes its own way)."""
    try:
        text = serialize(parse(xml))
    except ParseError:
        text = xml
    return mask_secrets(text).splitlines(keepends=True)


def render_xml(plan: Plan) -> str:
    """Every definition the plan sends to libvirt (``--show-xml``): for an object that
    exists, a unified diff against its current persistent definition (both laid out
    alike; libvirt's own additions, such as addresses, show as removed lines, and
    libvirt keeps adding them); for a new one, the whole XML. Display passwords are
    masked. '' when the plan defines nothing."""
    parts: list[str] = []
    for action in plan.actions:
        if action.refused:
            continue
        for step in action.steps:
            xml = step.args.get("xml")
            if step.verb not in XML_VERBS or not isinstance(xml, str):
                continue
            what = f"{action.kind.value}/{action.name}"
            if step.verb == "write-seed":
                what = f"Volume/{step.args.get('volume')} (cloud-init seed of {what})"
            current = step.args.get("current")
            head = f"# {what}: {step.verb}"
            if isinstance(current, str):
                diff = difflib.unified_diff(
                    _normalised(current), _normalised(xml),
                    fromfile=f"{what} (current)", tofile=f"{what} (planned)",
                )  # fmt: skip
                body = "".join(diff) or "(the same XML as now)\n"
                parts.append(f"{head} (changes to the current definition)\n{body}")
            else:
                parts.append(f"{head}\n{''.join(_normalised(xml))}")
    return "\n".join(parts)


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
        lines += ["    " + _change_line(c, pending=True) + f" ({c.note})"
                  for c in a.restart_pending if c.note]  # fmt: skip
    return "\n".join(lines)


# --- JSON ---------------------------------------------------------------------


def _json_value(value: object) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    return value


def change_json(change: Change) -> dict[str, Any]:
    """A change as docs/plan-json.md shows it; ``manifestPath`` and ``note`` only when
    there is one."""
    data = {
        "path": change.path,
        "old": _json_value(change.old),
        "new": _json_value(change.new),
        "live": change.live,
        "origin": change.origin or None,
    }
    if change.where:
        data["manifestPath"] = change.where
    if change.note:
        data["note"] = change.note
    return data


def device_json(device: DeviceChange) -> dict[str, Any]:
    """A device added, removed or replaced whole, as docs/plan-json.md shows it."""
    return {
        "section": device.section,
        "key": device.key,
        "change": device.how,
        "label": device.label,
        "details": list(device.details),
        "manifestPath": device.where or None,
        "replaces": device.replaces or None,
        "live": device.live,
        "text": device_line(device),
    }


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
        "devices": [device_json(d) for d in action.devices],
        "pendingDevices": [device_json(d) for d in action.pending_devices],
        "disruptions": [
            {"verb": s.verb, "text": text}
            for s in action.steps
            if (text := s.disruption(action.op))
        ],
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
    plan: Plan,
    problems: Sequence[Problem] = (),
    notes: Sequence[str] = (),
    *,
    instance: str | None = None,
) -> dict[str, Any]:
    """The documented JSON shape of a plan (docs/plan-json.md); ``instance``: the id of
    the reconciler instance that planned it (None: its state directory has none yet)."""
    counts = plan.counts()
    return {
        "version": JSON_VERSION,
        "instance": instance,
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
