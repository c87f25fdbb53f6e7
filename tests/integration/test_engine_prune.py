"""Prune: owned objects whose manifest is gone are deleted, and only when that is safe."""

from __future__ import annotations

import libvirt
import pytest

from reconciler.plan import Op
from reconciler.report import render_plan
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    pool,
    vm,
    volume,
    ws_fixture,
)


def _exists(lookup: object, name: str) -> bool:
    try:
        lookup(name)  # type: ignore[operator]
    except libvirt.libvirtError:
        return False
    return True


def _setup_vm_and_network(ws: Workspace) -> tuple[str, str]:
    vm_name, net_name = ws.n("vm"), ws.n("net")
    ws.write("anchor.yaml", pool(ws.n("anchor"), ws.subdir("anchor")))  # keeps the dir non-empty
    ws.write("net.yaml", ws.isolated_network(net_name))
    ws.write("vm.yaml", vm(vm_name, interfaces=[{"network": net_name}], shutdownTimeout="2s"))
    ws.converge()
    assert ws.domain(vm_name).isActive()
    return vm_name, net_name


def test_removed_manifests_delete_the_vm_gracefully_and_the_network(ws: Workspace) -> None:
    vm_name, net_name = _setup_vm_and_network(ws)
    ws.remove("vm.yaml")
    ws.remove("net.yaml")
    plan = ws.plan()
    deletes = [(a.kind.value, a.name) for a in plan.actions if a.op is Op.DELETE]
    assert deletes == [("VirtualMachine", vm_name), ("Network", net_name)], render_plan(plan)
    vm_action = action(plan, "VirtualMachine", vm_name)
    assert [s.verb for s in vm_action.steps] == ["stop-domain", "undefine-domain"]
    assert vm_action.steps[0].args["timeout"] == 2.0  # the VM's own shutdownTimeout

    result = ws.converge()
    notes = [n for r in result.results for n in r.notes]
    assert any("forced off" in n and "ACPI" in n for n in notes), notes  # tried ACPI first
    assert not _exists(ws.conn.lookupByName, vm_name)
    assert not _exists(ws.conn.networkLookupByName, net_name)
    inventory = ws.inventory()
    assert f"VirtualMachine/{vm_name}" not in inventory and f"Network/{net_name}" not in inventory
    assert_settled(ws)


def test_broken_manifest_blocks_every_delete(ws: Workspace) -> None:
    vm_name, net_name = _setup_vm_and_network(ws)
    ws.remove("vm.yaml")
    ws.remove("net.yaml")
    ws.write("broken.yaml", "apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: [oops\n")
    plan = ws.plan()
    assert not [a for a in plan.actions if a.op is Op.DELETE], render_plan(plan)
    assert plan.prune_blocked and "not every manifest loaded" in plan.prune_blocked
    assert vm_name in plan.prune_blocked and net_name in plan.prune_blocked

    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "broken.yaml" in done.stderr  # the load problem, with its place
    assert "not every manifest loaded" in done.stdout
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    ws.apply()
    assert ws.domain(vm_name).isActive()
    assert ws.conn.networkLookupByName(net_name).isActive()

    ws.remove("broken.yaml")  # fixed: now the deletes go ahead
    ws.converge()
    assert not _exists(ws.conn.lookupByName, vm_name)
    assert_settled(ws)


def test_volume_reclaim_policies(ws: Workspace) -> None:
    pool_name = ws.n("pool")
    path = ws.subdir("pool")
    kept, deleted = ws.n("kept"), ws.n("deleted")
    ws.write("pool.yaml", pool(pool_name, path))
    ws.write("kept.yaml", volume(kept, pool_name, "8MiB", format="raw"))  # retain: the default
    ws.write("deleted.yaml", volume(deleted, pool_name, "8MiB", format="raw",
                                    reclaimPolicy="delete"))  # fmt: skip
    ws.converge()
    (path / kept).write_bytes(b"keep me")
    ws.remove("kept.yaml")
    ws.remove("deleted.yaml")
    plan = ws.plan()
    assert action(plan, "Volume", kept).op is Op.FORGET, render_plan(plan)
    assert action(plan, "Volume", deleted).op is Op.DELETE, render_plan(plan)
    assert "retain" in action(plan, "Volume", kept).reason
    ws.converge()
    assert (path / kept).read_bytes() == b"keep me"
    p = ws.conn.storagePoolLookupByName(pool_name)
    p.refresh(0)
    assert _exists(p.storageVolLookupByName, kept)
    assert f"Volume/{kept}" not in ws.inventory()
    assert not (path / deleted).exists()
    assert not _exists(p.storageVolLookupByName, deleted)
    assert_settled(ws)
    # forgotten means unmanaged: declaring it again is a conflict, not a silent take-over
    ws.write("kept.yaml", volume(kept, pool_name, "8MiB", format="raw"))
    assert action(ws.plan(), "Volume", kept).op is Op.CONFLICT


