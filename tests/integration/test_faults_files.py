"""Issue 11 item 2 under ``reconciler run``: a deletion must be deliberate.

Real files written in place, as an editor or a slow writer does (not the atomic
rename the other daemon tests use): a file truncated to zero bytes for 0.8 s, a
multi-document file cut at a ``---`` for 0.8 s, a file that is only ``---``. None of
them prunes what the file declared: the VMs keep their UUIDs. A removal that stays
is carried out once the daemon's second read confirms it (figure printed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.daemon import REMOVAL_HOLD
from tests.integration import test_daemon
from tests.integration.test_daemon import (
    Daemon,
    Env,
    kvm,
    record_bench,
    wait_until,
)

CUT_SECONDS = 0.8

env = test_daemon.env  # the daemon tests' fixture: one test's manifests, state, daemons


@pytest.fixture(autouse=True)
def _live_connection(conn: Any, libvirt_uri: str) -> None:
    """The session's connection, opened again if libvirtd restarted since (the daemon
    tests of this and other worktrees restart the shared libvirtd)."""
    test_daemon._revive(conn, libvirt_uri)


def _text(*docs: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def _write_in_place(path: Path, text: str) -> None:
    with path.open("w") as handle:  # truncates, then writes: what readers may catch
        handle.write(text)


def _uuids(env: Env) -> dict[str, str]:
    return {name: d.UUIDString() for name, d in env.domains().items()}


def _deletes(daemon: Daemon, since: int) -> list[dict[str, Any]]:
    return [e for e in daemon.events(since)
            if e.get("event") == "apply.action" and e.get("action") in ("delete", "forget")]  # fmt: skip


def _start_two(env: Env) -> tuple[Daemon, Path, str, dict[str, str]]:
    first, second = env.n("one"), env.n("two")
    env.put("keep.yaml", kvm(env.n("keep"), state="stopped"))
    env.put("pair.yaml", kvm(first), kvm(second, state="stopped"))
    daemon = env.start()
    wait_until("both VMs", lambda: first in env.domains() and second in env.domains(),
               daemon=daemon)  # fmt: skip
    daemon.wait_quiet()
    whole = (env.manifests / "pair.yaml").read_text()
    return daemon, env.manifests / "pair.yaml", whole, _uuids(env)


def _settle(daemon: Daemon) -> None:
    """Long enough for a held removal to have been confirmed, had it stayed."""
    time.sleep(REMOVAL_HOLD + 1.0)
    daemon.wait_quiet(1.0)


def test_truncated_and_restored_within_a_moment_prunes_nothing(env: Env) -> None:
    daemon, path, whole, uuids = _start_two(env)
    mark = daemon.mark()
    _write_in_place(path, "")
    time.sleep(CUT_SECONDS)
    _write_in_place(path, whole)
    _settle(daemon)
    assert _uuids(env) == uuids, daemon.tail()
    assert _deletes(daemon, mark) == [], daemon.tail()
    assert any(e.get("event") == "manifest.problem" and "holds no manifest" in e.get("problem", "")
               for e in daemon.events(mark)), daemon.tail()  # fmt: skip
    assert daemon.stop() == 0, daemon.tail()


def test_a_file_cut_at_a_separator_for_a_moment_prunes_nothing(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon, path, whole, uuids = _start_two(env)
    cut = whole[: whole.index("---\n")]  # the first document only: valid, one VM fewer
    mark = daemon.mark()
    _write_in_place(path, cut)
    time.sleep(CUT_SECONDS)
    _write_in_place(path, whole)
    _settle(daemon)
    assert _uuids(env) == uuids, daemon.tail()
    assert _deletes(daemon, mark) == [], daemon.tail()
    held = [e for e in daemon.events(mark) if e.get("event") == "prune.held"]
    assert held, daemon.tail()  # the daemon did see the removal, and held it

    # the same cut, kept: a deliberate removal, carried out after the second read
    mark = daemon.mark()
    written = time.monotonic()
    _write_in_place(path, cut)
    second = env.n("two")
    done = wait_until("the removed VM pruned", lambda: second not in env.domains(),
                      daemon=daemon)  # fmt: skip
    assert _uuids(env) == {k: v for k, v in uuids.items() if k != second}
    delay = done - written
    record_bench("removal_confirmed_seconds", round(delay, 2))
    with capsys.disabled():
        print(f"\ndeliberate removal carried out {delay:.2f}s after the write "
              f"(hold {REMOVAL_HOLD:g}s, debounce 300ms)")  # fmt: skip
    assert daemon.stop() == 0, daemon.tail()


def test_a_file_of_only_separators_is_a_problem_and_prunes_nothing(env: Env) -> None:
    daemon, path, _whole, uuids = _start_two(env)
    mark = daemon.mark()
    _write_in_place(path, "---\n")
    _settle(daemon)
    assert _uuids(env) == uuids, daemon.tail()
    assert _deletes(daemon, mark) == [], daemon.tail()
    for text in ("", "---\n", "---"):
        (env.manifests / "pair.yaml").write_text(text)
        done = env.cli("validate", str(env.manifests), "--offline")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "pair.yaml: file holds no manifest" in done.stdout + done.stderr
    assert daemon.stop() == 0, daemon.tail()
