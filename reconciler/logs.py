"""Logging set-up, in one place: structlog to stderr, readable on a TTY, JSON lines otherwise.

Under systemd stdout/stderr go to journald, which keeps JSON lines as they
are. Events are short stable names (``apply.action``) with fields (kind,
name, action, duration, outcome); bind context where it is known.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "console", "json"]


def configure(
    *, format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog once for the process."""
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


def get_logger(**context: Any) -> Any:
    """A logger with ``context`` bound (e.g. kind=..., name=...)."""
    return structlog.get_logger().bind(**context)
