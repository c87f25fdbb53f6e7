"""The status file: round trip, atomic replacement, the documented shape, and how it is shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.errors import ReconcilerError
from reconciler.status import (
    ObjectState,
    ObjectStatus,
    StatusReport,
    keep_last_change,
    pid_alive,
    read_status,
    render_table,
    summary_line,
    to_json,
    write_status,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 23, 0, 0, tzinfo=UTC)


def obj(
    name: str,
    state: ObjectState = ObjectState.IN_SYNC,
    message: str = "",
    *,
    kind: str = "VirtualMachine",
    ago: timedelta = timedelta(minutes=5),
) -> ObjectStatus:
    return ObjectStatus(kind, name, state, message, NOW - ago, "3f9c2e1")


def report(*objects: ObjectStatus, connected: bool = True, **changes: object) -> StatusReport:
    base = StatusReport(
        written_at=NOW - timedelta(seconds=12),
        daemon_pid=4321,
        revision="3f9c2e1",
        reconcile_count=57,
        last_duration=1.284,
        objects=objects,
        connected=connected,
        last_error=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


SAMPLE = report(
    obj("images", kind="StoragePool", ago=timedelta(hours=3)),
    obj("lab", kind="Network", ago=timedelta(hours=3)),
    obj("web-1", ObjectState.RESTART_PENDING, "machine: pc -> q35 takes effect at the next boot"),
    obj(
        "db-1",
        ObjectState.FAILED,
        "start: Cannot access storage file\n'/srv/db.qcow2'",
        ago=timedelta(seconds=30),
    ),
)


def test_round_trip(tmp_path: Path) -> None:
    write_status(tmp_path / "state", SAMPLE)
    assert read_status(tmp_path / "state") == SAMPLE
    with_error = replace(
        SAMPLE, last_error="manifests failed to load", last_duration=None, revision=None
    )
    write_status(tmp_path / "state", with_error)
    assert read_status(tmp_path / "state") == with_error


def test_no_file_yet_is_none(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None


def test_a_damaged_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text('{"version": 1, "writt')
    with pytest.raises(
        ReconcilerError,
        match=rf"^{re.escape(str(tmp_path / 'status.json'))}: not a valid status file",
    ):
        read_status(tmp_path)
    (tmp_path / "status.json").write_text('{"version": 99}')
    with pytest.raises(ReconcilerError, match="not a version 1 status file"):
        read_status(tmp_path)


def test_json_shape_is_the_documented_one(tmp_path: Path) -> None:
    write_status(tmp_path, SAMPLE)
    data = json.loads((tmp_path / "status.json").read_text())
    assert list(data) == [
        "version", "written_at", "daemon_pid", "revision", "reconcile_count",
        "last_duration", "connected", "last_error", "source_error", "summary", "written_by",
        "objects",
    ]  # fmt: skip
    assert data["written_at"] == "2026-11-26T22:59:48.000Z"
    assert data["summary"] == "4 objects: 2 in sync, 1 restart pending, 1 failed"
    assert data["objects"][2] == {
        "kind": "VirtualMachine",
        "name": "web-1",
        "state": "restart-pending",
        "message": "machine: pc -> q35 takes effect at the next boot",
        "last_change": "2026-11-26T22:55:00.000Z",
        "revision": "3f9c2e1",
    }
    doc = (REPO / "docs" / "status-json.md").read_text()
    for key in [*data, *data["objects"][0]]:
        assert f"`{key}`" in doc, key
    for state in ObjectState:
        assert f"`{state.value}`" in doc, state


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """A writer replaces the file as fast as it can (in another process: truly in parallel)."""
    _read_while_writing(tmp_path)


def test_the_reader_loop_does_catch_torn_writes(tmp_path: Path) -> None:
    """The control for the test above: plain writes are caught tearing."""
    with pytest.raises(ReconcilerError, match="not a valid status file"):
        _read_while_writing(tmp_path, "torn")


def _read_while_writing(tmp_path: Path, *mode: str) -> None:
    write_status(tmp_path, report(obj("a")))
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), *mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    seen: set[int] = set()
    reads = 0
    try:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < 0.5 or (len(seen) < 2 and elapsed < 10):
            got = read_status(tmp_path)  # raises on a torn file
            assert got is not None
            seen.add(len(got.objects))
            reads += 1
    finally:
        writer.kill()
        writer.wait()
    assert seen == {1, 2000}, (seen, reads)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "status.json"]
    assert all(name.startswith(".status.json.") for name in leftovers)  # only the killed write's


_WRITER = """
import sys
from dataclasses import replace
from pathlib import Path
from tests.unit.test_status import obj, report
from reconciler.status import write_status
state = Path(sys.argv[1])
small = report(obj("a"))
big = report(*(obj(f"vm-{i}", message="x" * 200) for i in range(2000)))
if sys.argv[2:] == ["torn"]:  # the control: a plain, non-atomic write
    import reconciler.status
    reconciler.status.write_atomically = lambda path, text: path.write_text(text)
print("writing", flush=True)
while True:
    write_status(state, big)
    write_status(state, small)
