"""Changing one declared field gives exactly the expected change class and field path,
and applying converges (the next plan is empty, or shows only a restart pending).

VMs are checked running (live updates, restart-pending ones) and stopped
(everything applies to the definition at once). Networks, pools and volumes
follow. Every VM starts in well under a second: no OS, no PXE ROM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.plan import Action, Op
from reconciler.report import render_plan
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    describe,
    only,
    paths,
    pool,
    vm,
    volume,
    ws_fixture,
)

MAC1 = "52:54:00:c0:00:01"
MAC2 = "52:54:00:c0:00:02"
OTHER_PC = "pc-i440fx-7.1"  # a versioned i440fx type other than what `pc` means today


@dataclass
class Files:
    disk1: Path
    disk2: Path
    iso1: Path
    iso2: Path


@dataclass(frozen=True)
class VmCase:
    id: str
    mutate: Callable[[dict[str, Any], Files], None]
    # the paths of the change (exact set), or a prefix every path starts with
    paths: frozenset[str] = frozenset()
    prefix: str = ""
    running_op: Op = Op.UPDATE_LIVE
    pending: bool = False  # running: restart pending after apply
    # running: the guest (none here: no OS answers the ACPI eject) keeps the device, so
    # the unplug is requested, then waits for a restart instead of being sent again
    guest_keeps: bool = False
    base: Callable[[dict[str, Any], Files], None] | None = None


def _set(key: str, value: Any) -> Callable[[dict[str, Any], Files], None]:
    def mutate(spec: dict[str, Any], files: Files) -> None:
        spec[key] = value

    return mutate


def _add_disk(spec: dict[str, Any], files: Files) -> None:
    spec["disks"].append({"file": str(files.disk2), "format": "raw", "bus": "virtio"})


def _remove_disk(spec: dict[str, Any], files: Files) -> None:
    spec["disks"].pop()


def _add_nic(spec: dict[str, Any], files: Files) -> None:
    spec["interfaces"].append({"network": spec["interfaces"][0]["network"], "mac": MAC2})


def _remove_nic(spec: dict[str, Any], files: Files) -> None:
    spec["interfaces"].pop()


def _cache(spec: dict[str, Any], files: Files) -> None:
    spec["disks"][0]["cache"] = "writeback"


def _media(spec: dict[str, Any], files: Files) -> None:
    spec["cdroms"][0]["file"] = str(files.iso2)


def _port(spec: dict[str, Any], files: Files) -> None:
    spec["graphics"] = {"type": "vnc", "port": 5987}


VM_CASES = [
    VmCase("memory-up", _set("memory", "96MiB"), frozenset({"memory"})),
    VmCase("vcpus-up", _set("vcpus", 2), frozenset({"vcpus"})),
    VmCase(
        "machine",
        _set("machine", OTHER_PC),
        frozenset({"machine"}),
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase(
        "cpu",
        _set("cpu", "host-passthrough"),
        frozenset({"cpu"}),
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase(
        "clock",
        _set("clock", "localtime"),
        frozenset({"clock"}),
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase(
        "boot",
        _set("boot", ["cdrom", "disk"]),
        frozenset({"boot"}),
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase(
        "graphics-port",
        _port,
        frozenset({"graphics.port"}),
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase(
        "disk-cache",
        _cache,
        frozenset({"disks[{disk1}].cache"}),  # a disk is known by its image
        running_op=Op.UPDATE_RESTART,
        pending=True,
    ),
    VmCase("disk-add", _add_disk, prefix="disks[{disk2}]."),
    VmCase("disk-remove", _remove_disk, prefix="disks[{disk2}].", base=_add_disk,
           guest_keeps=True),
    VmCase("nic-add", _add_nic, prefix=f"interfaces[{MAC2}]."),
    VmCase("nic-remove", _remove_nic, prefix=f"interfaces[{MAC2}].", base=_add_nic,
           guest_keeps=True),
    VmCase("cdrom-media", _media, frozenset({"cdroms[hdc].file"})),
    VmCase("autostart", _set("autostart", True), frozenset({"autostart"})),
]


def _base_vm(ws: Workspace, files: Files) -> dict[str, Any]:
    return vm(
        ws.n("vm"),
        memory="64MiB",
        maxMemory="128MiB",
        vcpus=1,
        maxVcpus=2,
        machine="pc",
        cpu="host-model",
        clock="utc",
        boot=["disk"],
        graphics={"type": "vnc", "port": "auto"},
        disks=[{"file": str(files.disk1), "format": "raw", "cache": "none"}],
        cdroms=[{"file": str(files.iso1), "target": "hdc"}],
        interfaces=[{"network": ws.n("net"), "mac": MAC1}],
        autostart=False,
    )


def _files(ws: Workspace) -> Files:
    return Files(ws.file("disk1.img"), ws.file("disk2.img"), ws.iso("one.iso"), ws.iso("two.iso"))


def _named(paths: frozenset[str], files: Files) -> frozenset[str]:
    """``{disk1}`` in a case's paths: the image file of this test (disks are keyed by it)."""
    return frozenset(p.replace("{disk1}", str(files.disk1)).replace("{disk2}", str(files.disk2))
                     for p in paths)  # fmt: skip


