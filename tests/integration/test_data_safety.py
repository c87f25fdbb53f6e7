"""Disk data no manifest asked to lose stays (breaker findings, against the real libvirtd):
a file already in a new pool's folder, volumes and networks a running VM still uses, a
qcow2 whose backing chain leaves the allowed roots."""

from __future__ import annotations

import hashlib
import subprocess

from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    pool,
    vm,
    volume,
    ws_fixture,
)


def _sha(path: object) -> str:
    return hashlib.sha256(open(str(path), "rb").read()).hexdigest()


def test_a_file_already_in_a_new_pool_is_never_claimed_nor_pruned(ws: Workspace) -> None:
    folder = ws.subdir("pool")
    precious = folder / ws.n("precious")
    precious.write_bytes(b"\xab" * 65536)
    before = _sha(precious)
    ws.write("stack.yaml", pool(ws.n("pool"), folder),
             volume(ws.n("precious"), ws.n("pool"), reclaimPolicy="delete"))  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1 and "exists already" in done.stdout, done.stdout + done.stderr
    assert f"Volume/{ws.n('precious')}" not in ws.inventory()
    ws.write("stack.yaml", pool(ws.n("pool"), folder))  # the Volume manifest removed
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert precious.exists() and _sha(precious) == before


def test_a_prune_keeps_what_a_running_vm_uses(ws: Workspace) -> None:
    folder = ws.subdir("pool")
    net, p, data, name = ws.n("net"), ws.n("pool"), ws.n("data"), ws.n("vm")
    ws.write("stack.yaml", pool(p, folder), volume(data, p, reclaimPolicy="delete"),
             ws.isolated_network(net))  # fmt: skip
    ws.write("vm.yaml", vm(name, disks=[{"volume": data}], interfaces=[{"network": net}]))
    ws.converge()
    path = folder / data
    ws.remove("stack.yaml")  # the VM manifest still names them
    done = ws.cli("apply", str(ws.directory), "--yes")
    out = done.stdout + done.stderr
    assert "kept while in use" in out or "no Volume" in out, out
    assert path.exists() and ws.domain(name).isActive()
    assert ws.conn.networkLookupByName(net).isActive()
    # deleting it by name is refused too
    done = ws.cli("delete", f"Volume/{data}", "--delete-data", "--yes",
                  "--manifest-dir", str(ws.directory))  # fmt: skip
    assert done.returncode == 1 and "in use by VirtualMachine/" in done.stdout + done.stderr
    assert path.exists()


def test_a_qcow2_reading_through_a_file_outside_the_roots_is_refused(ws: Workspace) -> None:
    outside = "/etc/hostname"
    evil = ws.hostdir / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", outside,
                    str(evil), "1M"], check=True)  # fmt: skip
    folder = ws.subdir("pool")
    ws.write("stack.yaml", pool(ws.n("pool"), folder),
             volume(ws.n("v"), ws.n("pool"), capacity="16MiB", format="raw",
                    source=str(evil)))  # fmt: skip
    ws.write("vm.yaml", vm(ws.n("vm"), state="stopped",
                           disks=[{"file": str(evil), "format": "qcow2"}]))  # fmt: skip
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count(f"reads through backing file {outside}, outside the allowed") == 2
    assert "spec.source" in done.stderr and "spec.disks[0].file" in done.stderr
