"""StoragePool types beyond dir against the real libvirtd (libvirt 9.0).

* the golden XML of every pool type passes ``virt-xml-validate``;
* a logical pool on a loop device is built by the tool (``build: true``: pvcreate +
  vgcreate), runs, and plans again empty; a device holding a filesystem is not
  built over (libvirt's NO_OVERWRITE), its filesystem intact;
* an fs pool on a loop device: built (mkfs), mounted, a volume made in it;
* a hand-made logical pool (vgcreate, virsh pool-define) and a disk pool round-trip
  through export as adoption only; a zfs pool (no backend here) is a plan error
  naming the package;
* netfs and iscsi pools cannot run here (no NFS server, no iSCSI target): they are
  defined by hand (libvirt defines a pool without starting it), exported, and the
  manifests validate, plan as adoption only and leave the definition unchanged.

Every loop device, volume group and physical volume is one this module made, named
with the session prefix (``rctest-...``), and removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.plan import Op
from reconciler.report import render_plan
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    assert_settled,
    describe,
    doc,
    ws_fixture,
)

DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "xml"
HAS_DM = "device-mapper" in Path("/proc/misc").read_text()  # LVs need it, VGs do not
needs_lvm = pytest.mark.skipif(shutil.which("vgcreate") is None,
                               reason="lvm2 is not installed (scripts/setup-host.sh)")  # fmt: skip


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@contextlib.contextmanager
def loop_device(directory: Path, size: str = "64M") -> Iterator[str]:
    """A loop device on a sparse file in ``directory``, detached at the end (this one
    only, by its name)."""
    image = directory / "loop.img"
    run("truncate", "-s", size, str(image))
    device = run("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        yield device
    finally:
        run("losetup", "-d", device, check=False)
        image.unlink(missing_ok=True)


def remove_lvm(vg: str, device: str) -> None:
    """The VG and PV this module made on ``device`` (only if that VG is ours)."""
    assert vg.startswith("rctest-")
    if run("vgs", vg, check=False).returncode == 0:
        run("vgremove", "-f", vg, check=False)
    if run("pvs", device, check=False).returncode == 0:
        run("pvremove", "-ff", "-y", device, check=False)


def remove_pool(ws: Workspace, name: str) -> None:
    """The pool, stopped first (unmounts an fs pool), then undefined."""
    import libvirt

    try:
        pool = ws.conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    with contextlib.suppress(libvirt.libvirtError):
        if pool.isActive():
            pool.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        pool.undefine()


@pytest.fixture
def loop(ws: Workspace) -> Iterator[Callable[[], str]]:
    """Make loop devices on demand; each is detached after the test, after the pools
    and VGs on it are removed."""
    made: list[tuple[str, contextlib.ExitStack]] = []

    def make() -> str:
        stack = contextlib.ExitStack()
        where = ws.hostdir / f"loop{len(made)}"
        where.mkdir()
        device = stack.enter_context(loop_device(where))
        made.append((device, stack))
        return device

    try:
        yield make
    finally:
        for pool in ws.conn.listAllStoragePools(0):
            if pool.name().startswith(ws.prefix):
                remove_pool(ws, pool.name())
        for device, stack in made:
            remove_lvm(ws.n("vg"), device)
            stack.close()


def test_golden_pool_xml_validates(tmp_path: Path) -> None:
    files = sorted(DATA.glob("pool-*.xml"))
    assert len(files) >= 10
    for path in files:
        done = run("virt-xml-validate", str(path), "storagepool", check=False)
        assert done.returncode == 0, f"{path.name}: {done.stderr}"


@needs_lvm
def test_logical_pool_is_built_on_a_loop_device_and_settles(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    device = loop()
    name, vg = ws.n("lvm"), ws.n("vg")
    spec = {"type": "logical", "source": {"devices": [device], "name": vg}, "build": True}
    ws.write("pool.yaml", doc("StoragePool", name, spec))
    roots = (ws.hostdir, Path(device))
    ws.converge(allowed_roots=roots)
    assert run("vgs", "--noheadings", "-o", "pv_name", vg).stdout.split() == [device]
    assert ws.conn.storagePoolLookupByName(name).isActive()
    assert_settled(ws, allowed_roots=roots)

    # without allowedDiskRoots naming it, the device is refused (SPEC §5)
    plan = ws.plan()
    [a] = [x for x in plan.actions if x.name == name]
    assert a.op is Op.ERROR and device in (a.reason or ""), render_plan(plan)


@needs_lvm
def test_a_device_with_a_filesystem_is_not_built_over(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    device = loop()
    run("mkfs.ext4", "-q", "-L", "rctest-data", device)
    name = ws.n("lvm")
    spec = {"type": "logical", "source": {"devices": [device], "name": ws.n("vg")},
            "build": True}  # fmt: skip
    ws.write("pool.yaml", doc("StoragePool", name, spec))
    result = ws.apply(allowed_roots=(ws.hostdir, Path(device)))
    assert result.failed
    assert "already formatted" in describe(result) or "already built" in describe(result)
    assert run("blkid", "-o", "value", "-s", "TYPE", device).stdout.strip() == "ext4"
    assert run("vgs", ws.n("vg"), check=False).returncode != 0


@needs_lvm
@pytest.mark.skipif(not HAS_DM, reason="this kernel has no device-mapper (/proc/misc): "
                    "lvcreate fails, so no logical volume can be made here")  # fmt: skip
def test_a_logical_volume_is_made_raw_and_plans_empty(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    device = loop()
    pool, vg = ws.n("lvm"), ws.n("vg")
    roots = (ws.hostdir, Path(device))
    ws.write("pool.yaml",
             doc("StoragePool", pool, {"type": "logical", "build": True,
                                       "source": {"devices": [device], "name": vg}}),
             doc("Volume", ws.n("lv"), {"pool": pool, "capacity": "10MB", "format": "raw",
                                        "reclaimPolicy": "delete"}))  # fmt: skip
    ws.converge(allowed_roots=roots)
    assert_settled(ws, allowed_roots=roots)


def test_fs_pool_is_built_and_mounted_on_a_loop_device(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    device = loop()
    name = ws.n("fs")
    mount = ws.hostdir / "mnt"
    spec = {"type": "fs", "path": str(mount), "source": {"device": device, "format": "ext4"},
            "build": True}  # fmt: skip
    ws.write("pool.yaml", doc("StoragePool", name, spec),
             doc("Volume", ws.n("img"), {"pool": name, "capacity": "8MiB",
                                         "reclaimPolicy": "delete"}))  # fmt: skip
    roots = (ws.hostdir, Path(device))
    ws.converge(allowed_roots=roots)
    assert run("blkid", "-o", "value", "-s", "TYPE", device).stdout.strip() == "ext4"
    assert str(mount) in run("findmnt", "-n", "-o", "TARGET", device).stdout
    assert (mount / ws.n("img")).exists()
    assert_settled(ws, allowed_roots=roots)


def test_fs_pool_on_an_existing_filesystem_keeps_its_data(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    """No build: the filesystem made by hand is mounted as it is, its files kept."""
    device = loop()
    run("mkfs.ext4", "-q", "-L", "rctest-data", device)
    seed = ws.hostdir / "seed"
    seed.mkdir()
    run("mount", device, str(seed))
    try:
        (seed / "keep.raw").write_bytes(b"data first\n" * 100)
    finally:
        run("umount", str(seed))
    name = ws.n("fs")
    mount = ws.hostdir / "mnt"
    spec = {"type": "fs", "path": str(mount), "source": {"device": device, "format": "ext4"}}
    ws.write("pool.yaml", doc("StoragePool", name, spec))
    roots = (ws.hostdir, Path(device))
    ws.converge(allowed_roots=roots)
    assert (mount / "keep.raw").read_bytes() == b"data first\n" * 100
    assert "keep.raw" in ws.virsh("vol-list", name)
    assert_settled(ws, allowed_roots=roots)


@pytest.mark.skipif(shutil.which("parted") is None,
                    reason="parted is not installed (scripts/setup-host.sh)")  # fmt: skip
def test_disk_pool_gets_a_partition_table_and_round_trips_through_export(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    device = loop()
    name = ws.n("disk")
    spec = {"type": "disk", "path": "/dev", "source": {"device": device, "format": "gpt"},
            "build": True}  # fmt: skip
    ws.write("pool.yaml", doc("StoragePool", name, spec))
    roots = (ws.hostdir, Path(device))
    ws.converge(allowed_roots=roots)
    assert run("blkid", "-o", "value", "-s", "PTTYPE", device).stdout.strip() == "gpt"
    pool = ws.conn.storagePoolLookupByName(name)
    assert pool.isActive()
    assert_settled(ws, allowed_roots=roots)

    # what libvirt keeps of it (free extents under <device>) is no reason for a change
    before = pool.XMLDesc(1)
    out = ws.root / "exported"
    done = ws.cli("export", f"StoragePool/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept as defined" not in done.stderr, done.stderr
    [path] = out.rglob("*.yaml")
    exported = yaml.safe_load(path.read_text())["spec"]
    assert exported["source"] == {"device": device, "format": "gpt"}, exported
    (ws.directory / "pool.yaml").unlink()
    shutil.copy(path, ws.directory / "pool.yaml")
    assert_settled(ws, allowed_roots=roots)
    assert pool.XMLDesc(1) == before


def _define(ws: Workspace, xml: str) -> None:
    path = ws.root / "pool-define.xml"
    path.write_text(xml)
    ws.virsh("pool-define", str(path))


@pytest.mark.parametrize("kind", ["netfs", "iscsi"])
def test_a_pool_that_cannot_run_here_round_trips_through_export(ws: Workspace, kind: str) -> None:
    """Defined by hand, never started (no NFS server or iSCSI target on this machine)."""
    name = ws.n(kind)
    if kind == "netfs":
        source = ("<host name='nfs.example.org'/><dir path='/export/images'/>"
                  "<format type='nfs'/>")  # fmt: skip
        target = str(ws.hostdir / "nfs")
    else:
        source = ("<host name='192.0.2.10' port='3260'/>"
                  "<device path='iqn.2013-06.com.example:storage'/>"
                  "<initiator><iqn name='iqn.2013-06.com.example:client'/></initiator>")  # fmt: skip
        target = "/dev/disk/by-path"
    _define(ws, f"<pool type='{kind}'><name>{name}</name><source>{source}</source>"
                f"<target><path>{target}</path></target></pool>")  # fmt: skip
    pool = ws.conn.storagePoolLookupByName(name)
    before = pool.XMLDesc(1)  # VIR_STORAGE_XML_INACTIVE
    assert not pool.isActive()

    out = ws.root / "exported"
    done = ws.cli("export", f"StoragePool/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept as defined" not in done.stderr, done.stderr
    [path] = out.rglob("*.yaml")
    spec: dict[str, Any] = yaml.safe_load(path.read_text())["spec"]
    assert spec["type"] == kind and spec["state"] == "inactive" and "build" not in spec
    done = ws.cli("validate", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr

    ws.directory.rmdir()
    ws.directory.symlink_to(out)
    plan = ws.plan()
    [a] = plan.actions
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")
    ], render_plan(plan)
    assert a.steps == ()
    done = ws.cli("apply", str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_settled(ws)
    assert pool.XMLDesc(1) == before
    assert not pool.isActive()


@needs_lvm
def test_a_hand_made_logical_pool_round_trips_through_export(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    """A VG made with vgcreate, a pool defined on it with virsh and started: exported,
    adopted with no other change, its definition unchanged."""
    device = loop()
    vg, name = ws.n("vg"), ws.n("lvm")
    run("pvcreate", "-q", device)
    run("vgcreate", "-q", vg, device)
    _define(ws, f"<pool type='logical'><name>{name}</name><source><device path='{device}'/>"
                f"<name>{vg}</name><format type='lvm2'/></source>"
                f"<target><path>/dev/{vg}</path></target></pool>")  # fmt: skip
    ws.virsh("pool-start", name)
    pool = ws.conn.storagePoolLookupByName(name)
    before = pool.XMLDesc(1)

    out = ws.root / "exported"
    done = ws.cli("export", f"StoragePool/{name}", "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept as defined" not in done.stderr, done.stderr
    [path] = out.rglob("*.yaml")
    spec = yaml.safe_load(path.read_text())["spec"]
    assert spec["source"] == {"devices": [device], "name": vg, "format": "lvm2"}, spec
    assert "build" not in spec
    ws.directory.rmdir()
    ws.directory.symlink_to(out)
    roots = (ws.hostdir, Path(device))
    plan = ws.plan(allowed_roots=roots)
    [a] = plan.actions
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")
    ], render_plan(plan)
    ws.converge(allowed_roots=roots)
    assert_settled(ws, allowed_roots=roots)
    assert pool.XMLDesc(1) == before and pool.isActive()


def test_a_pool_type_this_libvirt_lacks_is_refused_naming_the_package(ws: Workspace) -> None:
    """Measured, not assumed: which types pool-capabilities says are supported."""
    supported = ws.virsh("pool-capabilities")
    if "<pool type='zfs' supported='yes'>" in supported:
        pytest.skip("this libvirt has the zfs storage backend")
    ws.write("pool.yaml", doc("StoragePool", ws.n("tank"),
                              {"type": "zfs", "source": {"name": ws.n("tank")}}))  # fmt: skip
    load, _observed, plan = ws.reconciler().plan()
    problems = [str(p) for p in load.problems]
    assert len(problems) == 1 and "libvirt-daemon-driver-storage-zfs" in problems[0], problems
    assert "pool.yaml:6:9: spec.type: " in problems[0], problems  # the type line
    assert plan.actions == () or all(a.name != ws.n("tank") for a in plan.actions)
