"""Issue 11 item 2: a deletion must be deliberate.

* a manifest file that declares nothing (empty, only comments, only ``---``) is a load
  problem: ``validate`` reports it, and nothing is pruned while it exists;
* the planner prunes only the removals it is told are confirmed, and holds the rest;
* the daemon confirms a removal only when a second read, ``hold`` seconds after the
  first, finds it again in files that did not change in between (``RemovalGuard``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.daemon import RemovalGuard
from reconciler.manifests import load_directory, snapshot
from reconciler.model import Kind
from reconciler.plan import Op
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import STACK, _without, converged, load, plan_for

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web-1}
spec: {memory: 1GiB}
"""


@pytest.mark.parametrize("text", ["", "---\n", "---", "# nothing yet\n", "---\n---\n", "\n\n"])
def test_a_file_that_declares_nothing_is_a_problem(write: WriteFiles, text: str) -> None:
    root = write(**{"a.yaml": VM, "b.yaml": text})
    result = load_directory(root)
    assert [m.name for m in result.manifests] == ["web-1"]
    assert [p.message for p in result.problems] == [
        "file holds no manifest (empty, or only comments and ---)"
    ]
    assert str(result.problems[0].position.path).endswith("b.yaml")
    assert not result.complete  # so nothing is pruned while it is there


def test_unconfirmed_removals_are_held_not_pruned(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    gone = _without(result, "web", "root")
    held = plan_for(gone, observed, confirmed_removals=frozenset())
    assert [a for a in held.actions if a.op in (Op.DELETE, Op.FORGET)] == []
    assert held.held_removals == ("VirtualMachine/web", "Volume/root")
    assert "until the removal is confirmed" in held.prune_blocked
    half = plan_for(gone, observed, confirmed_removals=frozenset({"VirtualMachine/web"}))
    assert [(a.kind, a.op) for a in half.actions if a.op in (Op.DELETE, Op.FORGET)] == [
        (Kind.VIRTUAL_MACHINE, Op.DELETE)
    ]
    assert half.held_removals == ("Volume/root",)
    everything = plan_for(gone, observed)  # None: `apply`, a deliberate command
    assert {a.op for a in everything.actions} >= {Op.DELETE, Op.FORGET}
    assert everything.held_removals == ()
    assert STACK  # the fixture the planner tests share


def test_removal_guard_needs_two_reads_of_unchanged_files() -> None:
    guard = RemovalGuard(hold=2.0)
    files = ("root", ("a.yaml", 10, 1, 100, 100))
    assert guard.confirmed(files, now=0.0) == frozenset()
    assert guard.note(("VirtualMachine/web",), files, now=0.0) == pytest.approx(2.05)
    assert guard.confirmed(files, now=1.0) == frozenset()  # too soon
    assert guard.confirmed(("root", ("a.yaml", 10, 1, 101, 101)), now=3.0) == frozenset()
    assert guard.confirmed(files, now=3.0) == {"VirtualMachine/web"}
    # the files changed: the clock starts again
    changed = ("root", ("a.yaml", 12, 1, 200, 200))
    guard.note(("VirtualMachine/web",), changed, now=3.0)
    assert guard.confirmed(changed, now=4.0) == frozenset()
    assert guard.confirmed(changed, now=5.1) == {"VirtualMachine/web"}
    # read while the files moved: never confirmed from that read
    guard.note(("VirtualMachine/web",), None, now=6.0)
    assert guard.confirmed(changed, now=9.0) == frozenset()
    # nothing held any more (the file came back whole)
    assert guard.note((), changed, now=10.0) is None
    assert guard.confirmed(changed, now=20.0) == frozenset()


def test_snapshot_sees_truncate_and_restore(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(VM)
    first = snapshot(tmp_path)
    path.write_text("")
    path.write_text(VM)  # same content back, same size: the times differ
    os.utime(path, ns=(1, 1))
    assert snapshot(tmp_path) != first
    assert snapshot(tmp_path) == snapshot(tmp_path)