def _check_paths(a: Action, case: VmCase, files: Files) -> None:
    got = paths(a)
    if case.paths:
        assert got == _named(case.paths, files), render_plan_of(a)
    else:
        [prefix] = _named(frozenset({case.prefix}), files)
        assert got and all(p.startswith(prefix) for p in got), render_plan_of(a)


def render_plan_of(a: Action) -> str:
    from reconciler.plan import Plan

    return render_plan(Plan((a,)), verbose=True)


VM_PARAMS = [
    pytest.param(case, state, id=f"{case.id}-{state}")
    for case in VM_CASES
    for state in ("running", "stopped")
]  # fmt: skip


@pytest.mark.parametrize(("case", "state"), VM_PARAMS)
def test_vm_field_change(ws: Workspace, case: VmCase, state: str) -> None:
    files = _files(ws)
    manifest = _base_vm(ws, files)
    manifest["spec"]["state"] = state
    if case.base is not None:
        case.base(manifest["spec"], files)
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    name = ws.n("vm")
    assert bool(ws.domain(name).isActive()) == (state == "running")

    case.mutate(manifest["spec"], files)
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    a = only(plan, "VirtualMachine", name)
    _check_paths(a, case, files)
    if state == "running":
        assert a.op is case.running_op, render_plan(plan)
        assert all(c.live for c in a.changes) == (case.running_op is Op.UPDATE_LIVE), render_plan(
            plan
        )
    else:
        assert a.op in (Op.UPDATE_LIVE, Op.UPDATE_RESTART), render_plan(plan)
        assert not a.restart_pending, render_plan(plan)

    result = ws.converge()
    after = assert_settled(ws, allow_restart_pending=True)
    pending = action(after, "VirtualMachine", name).restart_pending
    if state == "running" and case.pending:
        assert {c.path for c in pending} == _named(case.paths, files), render_plan(after)
    elif state == "running" and case.guest_keeps:
        notes = [n for r in result.results for n in r.notes]
        assert any("has not released" in n for n in notes), describe(result)
        [prefix] = _named(frozenset({case.prefix}), files)
        assert pending and all(c.path.startswith(prefix) for c in pending), describe(result)
        assert not action(after, "VirtualMachine", name).steps  # not sent again
    else:
        assert not pending, describe(result)
    assert bool(ws.domain(name).isActive()) == (state == "running")  # never restarted


def _live(ws: Workspace, name: str) -> str:
    return ws.domain(name).XMLDesc(0)


def test_running_vm_live_changes_reach_the_running_domain(ws: Workspace) -> None:
    """The update-live classes really change the running domain (not only its definition)."""
    files = _files(ws)
    manifest = _base_vm(ws, files)
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.write("vm.yaml", manifest)
    ws.converge()
    name = ws.n("vm")
    spec = manifest["spec"]
    spec["vcpus"] = 2
    spec["memory"] = "96MiB"
    _add_disk(spec, files)
    _add_nic(spec, files)
    _media(spec, files)
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    assert only(plan, "VirtualMachine", name).op is Op.UPDATE_LIVE
    ws.converge()
    assert_settled(ws)
    dom = ws.domain(name)
    live = _live(ws, name)
    assert dom.vcpusFlags(0) == 2  # VIR_DOMAIN_AFFECT_CURRENT on a running domain: live
    assert str(files.disk2) in live and MAC2 in live and str(files.iso2) in live
    # memory: without a guest balloon driver the running size cannot be observed;
    # the definition must hold it.
    assert "<currentMemory unit='KiB'>98304</currentMemory>" in dom.XMLDesc(2)  # INACTIVE


