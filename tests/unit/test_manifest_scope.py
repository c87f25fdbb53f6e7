"""One state directory per manifest directory; records name manifests absolutely.

A state directory applied from one manifest directory and then planned with another
must not prune what the first declares while its manifests still exist: the plan holds
those objects and says why."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from reconciler.model import Kind
from reconciler.plan import DefineDomain, Op
from reconciler.planner.prune import manifests_elsewhere
from reconciler.reconcile import recorded_root
from reconciler.xml import network as network_xml
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import _without, action, converged, load, plan_for


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


def test_a_record_naming_another_path_is_rewritten_alone(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)  # records name the manifest as loaded
    plan = plan_for(result, observed, manifest_root="/srv/m", instance=None)
    vm = action(plan, Kind.VIRTUAL_MACHINE, "web")
    old = str(Path(result.root) / "stack.yaml")
    assert [(c.path, c.old, c.new) for c in vm.changes] == [
        ("ownership", f"manifest {old}", "/srv/m/stack.yaml")
    ]
    assert vm.op is Op.UPDATE_LIVE  # no restart
    [define] = vm.steps
    live = observed.domains["web"].config_xml
    assert isinstance(define, DefineDomain)
    # the definition libvirt has, with only the record's manifest changed
    assert define.xml == live.replace(f">{old}<", ">/srv/m/stack.yaml<")
    assert vm.owner_record["manifest"] == "/srv/m/stack.yaml"
    # a network's record: rewritten with its definition patched (metadata only)
    [lab] = [m for m in result.manifests if m.name == "lab"]
    xml = network_xml.render("lab", lab.spec, uuid="uuid-lab", ownership=(  # type: ignore[arg-type]
        network_xml.NetworkOwnership(instance=None, manifest="m/stack.yaml", digest="d")))
    networks = {"lab": dataclasses.replace(observed.networks["lab"], config_xml=xml,
                                           live_xml=xml)}
    recorded = dataclasses.replace(observed, networks=networks)
    net = action(plan_for(result, recorded, manifest_root="/srv/m"), Kind.NETWORK, "lab")
    assert [(c.path, c.old, c.new) for c in net.changes] == [
        ("ownership", "manifest m/stack.yaml", "/srv/m/stack.yaml")
    ]
    assert [s.verb for s in net.steps] == ["define-network"]
    assert net.op is Op.UPDATE_LIVE
    # pools and volumes carry no record: their inventory entries name the new path
    assert action(plan, Kind.VOLUME, "root").owner_record["manifest"] == "/srv/m/stack.yaml"
    # the same path: nothing to do
    same = plan_for(result, observed, manifest_root=result.root)
    assert action(same, Kind.VIRTUAL_MACHINE, "web").op is Op.NOOP


def test_records_name_a_git_source_by_its_current_snapshot(tmp_path: Path) -> None:
    snaps = tmp_path / "state" / "snapshots"
    (snaps / "abc123").mkdir(parents=True)
    assert recorded_root(str(snaps / "abc123"), str(snaps)) == str(snaps / "current")
    assert recorded_root(str(tmp_path / "m"), str(snaps)) == str(tmp_path / "m")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert recorded_root("m", None) == str(tmp_path / "m")
    finally:
        os.chdir(cwd)


def test_records_name_a_linked_manifest_directory_by_its_target(tmp_path: Path) -> None:
    """A daemon configured with a link to the repository and an apply given the
    repository's own path must name one manifest by one path, or each would rewrite
    the other's records (found: export's round trip planned through a link)."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    assert recorded_root(str(tmp_path / "link"), None) == str((tmp_path / "repo").resolve())
    assert recorded_root(str(tmp_path / "repo"), None) == str((tmp_path / "repo").resolve())
