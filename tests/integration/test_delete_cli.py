"""`reconciler delete` against the real libvirtd: what it deletes, and what it refuses."""

from __future__ import annotations

import json
import os

import libvirt

from tests.integration.engine_support import (  # noqa: F401
    Workspace,
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


def _stack(ws: Workspace) -> tuple[str, str, str, str]:
    """A pool with two volumes (one retain, one reclaimPolicy delete) and a running VM."""
    pool_name, kept, scratch, vm_name = ws.n("pool"), ws.n("kept"), ws.n("scratch"), ws.n("vm")
    ws.write("pool.yaml", pool(pool_name, ws.subdir("pool")))
    ws.write("volumes.yaml", volume(kept, pool_name),
             volume(scratch, pool_name, reclaimPolicy="delete"))  # fmt: skip
    ws.write("vm.yaml", vm(vm_name, disks=[{"volume": kept}]))
    ws.converge()
    assert ws.domain(vm_name).isActive()
    return pool_name, kept, scratch, vm_name


def test_delete_guards(ws: Workspace) -> None:
    pool_name, kept, _scratch, vm_name = _stack(ws)
    where = ["--manifest-dir", str(ws.directory)]

    done = ws.cli("delete", ws.n("nothing"), "--yes", *where)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"reconciler: error: delete: {ws.n('nothing')}: no object of that name in libvirt"
    )

    # an object reconciler did not make: refused, left alone
    hand_made = ws.n("byhand")
    ws.conn.networkDefineXML(f"<network><name>{hand_made}</name></network>")
    done = ws.cli("delete", f"Network/{hand_made}", "--yes", *where)
    assert done.returncode == 1
    assert f"delete: Network/{hand_made}: not managed by reconciler" in done.stderr
    assert "Traceback" not in done.stderr
    assert _exists(ws.conn.networkLookupByName, hand_made)

    # still declared: the next apply would make it again
    done = ws.cli("delete", f"VirtualMachine/{vm_name}", "--yes", *where)
    assert done.returncode == 1
    assert f"VirtualMachine/{vm_name} (declared at {ws.directory}/vm.yaml:1:1)" in done.stderr
    assert "the next apply would create it again" in done.stderr
    assert ws.domain(vm_name).isActive()

    # not interactive and no --yes: nothing happens
    ws.remove("vm.yaml")
    done = ws.cli("delete", f"VirtualMachine/{vm_name}", *where)
    assert done.returncode == 1
    assert "not deleting without --yes when not interactive" in done.stderr
    assert ws.domain(vm_name).isActive()
    assert pool_name and kept


def test_delete_stops_the_vm_and_keeps_volume_data_unless_asked(ws: Workspace) -> None:
    pool_name, kept, scratch, vm_name = _stack(ws)
    path = ws.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(kept).path()
    ws.remove("vm.yaml")
    ws.write("volumes.yaml", volume(ws.n("other"), pool_name))  # kept and scratch undeclared
    ws.converge(prune=False)
    where = ["--manifest-dir", str(ws.directory)]

    done = ws.cli("delete", f"VirtualMachine/{vm_name}", f"Volume/{kept}", "--yes", *where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"- VirtualMachine {vm_name}: delete" in done.stdout
    assert "!! shuts the VM down: ACPI shutdown, forced off after 1s" in done.stdout
    assert f"- Volume {kept}: forget" in done.stdout
    assert "reclaimPolicy retain keeps its data (pass --delete-data to delete it)" in done.stdout
    assert "Delete complete: 2 succeeded, 0 failed." in done.stdout
    assert not _exists(ws.conn.lookupByName, vm_name)
    assert os.path.exists(path)  # the data is kept...
    inventory = ws.inventory()
    assert f"Volume/{kept}" not in inventory  # ...and no longer managed
    assert f"VirtualMachine/{vm_name}" not in inventory

    done = ws.cli("delete", f"Volume/{kept}", "--yes", "--delete-data", *where)
    assert done.returncode == 1  # not ours any more: refused, even with --delete-data
    assert "not managed by reconciler" in done.stderr
    assert os.path.exists(path)

    code_json = ws.cli("-o", "json", "delete", f"Volume/{pool_name}/{scratch}", "--yes", *where)
    assert code_json.returncode == 0, code_json.stdout + code_json.stderr
    data = json.loads(code_json.stdout)
    [act] = data["actions"]
    assert (act["op"], [s["verb"] for s in act["steps"]]) == ("delete", ["delete-volume"])
    assert act["disruptions"] == [{"verb": "delete-volume",
                                   "text": "deletes the volume and its data"}]  # fmt: skip
    assert [r["outcome"] for r in data["results"]] == ["ok"]
    pool_obj = ws.conn.storagePoolLookupByName(pool_name)
    pool_obj.refresh(0)
    assert scratch not in pool_obj.listVolumes()


def test_delete_without_a_manifest_directory_refuses_what_the_recorded_manifest_declares(
    ws: Workspace,
) -> None:
    """Issue 13: with no manifest directory to check (manifestDir not configured, its
    default missing), delete removed a VM whose manifest still declared it; the file
    its inventory record names is checked now."""
    name = ws.n("rec")
    ws.write("vm.yaml", vm(name, state="stopped"))
    ws.converge()
    nowhere = ["--manifest-dir", str(ws.directory.parent / "no-such-dir")]
    done = ws.cli("delete", f"VirtualMachine/{name}", "--yes", *nowhere)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"delete: VirtualMachine/{name} (declared at {ws.directory}/vm.yaml:1:1, the "
            "manifest its inventory record names): the next apply would create it again"
            in done.stderr), done.stderr  # fmt: skip
    assert _exists(ws.conn.lookupByName, name)
    # the file no longer declares it: deleted
    ws.write("vm.yaml", vm(ws.n("another"), state="stopped"))
    done = ws.cli("delete", f"VirtualMachine/{name}", "--yes", *nowhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _exists(ws.conn.lookupByName, name)
