"""Log lines: one-shot commands write JSON lines without structlog; they must be the
very lines structlog's JSON set-up writes (bar the timestamp's value)."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from reconciler import logs


def emit(log: Any) -> None:
    log.info("apply.action", outcome="ok", duration=0.002, steps=["define-domain"], notes=None)
    bound = log.bind(kind="VirtualMachine", name="web-1", action="create")
    bound.warning("apply.live_refused", step="set-memory", error="no")
    bound.error("apply.action", outcome="failed", duration=1.5, error="define: boom")
    bound.debug("not shown", at="info level")
    log.bind(path=logs).info("odd value")  # not JSON: written as its repr


def lines(one_shot: bool) -> list[dict[str, Any]]:
    out = io.StringIO()
    logs.configure(format="json", stream=out, one_shot=one_shot)
    try:
        emit(logs.get_logger(component="apply"))
    finally:
        logs.configure()  # back to the defaults for other tests
    text = out.getvalue()
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        stamp = record.pop("timestamp")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp), stamp
    return records


def test_one_shot_json_lines_are_structlogs_lines() -> None:
    plain, structlog = lines(one_shot=True), lines(one_shot=False)
    assert plain == structlog
    assert [list(r) for r in plain] == [list(r) for r in structlog]  # key order too
    assert [r["event"] for r in plain] == [
        "apply.action", "apply.live_refused", "apply.action", "odd value",
    ]  # fmt: skip
    assert plain[1] == {"component": "apply", "kind": "VirtualMachine", "name": "web-1",
                        "action": "create", "step": "set-memory", "error": "no",
                        "event": "apply.live_refused", "level": "warning"}  # fmt: skip


@pytest.mark.parametrize("fmt", ["console", "auto"])
def test_a_terminal_or_console_format_still_goes_through_structlog(fmt: str) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    logs.configure(format=fmt, stream=out, one_shot=True)  # type: ignore[arg-type]
    try:
        logs.get_logger().info("apply.action", outcome="ok")
    finally:
        logs.configure()
    assert "apply.action" in out.getvalue()
    assert not out.getvalue().lstrip().startswith("{")


def test_a_terminal_gets_one_short_line_per_event_without_none_noise() -> None:
    render = logs.HumanLine(one_shot=False)
    line = render(None, "warning", {
        "kind": "VirtualMachine", "name": "web-1", "action": "delete", "event": "vm.stopped",
        "how": "forced", "duration": 1.0, "reason": "no ACPI shutdown within 1s",
        "notes": None, "hint": "", "steps": [], "level": "warning",
        "timestamp": "2026-11-30T09:00:01.123456Z",
    })  # fmt: skip
    assert line == ("09:00:01 WARNING VirtualMachine web-1 (delete): vm.stopped how=forced "
                    'duration=1s reason="no ACPI shutdown within 1s"')  # fmt: skip


def test_a_one_shot_command_says_a_failed_actions_error_once_in_its_results() -> None:
    event = {"kind": "Network", "name": "lab", "event": "apply.action", "outcome": "failed",
             "duration": 0.25, "error": "define-network: boom", "hint": "start it",
             "level": "error", "timestamp": "2026-11-30T09:00:01Z"}  # fmt: skip
    assert logs.HumanLine(one_shot=True)(None, "error", dict(event)) == (
        "09:00:01 ERROR Network lab: apply.action outcome=failed duration=0.25s"
    )
    daemon = logs.HumanLine(one_shot=False)(None, "error", dict(event))
    assert 'error="define-network: boom"' in daemon and 'hint="start it"' in daemon