@pytest.mark.parametrize("how", ["empty", "missing", "no-manifests"])
def test_empty_or_missing_directory_deletes_nothing(ws: Workspace, how: str) -> None:
    net_name = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(net_name))
    ws.converge()
    ws.remove("net.yaml")
    directory = ws.directory
    if how == "missing":
        directory.rmdir()
    elif how == "no-manifests":
        (directory / "README.md").write_text("manifests go here\n")
        (directory / ".hidden.yaml").write_text("not: a manifest\n")
    plan = ws.plan()
    assert not [a for a in plan.actions if a.op is Op.DELETE], render_plan(plan)
    done = ws.cli("plan", str(directory))
    assert done.returncode == 1, done.stdout + done.stderr
    done = ws.cli("apply", str(directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    ws.apply()
    assert ws.conn.networkLookupByName(net_name).isActive()
    assert f"Network/{net_name}" in ws.inventory()


def test_no_prune_keeps_owned_objects(ws: Workspace) -> None:
    net_name = ws.n("net")
    ws.write("anchor.yaml", pool(ws.n("anchor"), ws.subdir("anchor")))
    ws.write("net.yaml", ws.isolated_network(net_name))
    ws.converge()
    ws.remove("net.yaml")
    plan = ws.plan(prune=False)
    assert not [a for a in plan.actions if a.op is Op.DELETE], render_plan(plan)
    assert "prune is off" in plan.prune_blocked
    done = ws.cli("plan", str(ws.directory), "--no-prune")
    assert done.returncode == 0, done.stdout + done.stderr  # nothing to do
    assert "prune is off" in done.stdout
    done = ws.cli("apply", str(ws.directory), "--no-prune", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ws.conn.networkLookupByName(net_name).isActive()
    assert f"Network/{net_name}" in ws.inventory()
    done = ws.cli("plan", str(ws.directory))  # prune back on: the delete shows
    assert done.returncode == 2 and "Network " + net_name in done.stdout, done.stdout


def test_reclaim_policy_changed_to_retain_keeps_the_data(ws: Workspace) -> None:
    """reclaimPolicy lives only in the inventory: changing it changes nothing in libvirt,
    but it must still be recorded, or removing the manifest later deletes data the user
    asked to keep."""
    pool_name, name = ws.n("pool"), ws.n("vol")
    path = ws.subdir("pool")
    ws.write("pool.yaml", pool(pool_name, path))
    ws.write("vol.yaml", volume(name, pool_name, "8MiB", format="raw", reclaimPolicy="delete"))
    ws.converge()
    ws.write("vol.yaml", volume(name, pool_name, "8MiB", format="raw", reclaimPolicy="retain"))
    ws.converge()
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    (path / name).write_bytes(b"keep me")
    ws.remove("vol.yaml")
    plan = ws.plan()
    assert action(plan, "Volume", name).op is Op.FORGET, render_plan(plan)
    ws.converge()
    assert (path / name).read_bytes() == b"keep me"


def test_shutdown_timeout_change_is_used_by_a_later_prune(ws: Workspace) -> None:
    name = ws.n("vm")
    ws.write("anchor.yaml", pool(ws.n("anchor"), ws.subdir("anchor")))
    ws.write("vm.yaml", vm(name, shutdownTimeout="1s"))
    ws.converge()
    ws.write("vm.yaml", vm(name, shutdownTimeout="3s"))
    ws.converge()
    ws.remove("vm.yaml")
    stop = action(ws.plan(), "VirtualMachine", name).steps[0]
    assert stop.verb == "stop-domain" and stop.args["timeout"] == 3.0, stop


def test_another_manifest_directory_holds_what_the_first_declares(ws: Workspace) -> None:
    """One state directory per manifest directory: the VM's manifest moved into a new
    directory ``m``, planned with the same state directory. The objects whose manifests
    still exist in the first directory are held (not "gone"), and the VM's record names
    its manifest's new path: rewritten alone, the running guest not restarted."""
    vm_name, net_name = _setup_vm_and_network(ws)
    before = ws.domain(vm_name).ID()
    moved = ws.root / "m"
    moved.mkdir()
    (moved / "vm.yaml").write_text((ws.directory / "vm.yaml").read_text())
    plan = ws.plan(directory=moved)
    assert not [a for a in plan.actions if a.op in (Op.DELETE, Op.FORGET)], render_plan(plan)
    assert f"Network/{net_name}: its manifest {ws.directory / 'net.yaml'} still exists " \
        f"outside {moved}" in plan.prune_blocked
    assert "one state directory per manifest directory" in plan.prune_blocked
    vm_action = action(plan, "VirtualMachine", vm_name)
    assert [(c.path, c.old, c.new) for c in vm_action.changes] == [
        ("ownership", f"manifest {ws.directory / 'vm.yaml'}", str(moved / "vm.yaml"))
    ], render_plan(plan)
    assert vm_action.op is Op.UPDATE_LIVE
    ws.converge(directory=moved)
    dom = ws.domain(vm_name)
    assert dom.isActive() and dom.ID() == before  # not restarted
    assert f"<rc:manifest>{moved / 'vm.yaml'}</rc:manifest>" in dom.XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert ws.inventory()[f"VirtualMachine/{vm_name}"]["manifest"] == str(moved / "vm.yaml")
    assert ws.conn.networkLookupByName(net_name).isActive()  # held, not deleted
    assert not [a for a in ws.plan(directory=moved).actions
                if a.op is not Op.NOOP]  # settled  # fmt: skip
