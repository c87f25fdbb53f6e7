"""Telling systemd how the daemon is doing: the ``sd_notify`` protocol, without libsystemd.

daemon.py sends ``READY=1`` once its loop runs (after the first attempt to
connect, whether libvirt answered or not: a pass may take minutes, and a
libvirtd late at boot must not fail the unit), ``STATUS=`` after each pass
(status.summary_line), ``WATCHDOG=1`` every ``watchdog_interval()`` seconds
while its loop has made progress in the last half hour (a pass may wait long
for graceful VM shutdowns), and ``RELOADING=1`` / ``STOPPING=1`` around
SIGHUP and SIGTERM. A message is one datagram of ``KEY=value`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means Linux's
abstract namespace). Without that variable, as when run by hand, every call
is a no-op. A failed send is reported by the return value, never raised:
losing a status update must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

NOTIFY_SOCKET = "NOTIFY_SOCKET"


def notify(*, environ: Mapping[str, str] | None = None, **fields: str | int | bool) -> bool:
    """Send ``fields`` (``ready=True, status="..."`` → ``READY=1\\nSTATUS=...``) to systemd.

    Keys are upper-cased; True is sent as 1 and False fields are left out.
    ``reloading=True`` adds ``MONOTONIC_USEC`` (needed by ``Type=notify-reload``).
    Returns whether a message was delivered (False: not under systemd, or the
    send failed).
    """
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET, "")
    if not address or not fields:
        return False
    if fields.get("reloading") is True and "monotonic_usec" not in fields:
        fields["monotonic_usec"] = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = format_message(fields)
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # e.g. vsock: addresses (systemd 254+ in VMs); not used on a host
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def format_message(fields: Mapping[str, str | int | bool]) -> bytes:
    """``KEY=value`` lines; values are single-line (newlines become spaces)."""
    lines: list[str] = []
    for key, value in fields.items():
        if value is False:
            continue
        text = "1" if value is True else str(value)
        lines.append(f"{key.upper()}={text.replace(chr(10), ' ')}")
    return "\n".join(lines).encode("utf-8")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``; None if not asked.

    ``$WATCHDOG_PID``, when set, must be this process (the variable may have
    leaked to a child).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2
