"""The state lock: one reconciler per state directory, across processes, gone with its holder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ReconcilerError
from reconciler.lock import Holder, StateLock, read_holder

REPO = Path(__file__).resolve().parents[2]


def spawn_holder(state_dir: Path, *, hold: float = 60.0, extra: str = "") -> subprocess.Popen[str]:
    """A separate process that takes the lock as 'reconciler run', says 'locked', and holds it."""
    code = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        from pathlib import Path
        from reconciler.lock import StateLock
        with StateLock(Path({str(state_dir)!r}), command="reconciler run"):
            {extra or "pass"}
            print("locked", flush=True)
            time.sleep({hold})
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_second_process_is_refused_with_the_holder_named(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    holder = spawn_holder(tmp_path)
    holders.append(holder)
    with pytest.raises(ReconcilerError) as info, StateLock(tmp_path):
        pass
    message = str(info.value)
    assert re.fullmatch(
        rf"another reconciler holds {re.escape(str(tmp_path / 'lock'))} "
        rf"\(pid {holder.pid}, 'reconciler run', since \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)",
        message,
    ), message


def test_lock_is_released_when_the_holder_is_killed(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    holder = spawn_holder(tmp_path)
    holders.append(holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with StateLock(tmp_path, command="reconciler apply") as lock:
        assert lock.held
        holder_now = read_holder(lock.path)
        assert isinstance(holder_now, Holder)
        assert (holder_now.pid, holder_now.command) == (os.getpid(), "reconciler apply")


def test_wait_retries_until_the_holder_exits(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    holders.append(spawn_holder(tmp_path, hold=0.5))
    started = time.monotonic()
    with StateLock(tmp_path, wait=10):
        waited = time.monotonic() - started
    assert 0.2 < waited < 5


def test_wait_gives_up_and_says_so(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    holders.append(spawn_holder(tmp_path))
    started = time.monotonic()
    with pytest.raises(
        ReconcilerError,
        match=r"\(pid \d+, 'reconciler run', since .*\); gave up after waiting 0\.3s$",
    ):
        StateLock(tmp_path, wait=0.3).acquire()
    assert time.monotonic() - started >= 0.3


def test_children_of_the_holder_do_not_keep_the_lock(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    """A qemu-img started by the daemon must not hold the lock after the daemon died."""
    pid_file = tmp_path / "child.pid"
    holder = spawn_holder(
        tmp_path / "state",
        extra=f'child = subprocess.Popen(["sleep", "60"], close_fds=False); '
        f"Path({str(pid_file)!r}).write_text(str(child.pid))",
    )
    holders.append(holder)
    child = int(pid_file.read_text())
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child outlived its parent...
        with StateLock(tmp_path / "state"):  # ...and does not hold the lock
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_holder_details_are_cleared_on_release(tmp_path: Path) -> None:
    lock = StateLock(tmp_path, command="reconciler apply")
    with lock:
        holder = read_holder(lock.path)
        assert holder is not None and holder.pid == os.getpid()
    assert not lock.held
    assert lock.path.read_text() == ""
    assert read_holder(lock.path) is None


def test_two_locks_in_one_process_also_exclude_each_other(tmp_path: Path) -> None:
    with StateLock(tmp_path, command="first"), pytest.raises(ReconcilerError, match=r"'first'"):
        StateLock(tmp_path).acquire()
    with StateLock(tmp_path):  # free again
        pass


def test_state_directory_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        assert (os.stat(state).st_mode & 0o777) == 0o700
        assert (os.stat(state / "lock").st_mode & 0o777) == 0o600


def test_acquiring_twice_is_a_bug(tmp_path: Path) -> None:
    lock = StateLock(tmp_path)
    with lock, pytest.raises(RuntimeError):
        lock.acquire()
