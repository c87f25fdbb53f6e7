"""One reconciler at a time per state directory: an exclusive lock on ``state_dir/lock``.

The daemon holds it for its whole life, ``apply`` for one pass, so that two
processes never plan against each other's half-done changes or interleave
inventory writes. It is an ``flock(2)`` lock: the kernel drops it when the
holder exits or is killed, so there are no stale locks to clean up. The file
names its holder (pid, command, start time) for the message the next
contender gets. The descriptor is not inherited by children (qemu-img and
the like), so they cannot keep the lock alive after the reconciler is gone.

Used by cli.py (apply, run) around reconcile.py; knows nothing of libvirt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from reconciler import statedir
from reconciler.errors import ReconcilerError

_RETRY_EVERY = 0.1


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lock, as written into the lock file by the holder."""

    pid: int
    command: str
    since: str  # ISO 8601, UTC

    def __str__(self) -> str:
        return f"pid {self.pid}, {self.command!r}, since {self.since}"


def default_command() -> str:
    """``reconciler run``: the program's name as installed and its arguments."""
    return " ".join(["reconciler", *sys.argv[1:]])


class StateLock:
    """Context manager: hold the exclusive lock on ``state_dir/lock`` or raise.

    ``wait``: seconds to keep trying while another process holds it (0: fail
    at once). The error names the holder: ``another reconciler holds
    /var/lib/reconciler/lock (pid 1234, 'reconciler run', since 2026-...)``.
    A state directory that cannot be created or written (read-only, full, a
    file in the way) is a ``StateDirError`` naming the path, raised before the
    lock is taken.
    """

    def __init__(self, state_dir: Path, *, wait: float = 0.0, command: str | None = None) -> None:
        self.path = statedir.path(state_dir, statedir.LOCK)
        self.wait = wait
        self.command = command if command is not None else default_command()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this StateLock")
        statedir.prepare(self.path.parent, write=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise statedir.error(self.path, "open the state lock", exc) from None
        deadline = time.monotonic() + max(self.wait, 0.0)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._contended() from None
                    time.sleep(_RETRY_EVERY)
            holder = Holder(
                pid=os.getpid(),
                command=self.command,
                since=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            )
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(asdict(holder)) + "\n").encode(), 0)
            except OSError as exc:  # a full disk: nothing else could be written either
                raise statedir.error(self.path, "write the state lock", exc) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # the lock goes with the descriptor anyway
                os.ftruncate(fd, 0)  # no stale holder for readers of the file
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def _contended(self) -> ReconcilerError:
        holder = None
        for _ in range(5):  # the holder may not have written its details yet
            holder = read_holder(self.path)
            if holder is not None:
                break
            time.sleep(0.02)
        text = f"another reconciler holds {self.path}"
        if holder is not None:
            text += f" ({holder})"
        if self.wait > 0:
            text += f"; gave up after waiting {self.wait:g}s"
        return ReconcilerError(text)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def read_holder(path: Path) -> Holder | None:
    """The holder written in lock file ``path``; None if empty, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(pid=int(data["pid"]), command=str(data["command"]), since=str(data["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