"""


def test_written_privately(tmp_path: Path) -> None:
    write_status(tmp_path / "state", SAMPLE)
    assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "state" / "status.json").st_mode & 0o077 == 0


def test_summary_line() -> None:
    assert summary_line(SAMPLE) == "4 objects: 2 in sync, 1 restart pending, 1 failed"
    assert summary_line(report()) == "0 objects"
    assert summary_line(report(obj("a", ObjectState.HEALED))) == "1 object: 1 healed"
    assert summary_line(
        report(
            obj("a"), obj("b", ObjectState.CONFLICT), obj("c", ObjectState.PENDING), connected=False
        )
    ) == ("3 objects: 1 in sync, 1 pending, 1 in conflict; libvirt unreachable")


def test_render_table() -> None:
    text = render_table(SAMPLE, now=NOW, alive=lambda pid: pid == 4321)
    assert text == (
        "daemon pid 4321 (running), status written 12s ago, revision 3f9c2e1, "
        "57 passes (last took 1.3s), libvirt connected\n"
        "4 objects: 2 in sync, 1 restart pending, 1 failed\n"
        "\n"
        "KIND            NAME    STATE            SINCE  MESSAGE\n"
        "StoragePool     images  in-sync          3h\n"
        "Network         lab     in-sync          3h\n"
        "VirtualMachine  web-1   restart-pending  5m     machine: pc -> q35 takes effect at the next boot\n"
        "VirtualMachine  db-1    failed           30s    start: Cannot access storage file '/srv/db.qcow2'\n"
    )


def test_render_table_of_a_dead_daemon_with_an_error() -> None:
    stale = report(
        last_error="libvirt: Failed to connect socket",
        connected=False,
        written_at=NOW - timedelta(days=2),
    )
    text = render_table(stale, now=NOW, alive=lambda pid: False)
    assert text == (
        "daemon pid 4321 (not running), status written 2d ago, revision 3f9c2e1, "
        "57 passes (last took 1.3s), libvirt unreachable\n"
        "last error: libvirt: Failed to connect socket\n"
        "0 objects; libvirt unreachable\n"
    )


def test_pid_alive_uses_proc() -> None:
    assert pid_alive(os.getpid())
    finished = subprocess.Popen(["true"])
    finished.wait()
    assert not pid_alive(finished.pid)
    assert not pid_alive(0)


def test_keep_last_change_while_the_state_holds() -> None:
    earlier = report(obj("a", ago=timedelta(hours=1)), obj("b", ago=timedelta(hours=1)))
    now_objects = [
        obj("a", ago=timedelta(0)),
        obj("b", ObjectState.FAILED, "boom", ago=timedelta(0)),
        obj("c", ObjectState.PENDING, ago=timedelta(0)),
    ]
    kept = keep_last_change(earlier, now_objects)
    assert [o.last_change for o in kept] == [NOW - timedelta(hours=1), NOW, NOW]
    assert keep_last_change(None, now_objects) == tuple(now_objects)


def test_to_json_is_plain_json() -> None:
    assert json.loads(json.dumps(to_json(SAMPLE))) == to_json(SAMPLE)


def test_git_source_error_round_trips_and_is_shown() -> None:
    from dataclasses import replace

    from reconciler.status import from_json, render_table, to_json

    report = replace(SAMPLE, source_error="refused: commit 1a2b3c4d5e6f is not signed")
    assert from_json(to_json(report)) == report
    assert "git source: refused: commit 1a2b3c4d5e6f is not signed" in render_table(
        report, alive=lambda pid: True
    )
# --- written by apply; --watch -------------------------------------------------------


def test_a_report_written_by_apply_says_so(tmp_path: Path) -> None:
    by_apply = replace(SAMPLE, written_by="apply")
    write_status(tmp_path, by_apply)
    assert read_status(tmp_path) == by_apply
    assert json.loads((tmp_path / "status.json").read_text())["written_by"] == "apply"
    first = render_table(by_apply, now=NOW, alive=lambda pid: False).splitlines()[0]
    assert first.startswith("written by apply (pid 4321), status written 12s ago")
    # a file written before the field existed was the daemon's
    data = json.loads((tmp_path / "status.json").read_text())
    del data["written_by"]
    (tmp_path / "status.json").write_text(json.dumps(data))
    assert read_status(tmp_path) == SAMPLE


class Frames:
    """A status that changes between frames, and a clock that only counts sleeps."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.sleeps: list[float] = []

    def frame(self) -> tuple[str, int]:
        return self.texts.pop(0), len(self.texts)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_watch_off_a_terminal_prints_frames_one_after_another() -> None:
    import io

    from reconciler.status import watch

    frames, out = Frames("one\n", "two\n", "three\n"), io.StringIO()
    code = watch(frames.frame, interval=2.0, out=out, tty=False, count=2, sleep=frames.sleep)
    assert out.getvalue() == "one\n\ntwo\n"  # no escape sequences in a pipe or a file
    assert frames.sleeps == [2.0] and code == 1  # the exit code of the last frame


def test_watch_on_a_terminal_redraws_in_place_without_clearing_first() -> None:
    import io

    from reconciler.status import watch

    frames, out = Frames("a long line\nsecond\n", "short\n"), io.StringIO()
    watch(frames.frame, interval=0.5, out=out, tty=True, count=2, sleep=frames.sleep)
    first, second = out.getvalue().split("\x1b[J")[:2]
    assert first == "\x1b[H\x1b[2Ja long line\x1b[K\nsecond\x1b[K\n"  # the screen once
    assert second == "\x1b[Hshort\x1b[K\n"  # then drawn over: each line and the rest cleared


def test_watch_ends_quietly_on_ctrl_c() -> None:
    import io

    from reconciler.status import watch

    frames = Frames("x\n", "y\n")

    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    assert watch(frames.frame, interval=1.0, out=out, tty=False, sleep=interrupted) == 1
    assert out.getvalue() == "x\n"
