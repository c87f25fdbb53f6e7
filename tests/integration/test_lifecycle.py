"""A VM's life, end to end, with a guest that really boots (tests/guest).

Manifests in, the engine (one reconcile pass in-process, as ``reconciler
apply``), and the guest's own word on its serial console: it booted, how much
memory and how many CPUs it sees, what its cloud-init seed holds, that it got
the ACPI power button. Domains are ``type: qemu`` (TCG) on machine ``pc``
(the guest kernel has no AHCI: the seed CD-ROM is IDE), booted directly from
the guest's kernel and initrd, without NICs. One VM goes through most checks,
so it boots three times in all; a UEFI VM boots once (OVMF loads the kernel).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.plan import Op
from reconciler.report import render_plan
from tests.guest import fixtures as guest_fixtures
from tests.guest.fixtures import GuestImage
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

guest_image = guest_fixtures.guest_image

BOOT_TIMEOUT = 90.0
MIB = 1024**2


class Console:
    """A guest's serial log, kept whole across restarts.

    libvirt truncates a ``<serial type='file'>`` log at each start, so a thread
    copies every complete line as it appears; ``lines()`` holds every boot's.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._partial = b""
        self._offset = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._poll()

    def _poll(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        with self._lock:
            if len(data) < self._offset:  # truncated: a new boot
                self._offset, self._partial = 0, b""
            chunk = self._partial + data[self._offset :]
            self._offset = len(data)
            *complete, self._partial = chunk.split(b"\n")
            for raw in complete:
                text = raw.decode("utf-8", "replace").replace("\r", "").replace("\0", "")
                self._lines.append(text)

    def lines(self) -> list[str]:
        self._poll()
        with self._lock:
            return list(self._lines)

    def mark(self) -> int:
        return len(self.lines())

    def wait_for(self, pattern: str, timeout: float, *, since: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            for line in lines[since:]:
                found = regex.search(line)
                if found:
                    return found
            if time.monotonic() > deadline:
                tail = "\n".join(lines[-25:]) or "(empty)"
                raise AssertionError(f"no line matching {pattern!r} after {timeout:g} s:\n{tail}")
            time.sleep(0.1)

    def alive(self, ok: Callable[[int, int], bool], timeout: float, since: int) -> tuple[int, int]:
        """(memory_kib, cpus) of the first ``alive`` line from ``since`` on where ``ok`` holds."""
        pattern = r"RCGUEST: alive memory_kib=(\d+) cpus=(\d+)"
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines()[since:]:
                m = re.search(pattern, line)
                if m and ok(int(m.group(1)), int(m.group(2))):
                    return int(m.group(1)), int(m.group(2))
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines()[-10:])
                raise AssertionError(f"no matching alive line after {timeout:g} s:\n{tail}")
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def console_for() -> Iterator[Callable[[Path], Console]]:
    consoles: list[Console] = []

    def make(path: Path) -> Console:
        consoles.append(Console(path))
        return consoles[-1]

    yield make
    for c in consoles:
        c.close()


def guest_vm(ws: Workspace, name: str, image: GuestImage, log: Path, **spec: Any) -> dict[str, Any]:
    """A VirtualMachine manifest for the test guest: TCG, pc, direct kernel boot, no NIC.

    The kernel and initrd are copied into the workspace's host directory: the
    engine refuses host paths outside its allowed roots, and that is the one."""
    image = _local_copy(ws, image)
    base: dict[str, Any] = {
        "type": "qemu",
        "machine": "pc",
        "memory": "256MiB",
        "maxMemory": "512MiB",
        "vcpus": 1,
        "maxVcpus": 2,
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "cmdline": image.cmdline,
        "serial": {"file": str(log)},
        "shutdownTimeout": "30s",
        "updatePolicy": "manual",
    }
    base.update(spec)
    return vm(name, **base)


def _local_copy(ws: Workspace, image: GuestImage) -> GuestImage:
    local = ws.hostdir / "guest"
    if not local.exists():
        local.mkdir(mode=0o755)
        for part in (image.kernel, image.initrd):
            shutil.copyfile(part, local / part.name)
            (local / part.name).chmod(0o644)
    return GuestImage(local / image.kernel.name, local / image.initrd.name, image.cmdline)


def _notes(result: Any, name: str) -> list[str]:
    return [n for r in result.results if r.action.name == name for n in r.notes]


def _user_data(console: Console, since: int) -> list[str]:
    """The ``user-data`` lines the guest printed from its seed, from line ``since`` on."""
    console.wait_for(r"RCGUEST: cidata (found|none)", 30, since=since)
    console.wait_for(r"RCGUEST: alive", 10, since=since)
    return [
        line.split("cidata user-data: ", 1)[1]
        for line in console.lines()[since:]
        if "RCGUEST: cidata user-data: " in line
    ]


def test_vm_lifecycle_with_a_real_guest(
    ws: Workspace, guest_image: GuestImage, console_for: Callable[[Path], Console]
) -> None:
    name = ws.n("vm")
    log = ws.hostdir / "serial.log"
    console = console_for(log)
    pool_dir = ws.subdir("pool")
    ws.write("pool.yaml", pool(ws.n("pool"), pool_dir),
             volume(ws.n("data"), ws.n("pool"), "16MiB", format="raw"))  # fmt: skip
    manifest = guest_vm(
        ws, name, guest_image, log,
        disks=[{"volume": ws.n("data")}],  # the seed goes into this volume's pool
        cloudInit={"userData": "#cloud-config\nhostname: first\n", "metaData": {"rack": "r1"}},
    )  # fmt: skip
    spec = manifest["spec"]
    ws.write("vm.yaml", manifest)

    # -- create: the seed volume first, then the VM, which boots and reads it
    plan = ws.plan()
    create = action(plan, "VirtualMachine", name)
    assert create.op is Op.CREATE, render_plan(plan, verbose=True)
    assert [s.verb for s in create.steps][:2] == ["write-seed", "define-domain"]
    ws.converge()
    assert_settled(ws)
    console.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)
    assert _user_data(console, 0) == ["#cloud-config", "hostname: first"]
    meta = [ln for ln in console.lines() if "cidata meta-data: " in ln]
    assert any(f"local-hostname: {name}" in ln for ln in meta), meta
    assert any("rack: r1" in ln for ln in meta) and any("instance-id: iid-" in ln for ln in meta)
    seed = ws.conn.storagePoolLookupByName(ws.n("pool")).storageVolLookupByName(f"{name}-cidata")
    assert seed.path().startswith(str(pool_dir))
    assert f"{name}-cidata" in ws.virsh("domblklist", name)
    dom = ws.domain(name)
    first_id = dom.ID()

    # -- memory up within maxMemory: live, the balloon gives the guest more
    before, _ = console.alive(lambda mem, cpus: mem <= 256 * 1024, 30, since=0)
    spec["memory"] = "384MiB"
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"memory"}, render_plan(ws.plan())
    mark = console.mark()
    ws.converge()
    assert_settled(ws)
    after, _ = console.alive(lambda mem, cpus: mem > before + 100 * 1024, 30, since=mark)
    assert after <= 384 * 1024
    assert dom.ID() == first_id, "memory change restarted the VM"

    # -- vCPUs up within maxVcpus: hot-plugged, the guest onlines the new one
    spec["vcpus"] = 2
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE and paths(a) == {"vcpus"}
    mark = console.mark()
    ws.converge()
    console.alive(lambda mem, cpus: cpus == 2, 30, since=mark)
    assert dom.ID() == first_id, "vcpu change restarted the VM"

    # -- a restart-class change under updatePolicy manual: pending, not restarted
    spec["clock"] = "localtime"
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_RESTART and paths(a) == {"clock"}
    ws.converge()
    pending = action(assert_settled(ws, allow_restart_pending=True), "VirtualMachine", name)
    assert [c.path for c in pending.restart_pending] == ["clock"]
    assert dom.ID() == first_id
    # reverted: the pending restart clears, still without a restart
    spec["clock"] = "utc"
    ws.write("vm.yaml", manifest)
    ws.converge()
    assert_settled(ws)
    assert dom.ID() == first_id

    # -- a changed seed: rewritten now, read at the next boot
    spec["cloudInit"]["userData"] = "#cloud-config\nhostname: second\n"
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_RESTART and paths(a) == {"cloudInit"}, render_plan(ws.plan())
    assert [s.verb for s in a.steps] == ["write-seed", "define-domain"]
    ws.converge()
    pending = action(assert_settled(ws, allow_restart_pending=True), "VirtualMachine", name)
    assert [c.path for c in pending.restart_pending] == ["cloudInit"]
    assert dom.ID() == first_id

    # -- updatePolicy restart: a graceful restart (ACPI), and the guest sees the new seed
    spec["updatePolicy"] = "restart"
    ws.write("vm.yaml", manifest)
    a = only(ws.plan(), "VirtualMachine", name)
    assert [s.verb for s in a.steps] == ["restart-domain"], render_plan(ws.plan())
    mark = console.mark()
    result = ws.converge()
    assert_settled(ws)
    console.wait_for(r"RCGUEST: acpi power button, powering off", 5, since=mark)
    assert any("shut down by ACPI" in n for n in _notes(result, name)), describe(result)
    second_id = ws.domain(name).ID()
    assert second_id != first_id
    boot = console.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT, since=mark)
    assert boot
    assert _user_data(console, mark) == ["#cloud-config", "hostname: second"]

    # -- storage while it runs: grow a disk (block resize), hot-plug a clone of a base
    spec["disks"].append({"volume": ws.n("clone"), "bus": "virtio"})
    ws.write("pool.yaml", pool(ws.n("pool"), pool_dir),
             volume(ws.n("data"), ws.n("pool"), "32MiB", format="raw"),
             volume(ws.n("base"), ws.n("pool"), "8MiB", format="qcow2"),
             volume(ws.n("clone"), ws.n("pool"), "16MiB", format="qcow2",
                    backingVolume=ws.n("base")))  # fmt: skip
    ws.write("vm.yaml", manifest)
    plan = ws.plan()
    grow = action(plan, "Volume", ws.n("data"))
    assert grow.op is Op.UPDATE_LIVE and [s.verb for s in grow.steps] == ["block-resize"]
    a = action(plan, "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE and "attach-device" in [s.verb for s in a.steps]
    ws.converge()
    assert_settled(ws)
    assert ws.domain(name).ID() == second_id
    info = ws.virsh("domblkinfo", name, "vda", "--human")
    assert re.search(r"Capacity:\s+32\.000 MiB", info), info
    blocks = ws.virsh("domblklist", name)
    assert re.search(rf"vdb\s+\S*{re.escape(ws.n('clone'))}", blocks), blocks
    clone_path = (
        ws.conn.storagePoolLookupByName(ws.n("pool")).storageVolLookupByName(ws.n("clone")).path()
    )
    img = _image_info(clone_path)
    assert img["backing-filename"].endswith(ws.n("base")), img

    # -- hot-unplug: the guest's kernel (ACPI PCI hot-plug) releases the disk at once
    spec["disks"].pop()
    ws.write("vm.yaml", manifest)
    a = action(ws.plan(), "VirtualMachine", name)
    assert a.op is Op.UPDATE_LIVE and "detach-device" in [s.verb for s in a.steps]
    result = ws.converge()
    assert not _notes(result, name), describe(result)  # released: nothing to report
    after = assert_settled(ws)
    assert not action(after, "VirtualMachine", name).restart_pending
    assert ws.n("clone") not in ws.virsh("domblklist", name)
    assert ws.domain(name).ID() == second_id

    # -- shrinking is refused, with the reason
    ws.write("pool.yaml", pool(ws.n("pool"), pool_dir),
             volume(ws.n("data"), ws.n("pool"), "16MiB", format="raw"),
             volume(ws.n("base"), ws.n("pool"), "8MiB", format="qcow2"),
             volume(ws.n("clone"), ws.n("pool"), "16MiB", format="qcow2",
                    backingVolume=ws.n("base")))  # fmt: skip
    refused = action(ws.plan(), "Volume", ws.n("data"))
    assert refused.op is Op.ERROR and "shrinking capacity" in refused.reason, refused.reason
    ws.write("pool.yaml", pool(ws.n("pool"), pool_dir),
             volume(ws.n("data"), ws.n("pool"), "32MiB", format="raw"),
             volume(ws.n("base"), ws.n("pool"), "8MiB", format="qcow2"),
             volume(ws.n("clone"), ws.n("pool"), "16MiB", format="qcow2",
                    backingVolume=ws.n("base")))  # fmt: skip

    # -- state stopped: ACPI shutdown, which the guest honours
    spec["state"] = "stopped"
    ws.write("vm.yaml", manifest)
    mark = console.mark()
    result = ws.converge()
    assert_settled(ws)
    console.wait_for(r"RCGUEST: acpi power button, powering off", 5, since=mark)
    assert any("shut down by ACPI" in n for n in _notes(result, name)), describe(result)
    assert not ws.domain(name).isActive()

    # -- a guest that ignores ACPI is forced off after shutdownTimeout
    spec["cmdline"] = f"{guest_image.cmdline} rcguest.ignore_acpi=1"
    spec["shutdownTimeout"] = "5s"
    spec["state"] = "running"
    ws.write("vm.yaml", manifest)
    mark = console.mark()
    ws.converge()
    console.wait_for(r"RCGUEST: acpi power button will be ignored", BOOT_TIMEOUT, since=mark)
    spec["state"] = "stopped"
    ws.write("vm.yaml", manifest)
    mark = console.mark()
    started = time.monotonic()
    result = ws.converge()
    took = time.monotonic() - started
    console.wait_for(r"RCGUEST: acpi power button ignored", 5, since=mark)
    assert any("forced off" in n for n in _notes(result, name)), describe(result)
    assert 5 <= took < 20, took
    assert not ws.domain(name).isActive()

    # -- prune: the VM goes, and its seed volume with it (the data volumes are retained)
    ws.remove("vm.yaml")
    result = ws.converge()
    assert action(result.plan, "VirtualMachine", name).op is Op.DELETE
    names = {v.name() for v in ws.conn.storagePoolLookupByName(ws.n("pool")).listAllVolumes()}
    assert f"{name}-cidata" not in names and ws.n("data") in names
    assert_settled(ws)


def _write_pattern(path: Path, size: int) -> None:
    """A raw image of ``size`` bytes: 1 MiB of random data at 1 MiB, zeros elsewhere."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MIB)
        f.write(os.urandom(MIB))
    path.chmod(0o644)


def _image_info(path: str) -> dict[str, Any]:
    """``qemu-img info`` of an image (``-U``: it may be open by a running VM)."""
    command = ["qemu-img", "info", "-U", "--output=json", path]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def _same_content(a: str, b: str) -> None:
    done = subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_volume_source_is_imported_into_raw_qcow2_and_clones(ws: Workspace) -> None:
    raw_src = ws.hostdir / "src.raw"
    _write_pattern(raw_src, 4 * MIB)
    qcow_src = ws.hostdir / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw_src), str(qcow_src)],
                   check=True)  # fmt: skip
    qcow_src.chmod(0o644)
    pool_dir = ws.subdir("pool")
    p = ws.n("pool")
    ws.write(
        "storage.yaml",
        pool(p, pool_dir),
        volume(ws.n("raw"), p, "8MiB", format="raw", source=str(raw_src)),
        volume(ws.n("qcow"), p, "8MiB", format="qcow2", source=str(qcow_src)),
        volume(ws.n("base"), p, "8MiB", format="qcow2"),
        volume(ws.n("delta"), p, "8MiB", format="qcow2", backingVolume=ws.n("base"),
               source=str(qcow_src)),
    )  # fmt: skip
    plan = ws.plan()
    assert [s.verb for s in action(plan, "Volume", ws.n("raw")).steps] == [
        "create-volume",
        "import-volume",
    ]
    ws.converge()
    assert_settled(ws)
    pool_ = ws.conn.storagePoolLookupByName(p)
    for name in ("raw", "qcow", "delta"):
        _same_content(str(raw_src), pool_.storageVolLookupByName(ws.n(name)).path())
    delta = pool_.storageVolLookupByName(ws.n("delta")).path()
    info = _image_info(delta)
    assert info["backing-filename"].endswith(ws.n("base")), info
    assert info["format"] == "qcow2"


def test_uefi_vm_applies_starts_settles_and_prune_removes_its_nvram(
    ws: Workspace, guest_image: GuestImage, console_for: Callable[[Path], Console]
) -> None:
    name = ws.n("uefi")
    nvram = Path(f"/var/lib/libvirt/qemu/nvram/{name}_VARS.fd")
    log = ws.hostdir / "uefi.log"
    console = console_for(log)
    ws.write("vm.yaml", guest_vm(ws, name, guest_image, log, firmware="uefi",
                                 shutdownTimeout="10s"))  # fmt: skip
    ws.converge()
    assert_settled(ws)
    console.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)  # OVMF loads the kernel too
    dom = ws.domain(name)
    assert dom.isActive()
    live = dom.XMLDesc(0)
    assert "type='pflash'" in live and "OVMF" in live, live
    assert nvram.exists(), f"no NVRAM at {nvram}"
    ws.remove("vm.yaml")
    ws.write("other.yaml", guest_vm(ws, ws.n("keep"), guest_image, log, state="stopped"))
    result = ws.converge()
    assert action(result.plan, "VirtualMachine", name).op is Op.DELETE
    assert name not in [d.name() for d in ws.conn.listAllDomains(0)]
    assert not nvram.exists(), f"NVRAM {nvram} left behind"


def test_observe_lists_volumes_of_a_pool_busy_with_a_clone(ws: Workspace) -> None:
    """A pool with a job running (a volume being cloned, by anyone) cannot be refreshed;
    observing must not fail for it (it did: the whole pass failed)."""
    import libvirt

    p = ws.n("pool")
    ws.write("storage.yaml", pool(p, ws.subdir("pool")), volume(ws.n("src"), p, "4GiB",
                                                                 format="raw"))  # fmt: skip
    ws.converge()
    lv_pool = ws.conn.storagePoolLookupByName(p)
    src = lv_pool.storageVolLookupByName(ws.n("src"))
    clone_xml = (f"<volume><name>{ws.n('copy')}</name><capacity unit='GiB'>4</capacity>"
                 "<target><format type='raw'/></target></volume>")  # fmt: skip
    cloning = threading.Thread(target=lambda: lv_pool.createXMLFrom(clone_xml, src, 0))
    cloning.start()
    try:
        busy = False
        while cloning.is_alive() and not busy:
            try:
                lv_pool.refresh(0)
            except libvirt.libvirtError as exc:
                busy = "asynchronous jobs" in str(exc)
            time.sleep(0.01)
        assert busy, "the clone ended before it could be observed; make it larger"
        names = {v.name for v in ws.hypervisor.volumes(p)}
        assert ws.n("src") in names
    finally:
        cloning.join(60)
