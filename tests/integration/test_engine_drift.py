"""Out-of-band changes made with virsh show in the plan with the right field, and apply
reverts them (the plan after is empty)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import libvirt
import pytest

from reconciler.plan import Op
from reconciler.report import render_plan
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    describe,
    paths,
    pool,
    vm,
    volume,
    ws_fixture,
)


def _drift(ws: Workspace, kind: str, name: str, virsh: list[str], want: set[str],
           op: Op = Op.UPDATE_LIVE, check: Callable[[], bool] | None = None) -> None:  # fmt: skip
    """Make one change behind the engine's back; the plan must name it; apply reverts it."""
    ws.virsh(*virsh)
    plan = ws.plan()
    moving = [a for a in plan.actions if a.changes_anything]
    assert [(a.kind.value, a.name) for a in moving] == [(kind, name)], (
        f"after `virsh {' '.join(virsh)}`:\n{render_plan(plan, verbose=True)}"
    )
    a = moving[0]
    assert a.op is op, render_plan(plan)
    assert paths(a) == want, render_plan(plan)
    ws.converge()
    assert_settled(ws)
    if check is not None:
        assert check(), f"`virsh {' '.join(virsh)}` was not reverted"


def _vm_setup(ws: Workspace, **spec: object) -> str:
    name = ws.n("vm")
    ws.write("vm.yaml", vm(name, memory="64MiB", maxMemory="128MiB", autostart=True, **spec))
    ws.converge()
    assert_settled(ws)
    return name


def test_vm_drift_is_reverted(ws: Workspace) -> None:
    name = _vm_setup(ws)
    dom = ws.domain(name)

    _drift(ws, "VirtualMachine", name, ["setmem", name, "80M", "--config"], {"memory"},
           check=lambda: "<currentMemory unit='KiB'>65536<" in dom.XMLDesc(2))  # fmt: skip
    _drift(ws, "VirtualMachine", name, ["setmaxmem", name, "256M", "--config"], {"maxMemory"},
           check=lambda: "<memory unit='KiB'>131072<" in dom.XMLDesc(2))  # fmt: skip
    _drift(ws, "VirtualMachine", name, ["autostart", name, "--disable"], {"autostart"},
           check=lambda: dom.autostart() == 1)  # fmt: skip
    _drift(ws, "VirtualMachine", name, ["destroy", name], {"state"},
           check=lambda: dom.isActive() == 1)  # fmt: skip
    _drift(
        ws,
        "VirtualMachine",
        name,
        ["setvcpus", name, "2", "--config", "--maximum"],
        {"maxVcpus"},
        check=lambda: dom.vcpusFlags(2 | 4) == 1,
    )  # CONFIG | MAXIMUM


def test_undefined_stopped_vm_is_defined_again(ws: Workspace) -> None:
    name = _vm_setup(ws, state="stopped")
    ws.virsh("undefine", name)
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.CREATE, render_plan(plan)
    ws.converge()
    assert_settled(ws)
    dom = ws.domain(name)
    assert not dom.isActive() and dom.autostart() == 1


def test_undefined_running_vm_is_defined_again(ws: Workspace) -> None:
    """`virsh undefine` of a running VM leaves it running, transient: it must become
    persistent and owned again, without a restart."""
    name = _vm_setup(ws)
    before = ws.domain(name).UUIDString()
    ws.virsh("undefine", name)
    assert ws.domain(name).isPersistent() == 0
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op in (Op.CREATE, Op.UPDATE_LIVE), render_plan(plan)
    result = ws.converge()
    assert_settled(ws)
    dom = ws.domain(name)
    assert dom.isPersistent() == 1 and dom.isActive() == 1, describe(result)
    assert dom.UUIDString() == before


def test_network_drift_is_reverted(ws: Workspace) -> None:
    name = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(name, dhcp=True, autostart=True))
    ws.converge()
    net = ws.conn.networkLookupByName(name)
    _drift(ws, "Network", name, ["net-autostart", name, "--disable"], {"autostart"},
           check=lambda: net.autostart() == 1)  # fmt: skip
    _drift(ws, "Network", name, ["net-destroy", name], {"state"},
           check=lambda: net.isActive() == 1)  # fmt: skip
    ws.virsh("net-undefine", name)  # running: becomes transient
    ws.virsh("net-destroy", name)  # and then gone
    plan = ws.plan()
    assert action(plan, "Network", name).op is Op.CREATE, render_plan(plan)
    ws.converge()
    assert_settled(ws)
    assert ws.conn.networkLookupByName(name).isActive()


def test_storage_drift_is_reverted(ws: Workspace) -> None:
    pool_name, vol_name = ws.n("pool"), ws.n("vol")
    path = ws.subdir("pool")
    ws.write("storage.yaml", pool(pool_name, path, autostart=True),
             volume(vol_name, pool_name, "8MiB", format="qcow2"))  # fmt: skip
    ws.converge()
    p = ws.conn.storagePoolLookupByName(pool_name)
    _drift(ws, "StoragePool", pool_name, ["pool-autostart", pool_name, "--disable"],
           {"autostart"}, check=lambda: p.autostart() == 1)  # fmt: skip
    _drift(ws, "Volume", vol_name, ["vol-delete", vol_name, "--pool", pool_name],
           {"capacity", "format"},
           op=Op.CREATE, check=lambda: (path / vol_name).exists())  # fmt: skip


