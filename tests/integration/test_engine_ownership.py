"""Ownership: objects made by hand under a manifest's name are conflicts, left alone,
until the manifest says ``adopt: true``."""

from __future__ import annotations

from reconciler.plan import Op
from reconciler.report import render_plan
from reconciler.xml.domain import OWNER_NAMESPACE
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    pool,
    vm,
    ws_fixture,
)


def _hand_made_domain(ws: Workspace, name: str) -> str:
    """As virt-install would make it on this host (its type and CPU, by the run's probe)."""
    return f"""<domain type='{ws.domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  {ws.cpu_xml("host-model")}
  <devices><memballoon model='none'/></devices>
</domain>"""


def test_hand_made_vm_is_a_conflict_until_adopted(ws: Workspace) -> None:
    name = ws.n("vm")
    xml_file = ws.hostdir / "vm.xml"
    xml_file.write_text(_hand_made_domain(ws, name))
    ws.virsh("define", str(xml_file))
    ws.virsh("start", name)
    dom = ws.domain(name)
    before = (dom.XMLDesc(2), dom.XMLDesc(0), dom.isActive(), dom.autostart())

    ws.write("vm.yaml", vm(name, memory="96MiB", autostart=True))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.CONFLICT, render_plan(plan)
    assert "adopt" in a.reason
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "conflict" in done.stdout
    result = ws.apply()
    assert result.failed
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert (dom.XMLDesc(2), dom.XMLDesc(0), dom.isActive(), dom.autostart()) == before
    assert f"VirtualMachine/{name}" not in ws.inventory()

    ws.write("vm.yaml", vm(name, memory="96MiB", autostart=True, adopt=True))
    plan = ws.plan()
    a = action(plan, "VirtualMachine", name)
    assert a.op in (Op.UPDATE_LIVE, Op.UPDATE_RESTART), render_plan(plan)
    assert "ownership" in {c.path for c in a.changes}
    ws.converge()
    assert_settled(ws, allow_restart_pending=True)
    assert OWNER_NAMESPACE in dom.XMLDesc(2)
    assert f"VirtualMachine/{name}" in ws.inventory()
    assert dom.isActive() and dom.autostart() == 1

    # Owned now: without adopt the manifest still owns it (no conflict).
    ws.write("vm.yaml", vm(name, memory="96MiB", autostart=True))
    assert_settled(ws, allow_restart_pending=True)


def test_hand_made_network_is_a_conflict_until_adopted(ws: Workspace) -> None:
    name = ws.n("net")
    manifest = ws.isolated_network(name)
    spec = manifest["spec"]
    xml = (f"<network><name>{name}</name><bridge name='{spec['bridge']}'/>"
           f"<ip address='{spec['ipv4']['address']}' prefix='24'/></network>")  # fmt: skip
    xml_file = ws.hostdir / "net.xml"
    xml_file.write_text(xml)
    ws.virsh("net-define", str(xml_file))
    net = ws.conn.networkLookupByName(name)
    before = net.XMLDesc(0)

    spec["domain"] = "hand.rctest"
    ws.write("net.yaml", manifest)
    plan = ws.plan()
    assert action(plan, "Network", name).op is Op.CONFLICT, render_plan(plan)
    assert ws.cli("plan", str(ws.directory)).returncode == 1
    assert ws.cli("apply", str(ws.directory), "--yes").returncode == 1
    assert net.XMLDesc(0) == before and not net.isActive()
    assert f"Network/{name}" not in ws.inventory()

    spec["adopt"] = True
    ws.write("net.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    assert f"Network/{name}" in ws.inventory()
    assert net.isActive() and "hand.rctest" in net.XMLDesc(0)


def test_hand_made_pool_is_a_conflict_until_adopted(ws: Workspace) -> None:
    name = ws.n("pool")
    path = ws.subdir("pool")
    ws.virsh("pool-define-as", name, "dir", "--target", str(path))
    ws.write("pool.yaml", pool(name, path, autostart=True))
    plan = ws.plan()
    assert action(plan, "StoragePool", name).op is Op.CONFLICT, render_plan(plan)
    assert ws.cli("apply", str(ws.directory), "--yes").returncode == 1
    p = ws.conn.storagePoolLookupByName(name)
    assert not p.isActive() and p.autostart() == 0
    ws.write("pool.yaml", pool(name, path, autostart=True, adopt=True))
    ws.converge()
    assert_settled(ws)
    assert p.isActive() and p.autostart() == 1
    assert f"StoragePool/{name}" in ws.inventory()
