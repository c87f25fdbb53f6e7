"""Logging set-up, in one place: structlog to stderr, readable on a TTY, JSON lines otherwise.

Under systemd stdout/stderr go to journald, which keeps JSON lines as they
are. Events are short stable names (``apply.action``) with fields (kind,
name, action, duration, outcome); bind context where it is known.

structlog is imported, and configured, when something first logs: importing
it (with the asyncio it pulls in) is a good part of a one-shot command's
start-up, which ``plan`` and ``validate`` never log and ``apply`` logs only
once libvirt is at work on its first action.
"""

from __future__ import annotations

import threading
from typing import Any, Literal, TextIO

LogFormat = Literal["auto", "console", "json"]

_settings: dict[str, Any] | None = None  # configure()'s arguments, until first use
_lock = threading.Lock()


def configure(
    *, format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog once for the process (done when something first logs)."""
    global _settings
    with _lock:
        _settings = {"format": format, "level": level, "stream": stream}


def _structlog() -> Any:
    """structlog, configured as ``configure`` last asked."""
    global _settings
    with _lock:
        import structlog

        if _settings is not None:
            _apply(structlog, **_settings)
            _settings = None
        return structlog


def _apply(structlog: Any, *, format: LogFormat, level: str, stream: TextIO | None) -> None:
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
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
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


class _Logger:
    """A structlog logger made on first use (``bind``, ``info``, ``warning``...)."""

    __slots__ = ("_context", "_logger")

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context
        self._logger: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._logger is None:
            self._logger = _structlog().get_logger().bind(**self._context)
        return getattr(self._logger, name)


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound (e.g. kind=..., name=...)."""
    return _Logger(context)