def test_stopped_pool_is_started_and_its_volumes_are_kept(ws: Workspace) -> None:
    pool_name, vol_name = ws.n("pool"), ws.n("vol")
    path = ws.subdir("pool")
    ws.write("storage.yaml", pool(pool_name, path),
             volume(vol_name, pool_name, "8MiB", format="raw"))  # fmt: skip
    ws.converge()
    (path / vol_name).write_bytes(b"keep me" + bytes(8 * 1024**2 - 7))
    p = ws.conn.storagePoolLookupByName(pool_name)
    _drift(ws, "StoragePool", pool_name, ["pool-destroy", pool_name], {"state"},
           check=lambda: p.isActive() == 1)  # fmt: skip
    assert (path / vol_name).read_bytes().startswith(b"keep me")


def test_undefined_running_network_is_defined_again(ws: Workspace) -> None:
    """`virsh net-undefine` of an active network leaves it running, transient."""
    name = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(name, autostart=True))
    ws.converge()
    before = ws.conn.networkLookupByName(name).UUIDString()
    ws.virsh("net-undefine", name)
    result = ws.converge()
    assert_settled(ws)
    net = ws.conn.networkLookupByName(name)
    assert net.isPersistent() == 1 and net.isActive() == 1, describe(result)
    assert net.UUIDString() == before


def test_adopted_transient_pool_is_defined(ws: Workspace) -> None:
    """A pool started with `virsh pool-create` (transient, never defined) and adopted by a
    manifest is defined in place: still active, same UUID, its files untouched."""
    pool_name = ws.n("pool")
    path = ws.subdir("pool")
    (path / "data.img").write_bytes(b"keep me")
    xml = ws.hostdir / "pool.xml"
    xml.write_text(f"<pool type='dir'><name>{pool_name}</name>"
                   f"<target><path>{path}</path></target></pool>")  # fmt: skip
    ws.virsh("pool-create", str(xml))
    p = ws.conn.storagePoolLookupByName(pool_name)
    before = p.UUIDString()
    assert p.isPersistent() == 0
    ws.write("pool.yaml", pool(pool_name, path, adopt=True))
    plan = ws.plan()
    a = action(plan, "StoragePool", pool_name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"ownership", "persistent"}, render_plan(plan)
    ws.converge()
    assert_settled(ws)
    p = ws.conn.storagePoolLookupByName(pool_name)
    assert (p.isPersistent(), p.isActive(), p.UUIDString()) == (1, 1, before)
    assert (path / "data.img").read_bytes() == b"keep me"


def test_a_busy_pool_does_not_fail_the_pass(ws: Workspace) -> None:
    """Another tool creates volumes in a pool while the reconciler plans."""
    import threading
    import time

    path = ws.subdir("busy")
    ws.write("pool.yaml", pool(ws.n("pool"), path))
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.converge()
    stop = threading.Event()
    busy_pool = ws.conn.storagePoolLookupByName(ws.n("pool"))

    def churn() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            xml = (f"<volume><name>{ws.n(f'churn{i % 4}')}</name>"
                   "<capacity unit='MiB'>16</capacity><allocation unit='MiB'>16</allocation>"
                   "</volume>")  # fmt: skip
            with contextlib.suppress(libvirt.libvirtError):
                busy_pool.createXML(xml, 0).delete(0)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    failures = []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                ws.plan()
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]


@pytest.mark.parametrize("state", ["stopped", "running"])
def test_seed_overwritten_outside_is_written_again(ws: Workspace, state: str) -> None:
    """The cloud-init seed is the tool's: content written into it by anyone else (its
    modification time moves) is replaced by the seed the manifest describes."""
    pool_name, name = ws.n("pool"), ws.n("vm")
    path = ws.subdir("pool")
    ws.write("pool.yaml", pool(pool_name, path))
    ws.write("vm.yaml", vm(name, state=state, cloudInit={
        "userData": "#cloud-config\nhostname: seeded\n", "pool": pool_name}))  # fmt: skip
    ws.converge()
    assert_settled(ws)
    seed = path / f"{name}-cidata"
    good = seed.read_bytes()
    assert b"seeded" in good
    seed.write_bytes(b"#cloud-config\nruncmd: [evil]\n".ljust(len(good), b"\0"))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"cloudInit.volume"}, render_plan(plan)
    assert [c.old for c in a.changes] == ["overwritten outside reconciler"]
    assert "write-seed" in [s.verb for s in a.steps]
    ws.converge()
    assert_settled(ws)
    assert seed.read_bytes() == good
    assert bool(ws.domain(name).isActive()) == (state == "running")