def test_restart_pending_clears_when_reverted(ws: Workspace) -> None:
    files = _files(ws)
    manifest = _base_vm(ws, files)
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.write("vm.yaml", manifest)
    ws.converge()
    name = ws.n("vm")
    manifest["spec"]["clock"] = "localtime"
    ws.write("vm.yaml", manifest)
    ws.converge()
    pending = action(ws.plan(), "VirtualMachine", name).restart_pending
    assert [c.path for c in pending] == ["clock"]
    manifest["spec"]["clock"] = "utc"
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)  # no restart pending any more


def test_update_policy_restart_restarts_to_apply(ws: Workspace) -> None:
    files = _files(ws)
    manifest = _base_vm(ws, files)
    manifest["spec"]["updatePolicy"] = "restart"
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    ws.write("vm.yaml", manifest)
    ws.converge()
    name = ws.n("vm")
    before = ws.domain(name).ID()
    manifest["spec"]["clock"] = "localtime"
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_RESTART and "restart-domain" in [s.verb for s in a.steps]
    result = ws.converge()
    notes = [n for r in result.results for n in r.notes]
    assert any("forced off" in n for n in notes), notes  # no OS: ACPI is ignored
    assert_settled(ws)
    assert ws.domain(name).isActive() and ws.domain(name).ID() != before
    assert "offset='localtime'" in _live(ws, name)


# --- networks -----------------------------------------------------------------------


def _net_dump(ws: Workspace, name: str, inactive: bool = False) -> str:
    return ws.virsh("net-dumpxml", name, *(["--inactive"] if inactive else []))


@dataclass(frozen=True)
class NetCase:
    id: str
    mutate: Callable[[dict[str, Any], list[str]], None]
    paths: frozenset[str]
    op: Op
    live_has: str = ""  # text the running network must show afterwards
    live_lacks: str = ""


def _hosts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    hosts: list[dict[str, Any]] = spec["ipv4"]["dhcp"].setdefault("hosts", [])
    return hosts


NET_CASES = [
    NetCase("dhcp-host-add",
            lambda s, ip: _hosts(s).append({"mac": MAC2, "ip": ip[21], "name": "two"}),
            frozenset({f"ipv4.dhcp.hosts[{MAC2}].ip", f"ipv4.dhcp.hosts[{MAC2}].name"}),
            Op.UPDATE_LIVE, live_has=MAC2),
    NetCase("dhcp-host-change", lambda s, ip: _hosts(s)[0].update(ip=ip[22]),
            frozenset({f"ipv4.dhcp.hosts[{MAC1}].ip"}), Op.UPDATE_LIVE, live_has=".22'"),
    NetCase("dhcp-host-remove", lambda s, ip: _hosts(s).clear(),
            frozenset({f"ipv4.dhcp.hosts[{MAC1}].ip", f"ipv4.dhcp.hosts[{MAC1}].name"}),
            Op.UPDATE_LIVE, live_lacks=MAC1),
    NetCase("dns-host-add", lambda s, ip: s.setdefault("dnsHosts", []).append(
                {"ip": ip[30], "names": ["extra.rctest"]}),
            frozenset(), Op.UPDATE_LIVE, live_has="extra.rctest"),
    NetCase("domain", lambda s, ip: s.update(domain="other.rctest"), frozenset({"domain"}),
            Op.UPDATE_RESTART),
    NetCase("mtu", lambda s, ip: s.update(mtu=1400), frozenset({"mtu"}), Op.UPDATE_RESTART),
]  # fmt: skip


