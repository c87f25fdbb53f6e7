"""Logging set-up, in one place: structlog to stderr, readable on a TTY, JSON lines otherwise.

Under systemd stdout/stderr go to journald, which keeps JSON lines as they
are. Events are short stable names (``apply.action``) with fields (kind,
name, action, duration, outcome); bind context where it is known.

structlog is imported, and configured, when something first logs: importing
it (with the asyncio it pulls in) is a good part of a one-shot command's
start-up, which ``plan`` and ``validate`` never log. One-shot commands that
log JSON lines (``apply`` not on a terminal) write them with ``JsonLines``,
the same lines without structlog: its import and processor chain cost about
75 ms for the 200 lines of an apply of 200 VMs, against 2 ms.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "console", "json"]

_settings: dict[str, Any] | None = None  # configure()'s arguments, until first use
_plain: JsonLines | None = None  # set when one-shot JSON lines bypass structlog
_lock = threading.Lock()
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def configure(
    *,
    format: LogFormat = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    one_shot: bool = False,
) -> None:
    """Configure logging once for the process (done when something first logs).

    ``one_shot``: a command that logs a few events and exits; its JSON lines
    are written by ``JsonLines`` instead of structlog."""
    global _settings, _plain
    with _lock:
        _settings = {"format": format, "level": level, "stream": stream, "one_shot": one_shot}
        _plain = None
        if one_shot:
            import sys

            out = stream or sys.stderr
            if format == "json" or (format == "auto" and not out.isatty()):
                _plain = JsonLines({}, out, _LEVELS[level.lower()])


def _structlog() -> Any:
    """structlog, configured as ``configure`` last asked."""
    global _settings
    with _lock:
        import structlog

        if _settings is not None:
            _apply(structlog, **_settings)
            _settings = None
        return structlog


def _apply(
    structlog: Any, *, format: LogFormat, level: str, stream: TextIO | None, one_shot: bool
) -> None:
    import logging
    import sys

    out = stream or sys.stderr
    use_console = format == "console" or (format == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_console:
        processors += [structlog.processors.format_exc_info,
                       HumanLine(colour=out.isatty(), one_shot=one_shot)]  # fmt: skip
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


# Fields of an action's log line that a one-shot command prints in its results anyway:
# on a terminal, its log line leaves them out, so a failed action is said once.
_IN_RESULTS = frozenset({"error", "hint", "notes", "steps"})
_LEVEL_COLOURS = {"warning": "33", "error": "31", "critical": "31"}


class HumanLine:
    """structlog's last processor on a terminal: one short line per event,
    ``09:12:03 WARNING VirtualMachine web-1: vm.stopped how=forced duration=1.0s``.

    The time of day (UTC), the level unless info, the object, the event, then its
    other fields as ``key=value``; fields without a value (None, "", []) are left
    out, durations and timeouts read ``1.5s``, lists ``a,b``. ``one_shot`` (plan, apply, delete,
    which print each action's result themselves): an ``apply.action`` line leaves out
    the error, hint, notes and steps the results show."""

    def __init__(self, *, colour: bool = False, one_shot: bool = False) -> None:
        self.colour = colour
        self.one_shot = one_shot

    def __call__(self, _logger: object, _method: str, event: dict[str, Any]) -> str:
        fields = dict(event)
        stamp = str(fields.pop("timestamp", ""))
        level = str(fields.pop("level", "info"))
        text = str(fields.pop("event", ""))
        exception = fields.pop("exception", None)
        who = " ".join(str(fields.pop(k)) for k in ("kind", "name") if fields.get(k))
        action = fields.pop("action", None)
        if action:
            who += f" ({action})"
        if self.one_shot and text == "apply.action":
            fields = {k: v for k, v in fields.items() if k not in _IN_RESULTS}
        parts = [stamp[11:19]] if len(stamp) >= 19 else []
        if level not in ("info", "debug"):
            shown = level.upper()
            colour = _LEVEL_COLOURS.get(level)
            parts.append(f"\033[{colour}m{shown}\033[0m" if self.colour and colour else shown)
        parts.append(f"{who}: {text}" if who else text)
        parts += [f"{k}={_human_value(k, v)}" for k, v in fields.items()
                  if v is not None and v != "" and v != [] and v != ()]  # fmt: skip
        line = " ".join(parts)
        return line if not exception else f"{line}\n{exception}"


def _human_value(key: str, value: object) -> str:
    if key in ("duration", "timeout") and isinstance(value, int | float):
        return f"{value:g}s"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


class _Logger:
    """A structlog logger made on first use (``bind``, ``info``, ``warning``...)."""

    __slots__ = ("_context", "_logger")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            plain = _plain
            if plain is not None:
                self._logger = plain.bind(**self._context)
            else:
                self._logger = _structlog().get_logger().bind(**self._context)
        return getattr(self._logger, name)


class JsonLines:
    """The lines the JSON set-up of ``_apply`` writes (bound context, the call's
    fields, ``event``, ``level``, ``timestamp``), one JSON object per line,
    written and flushed whole, without structlog."""

    __slots__ = ("_context", "_minimum", "_out")

    def __init__(self, context: dict[str, Any], out: TextIO, minimum: int) -> None:
        self._context = context
        self._out = out
        self._minimum = minimum

    def bind(self, **more: Any) -> JsonLines:
        return JsonLines({**self._context, **more}, self._out, self._minimum)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < self._minimum:
            return
        record = {**self._context, **fields, "event": event, "level": level,
                  "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip
        line = json.dumps(record, default=repr) + "\n"
        with _lock:
            self._out.write(line)
            self._out.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound (e.g. kind=..., name=...)."""
    return _Logger(context)
