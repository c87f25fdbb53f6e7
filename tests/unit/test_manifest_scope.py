"""One state directory per manifest directory (fix-scope item 1).

A state directory applied from one manifest directory and then planned with another
must not prune what the first declares while its manifests still exist: the plan holds
those objects and says why."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.model import Kind
from reconciler.plan import Op
from reconciler.planner.prune import manifests_elsewhere
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import _without, converged, load, plan_for


def test_owned_objects_whose_manifest_exists_elsewhere_are_held(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    other = _without(result, "web", "root")
    elsewhere = {"VirtualMachine/web": "/srv/ex/web.yaml", "Volume/root": "/srv/ex/web.yaml"}
    plan = plan_for(other, observed, manifests_elsewhere=elsewhere)
    assert [a for a in plan.actions if a.op in (Op.DELETE, Op.FORGET)] == []
    assert "manifest /srv/ex/web.yaml still exists outside" in plan.prune_blocked
    assert "one state directory per manifest directory" in plan.prune_blocked
    # the same removal with the manifests really gone: pruned as before
    gone = plan_for(other, observed)
    assert (Kind.VIRTUAL_MACHINE, Op.DELETE) in [(a.kind, a.op) for a in gone.actions]


def test_manifests_elsewhere_finds_existing_files_outside_the_root(tmp_path: Path) -> None:
    applied = tmp_path / "ex"
    applied.mkdir()
    (applied / "web.yaml").write_text("x")
    planned = tmp_path / "m"
    planned.mkdir()
    (planned / "db.yaml").write_text("x")
    snaps = tmp_path / "state" / "snapshots"
    (snaps / "abc").mkdir(parents=True)
    (snaps / "abc" / "old.yaml").write_text("x")
    records = {
        "VirtualMachine/web": {"manifest": str(applied / "web.yaml")},  # exists elsewhere
        "VirtualMachine/gone": {"manifest": str(applied / "gone.yaml")},  # deleted
        "VirtualMachine/db": {"manifest": str(planned / "db.yaml")},  # inside the root
        # a git source's older snapshot: the same source at another commit
        "VirtualMachine/old": {"manifest": str(snaps / "abc" / "old.yaml")},
        "Network/lab": {},
    }
    found = manifests_elsewhere(records, str(planned), snapshots=str(snaps))
    assert found == {"VirtualMachine/web": str(applied / "web.yaml")}
    # a relative record (as typed) is taken from the current directory
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rel = manifests_elsewhere({"VirtualMachine/web": {"manifest": "ex/web.yaml"}}, "m")
    finally:
        os.chdir(cwd)
    assert rel == {"VirtualMachine/web": "ex/web.yaml"}