@pytest.mark.parametrize("case", NET_CASES, ids=[c.id for c in NET_CASES])
def test_network_field_change(ws: Workspace, case: NetCase) -> None:
    name = ws.n("net")
    manifest = ws.isolated_network(name, dhcp=True, domain="one.rctest", mtu=1500)
    spec = manifest["spec"]
    base = spec["ipv4"]["address"].rsplit(".", 1)[0]
    ips = [f"{base}.{i}" for i in range(256)]
    spec["ipv4"]["dhcp"]["hosts"] = [{"mac": MAC1, "ip": ips[20], "name": "one"}]
    ws.write("net.yaml", manifest)
    ws.converge()
    assert_settled(ws)

    case.mutate(spec, ips)
    ws.write("net.yaml", manifest)
    plan = ws.plan()
    a = only(plan, "Network", name)
    assert a.op is case.op, render_plan(plan)
    if case.paths:
        assert paths(a) == case.paths, render_plan(plan)
    else:
        assert paths(a) and all(p.startswith("dnsHosts[") for p in paths(a)), render_plan(plan)
    if case.op is Op.UPDATE_LIVE:
        assert all(c.live for c in a.changes), render_plan(plan)
        assert "net-update" in [s.verb for s in a.steps], render_plan(plan, verbose=True)

    ws.converge()
    after = assert_settled(ws, allow_restart_pending=True)
    pending = action(after, "Network", name).restart_pending
    if case.op is Op.UPDATE_RESTART:
        assert {c.path for c in pending} == case.paths, render_plan(after, verbose=True)
    else:
        assert not pending, render_plan(after, verbose=True)
    live, config = _net_dump(ws, name), _net_dump(ws, name, inactive=True)
    for text in (live, config):
        if case.live_has:
            assert case.live_has in text, text
        if case.live_lacks:
            assert case.live_lacks not in text, text
    assert ws.conn.networkLookupByName(name).isActive()


# --- pools ------------------------------------------------------------------------------


def test_pool_autostart_and_state(ws: Workspace) -> None:
    name = ws.n("pool")
    path = ws.subdir("pool")
    ws.write("pool.yaml", pool(name, path))
    ws.converge()
    assert_settled(ws)

    ws.write("pool.yaml", pool(name, path, autostart=True))
    a = only(ws.plan(), "StoragePool", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"autostart"}
    ws.converge()
    assert_settled(ws)
    assert ws.conn.storagePoolLookupByName(name).autostart() == 1

    ws.write("pool.yaml", pool(name, path, autostart=True, state="inactive"))
    a = only(ws.plan(), "StoragePool", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"state"}
    ws.converge()
    assert_settled(ws)
    assert not ws.conn.storagePoolLookupByName(name).isActive()

    ws.write("pool.yaml", pool(name, path, autostart=False, state="active"))
    a = only(ws.plan(), "StoragePool", name)
    assert paths(a) == {"state", "autostart"}
    ws.converge()
    assert_settled(ws)
    p = ws.conn.storagePoolLookupByName(name)
    assert p.isActive() and p.autostart() == 0


# --- volumes ---------------------------------------------------------------------------


def _volume_setup(ws: Workspace, fmt: str = "qcow2", **spec: Any) -> tuple[Path, str]:
    path = ws.subdir("pool")
    ws.write("pool.yaml", pool(ws.n("pool"), path))
    ws.write("vol.yaml", volume(ws.n("vol"), ws.n("pool"), "16MiB", format=fmt, **spec))
    ws.converge()
    assert_settled(ws)
    return path, ws.n("vol")


def _capacity(ws: Workspace, name: str) -> int:
    vol = ws.conn.storagePoolLookupByName(ws.n("pool")).storageVolLookupByName(name)
    return int(vol.info()[1])


def test_volume_grow_is_live(ws: Workspace) -> None:
    _, name = _volume_setup(ws)
    ws.write("vol.yaml", volume(name, ws.n("pool"), "32MiB", format="qcow2"))
    a = only(ws.plan(), "Volume", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"capacity"}
    assert [s.verb for s in a.steps] == ["resize-volume"]
    ws.converge()
    assert_settled(ws)
    assert _capacity(ws, name) == 32 * 1024**2


def test_volume_grow_under_a_running_vm_is_a_block_resize(ws: Workspace) -> None:
    _, name = _volume_setup(ws)
    ws.write("vm.yaml", vm(ws.n("vm"), disks=[{"volume": name}]))
    ws.converge()
    ws.write("vol.yaml", volume(name, ws.n("pool"), "32MiB", format="qcow2"))
    a = only(ws.plan(), "Volume", name)
    assert a.op is Op.UPDATE_LIVE and [s.verb for s in a.steps] == ["block-resize"]
    ws.converge()
    assert_settled(ws)
    assert _capacity(ws, name) == 32 * 1024**2
    assert ws.domain(ws.n("vm")).blockInfo("vda")[0] == 32 * 1024**2


def test_volume_shrink_is_refused(ws: Workspace) -> None:
    _, name = _volume_setup(ws)
    ws.write("vol.yaml", volume(name, ws.n("pool"), "8MiB", format="qcow2"))
    plan = ws.plan()
    a = action(plan, "Volume", name)
    assert a.op is Op.ERROR, render_plan(plan)
    assert "shrinking" in a.reason and "16MiB" in a.reason, a.reason
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    result = ws.apply()
    assert result.failed
    assert _capacity(ws, name) == 16 * 1024**2  # untouched


def test_volume_format_change_is_a_replace_only_when_allowed(ws: Workspace) -> None:
    path, name = _volume_setup(ws, fmt="raw")
    file = path / name
    with file.open("r+b") as f:
        f.write(b"precious data " * 100)
    ws.write("vol.yaml", volume(name, ws.n("pool"), "16MiB", format="qcow2"))

    plan = ws.plan()
    a = only(plan, "Volume", name)
    assert a.op is Op.REPLACE and "format" in paths(a), render_plan(plan)
    assert "--allow-replace" in a.reason, a.reason
    assert not a.steps  # nothing would be done
    ws.apply()
    assert file.read_bytes().startswith(b"precious data")  # not replaced
    ws.cli("apply", str(ws.directory), "--yes")
    assert file.read_bytes().startswith(b"precious data")
    assert action(ws.plan(), "Volume", name).op is Op.REPLACE  # still wanted, still refused

    done = ws.cli("apply", str(ws.directory), "--yes", "--allow-replace", f"Volume/{name}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_settled(ws)
    assert not file.read_bytes().startswith(b"precious data")  # the data is gone
    assert file.read_bytes()[:4] == b"QFI\xfb"  # now a qcow2 image


def test_apply_with_a_refused_replace_exits_1(ws: Workspace) -> None:
    _, name = _volume_setup(ws, fmt="raw")
    ws.write("vol.yaml", volume(name, ws.n("pool"), "16MiB", format="qcow2"))
    assert ws.cli("plan", str(ws.directory)).returncode in (1, 2)
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr


def _q35_vm(ws: Workspace, files: Files, disks: int) -> dict[str, Any]:
    extra = [ws.file(f"extra{i}.img") for i in range(disks)]
    return vm(ws.n("vm"), machine="q35", disks=[{"file": str(files.disk1), "format": "raw"}]
              + [{"file": str(f), "format": "raw"} for f in extra])  # fmt: skip


def test_refused_hotplug_waits_for_restart_instead_of_retrying(ws: Workspace) -> None:
    """A hot-plug libvirt refuses (here: no free PCIe slot) becomes restart pending:
    the same pass must not find it still to do (SPEC §3: an apply that does not settle
    is a bug)."""
    files = _files(ws)
    ws.write("vm.yaml", _q35_vm(ws, files, 0))
    ws.converge()
    ws.write("vm.yaml", _q35_vm(ws, files, 16))  # more than the free PCIe root ports
    result = ws.apply()
    notes = [n for r in result.results for n in r.notes]
    assert any("refused" in n for n in notes), describe(result)  # the premise
    assert not result.unsettled, describe(result)
    after = assert_settled(ws, allow_restart_pending=True)
    assert action(after, "VirtualMachine", ws.n("vm")).restart_pending, render_plan(after)


def test_q35_vm_hot_plugs_disks_and_nics(ws: Workspace) -> None:
    """What `virt-install` gives a q35 guest: spare PCIe root ports, so devices hot-plug."""
    files = _files(ws)
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    manifest = _q35_vm(ws, files, 0)
    ws.write("vm.yaml", manifest)
    ws.converge()
    manifest = _q35_vm(ws, files, 2)
    manifest["spec"]["interfaces"] = [{"network": ws.n("net"), "mac": MAC1},
                                      {"network": ws.n("net"), "mac": MAC2}]  # fmt: skip
    ws.write("vm.yaml", manifest)
    result = ws.converge()
    notes = [n for r in result.results for n in r.notes]
    assert not notes, notes
    assert_settled(ws)


def test_vnc_password_rotation_reaches_the_running_vm(ws: Workspace) -> None:
    """A new first line in graphics.passwordFile: the running display takes it at once
    (libvirt changes a VNC password live), without a restart."""
    secret = ws.hostdir / "vnc-password"
    secret.write_text("first1\n")
    name = ws.n("vm")
    ws.write("vm.yaml", vm(name, graphics={"type": "vnc", "passwordFile": str(secret)}))
    ws.converge()
    assert "passwd='first1'" in ws.domain(name).XMLDesc(1)  # VIR_DOMAIN_XML_SECURE
    secret.write_text("second2\n")
    a = only(ws.plan(), "VirtualMachine", name)
    assert paths(a) == {"graphics.password"}
    assert "second2" not in render_plan_of(a) and "first1" not in render_plan_of(a)
    ws.converge()
    after = assert_settled(ws, allow_restart_pending=True)
    dom = ws.domain(name)
    assert "passwd='second2'" in dom.XMLDesc(1), "the running display kept the old password"
    assert "passwd='second2'" in dom.XMLDesc(1 | 2)  # and the definition has it (SECURE|INACTIVE)
    assert not action(after, "VirtualMachine", name).restart_pending


def test_a_renamed_image_of_a_stopped_vm_keeps_the_guests_name_for_it(ws: Workspace) -> None:
    """Issue 10 (tester, case 4): the image of a stopped VM's sata disk renamed, no
    target declared: the new image is sda again (it was sdd), the other disks stay."""
    images = [ws.file(f"{n}.img", "1M", "raw") for n in ("root", "data", "logs")]
    renamed = ws.file("root-v2.img", "1M", "raw")
    name = ws.n("rename")

    def disks(first: Path) -> list[dict[str, Any]]:
        return [{"file": str(p), "format": "raw", "bus": "sata"} for p in (first, *images[1:])]

    ws.write("vm.yaml", vm(name, machine="q35", state="stopped", disks=disks(images[0])))
    ws.converge()
    before = {d.find("source").get("file"): d.find("target").get("dev")  # type: ignore[union-attr]
              for d in _disks(ws, name)}  # fmt: skip
    assert before == {str(images[0]): "sda", str(images[1]): "sdb", str(images[2]): "sdc"}
    ws.write("vm.yaml", vm(name, machine="q35", state="stopped", disks=disks(renamed)))
    result = ws.converge()
    assert not result.unsettled, describe(result)
    after = {d.find("source").get("file"): d.find("target").get("dev")  # type: ignore[union-attr]
             for d in _disks(ws, name)}  # fmt: skip
    assert after == {str(renamed): "sda", str(images[1]): "sdb", str(images[2]): "sdc"}
    assert_settled(ws)


def _disks(ws: Workspace, name: str) -> list[Any]:
    from lxml import etree

    root = etree.fromstring(ws.virsh("dumpxml", "--inactive", name).encode())
    return list(root.findall("devices/disk[@device='disk']"))


def test_a_volume_renamed_as_a_file_through_a_symlinked_folder_stays_one_disk(
    ws: Workspace,
) -> None:
    """A running VM's volume named as ``file:`` through a symlink to the pool folder is
    the same image: no detach, no second attach of an image the domain has (only QEMU's
    write lock stood between the guest and two writers), the disk keeps vda."""
    path, name = _volume_setup(ws)
    ws.write("vm.yaml", vm(ws.n("vm"), disks=[{"volume": name}]))
    ws.converge()
    link = ws.hostdir / "plink"
    link.symlink_to(path)
    ws.write("vm.yaml", vm(ws.n("vm"), disks=[{"file": f"{link}/{name}", "format": "qcow2"}]))
    a = only(ws.plan(), "VirtualMachine", ws.n("vm"))
    assert not [s for s in a.steps if s.verb in ("attach-device", "detach-device")], a.steps
    assert not [d for d in a.devices if d.how in ("add", "remove")], a.devices
    ws.converge()
    for flags in (0, 2):  # running, persistent (INACTIVE)
        xml = ws.domain(ws.n("vm")).XMLDesc(flags)
        assert xml.count("<disk type=") == 1 and "dev='vda'" in xml, xml
