"""Issue 11, items 3 to 5, through the command line against the real libvirtd.

* A hostile repository: ``.git/config`` naming programs (``core.fsmonitor``,
  hooks, a filter) is never obeyed by plan, apply or the daemon, and the
  revision recorded is still git's; a world-writable ``.git`` is refused.
* Every host-path field outside the allowed roots: plan and apply refuse it
  with one line naming the field and the path; nothing is created.
* A state directory that is a file, under /proc, read-only or full: plan,
  apply, run and status exit 1 with one line naming the path, no traceback,
  and the inventory is never corrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import inventory
from reconciler.errors import StateDirError
from tests.integration.engine_support import REPO, Workspace, pool, vm, volume, ws_fixture  # noqa: F401

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, chown)")

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}  # fmt: skip


def safe_git(cwd: Path, *args: str) -> str:
    """git with the repository's programs disarmed: for set-up and the expected values."""
    done = subprocess.run(
        ["git", "-c", "core.fsmonitor=", "-c", "core.hooksPath=/nonexistent",
         "-c", "init.defaultBranch=main", "-C", str(cwd), *args],
        capture_output=True, text=True, env=GIT_ENV, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the JSON log lines: what a person reads."""
    return [line for line in done.stderr.splitlines() if not line.startswith("{")]


def assert_one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("reconciler: error: "), output
    for needle in needles:
        assert needle in lines[0], output
    return lines[0]


# --------------------------------------------------------------------------
# Item 3: the manifest repository runs nothing
# --------------------------------------------------------------------------


def arm(repo: Path, marker: Path) -> None:
    """Make ``repo``'s configuration name a program that leaves ``marker`` when run."""
    script = repo.parent / "evil.sh"
    script.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\n")
    script.chmod(0o755)
    hooks = repo.parent / "hooks"
    hooks.mkdir()
    for hook in ("post-index-change", "pre-commit", "post-checkout", "reference-transaction"):
        (hooks / hook).symlink_to(script)
    with (repo / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {script}\n\thooksPath = {hooks}\n"
                     f'[filter "x"]\n\tclean = {script}\n\tsmudge = {script}\n'
                     f"\tprocess = {script}\n")  # fmt: skip


def test_plan_and_apply_never_run_what_the_repository_names(ws: Workspace) -> None:
    name = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(name))
    (ws.directory / ".gitattributes").write_text("*.yaml filter=x\n")
    safe_git(ws.directory, "init", "-q")
    safe_git(ws.directory, "add", "-A")
    safe_git(ws.directory, "commit", "-qm", "first")
    marker = ws.root / "ran-as-root"
    arm(ws.directory, marker)
    # proof that the set-up is armed: the git of the past runs the program
    subprocess.run(["git", "-C", str(ws.directory), "status"], env=GIT_ENV,
                   capture_output=True, check=False)  # fmt: skip
    assert marker.exists()
    marker.unlink()

    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists(), marker.read_text()
    head = safe_git(ws.directory, "rev-parse", "--short=12", "HEAD")
    assert ws.inventory()[f"Network/{name}"]["revision"] == head

    (ws.directory / "net.yaml").write_text((ws.directory / "net.yaml").read_text() + "\n")
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not marker.exists(), marker.read_text()


def start_daemon(ws: Workspace, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "reconciler", "--log-format", "json", "run",
               str(ws.directory), "--connect", ws.uri, "--config", str(ws.config),
               "--resync-interval", "1h", *args]  # fmt: skip
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@root_only
def test_the_daemon_refuses_a_writable_git_and_runs_nothing_of_it(ws: Workspace) -> None:
    ws.root.chmod(0o755)
    ws.directory.chmod(0o755)
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    (ws.directory / "net.yaml").chmod(0o644)
    (ws.directory / ".gitattributes").write_text("*.yaml filter=x\n")
    safe_git(ws.directory, "init", "-q")
    safe_git(ws.directory, "add", "-A")
    safe_git(ws.directory, "commit", "-qm", "first")
    marker = ws.root / "ran-as-root"
    arm(ws.directory, marker)
    (ws.directory / ".gitattributes").chmod(0o644)
    (ws.directory / ".git").chmod(0o777)  # a local user could have armed it
    proc = start_daemon(ws, "--state-dir", str(ws.state_dir))
    try:
        status = ws.state_dir / "status.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if status.exists() and json.loads(status.read_text()).get("last_error"):
                break
            time.sleep(0.1)
        report = json.loads(status.read_text())
    finally:
        _, stderr = stop(proc)
    assert f"{ws.directory / '.git'} is writable by others" in report["last_error"], stderr
    assert not marker.exists(), marker.read_text()
    assert "Traceback" not in stderr
    assert ws.virsh("net-list", "--all", "--name").find(ws.n("net")) == -1


def test_the_daemon_reads_the_revision_of_an_armed_repository_without_running_it(
    ws: Workspace,
) -> None:
    name = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(name))
    (ws.directory / ".gitattributes").write_text("*.yaml filter=x\n")
    safe_git(ws.directory, "init", "-q")
    safe_git(ws.directory, "add", "-A")
    safe_git(ws.directory, "commit", "-qm", "first")
    marker = ws.root / "ran-as-root"
    arm(ws.directory, marker)  # root-owned and not writable by others: accepted
    head = safe_git(ws.directory, "rev-parse", "--short=12", "HEAD")
    proc = start_daemon(ws, "--state-dir", str(ws.state_dir))
    report: dict[str, Any] = {}
    try:
        status = ws.state_dir / "status.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                report = json.loads(status.read_text())
                if any(o["name"] == name and o["state"] == "in-sync"
                       for o in report["objects"]):  # fmt: skip
                    break
            time.sleep(0.2)
    finally:
        _, stderr = stop(proc)
    assert report.get("revision") == head, (report, stderr[-2000:])
    assert not marker.exists(), marker.read_text()


# --------------------------------------------------------------------------
# Item 4: every host path passes one check
# --------------------------------------------------------------------------

OUTSIDE = "/etc/reconciler-test-outside"


def manifests_naming(ws: Workspace, field: str) -> tuple[str, str, str]:
    """Write manifests whose ``field`` lies outside the roots; (kind/name, field, path)."""
    pool_name, vol_name, vm_name = ws.n("pool"), ws.n("vol"), ws.n("vm")
    path = f"{OUTSIDE}/{ws.prefix}{field}"
    if field == "path":
        ws.write("pool.yaml", pool(pool_name, path))
        return f"StoragePool {pool_name}", "path", path
    ws.write("pool.yaml", pool(pool_name, ws.subdir("pool")))
    if field == "source":
        ws.write("vol.yaml", volume(vol_name, pool_name, source=path))
        return f"Volume {vol_name}", "source", path
    spec: dict[str, Any] = {"state": "stopped"}
    shown = field
    if field == "disk":
        spec["disks"] = [{"file": path}]
        shown = "disks[0].file"
    elif field == "cdrom":
        spec["cdroms"] = [{"file": path}]
        shown = "cdroms[0].file"
    elif field in ("kernel", "initrd"):
        spec["kernel"] = str(ws.file("vmlinuz"))  # it exists: only the path under test fails
        spec[field] = path
    elif field == "serial":
        spec["serial"] = {"file": path}
        shown = "serial.file"
    elif field == "password":
        path = "/etc/shadow"
        spec["graphics"] = {"type": "vnc", "passwordFile": path}
        shown = "graphics.passwordFile"
    ws.write("vm.yaml", vm(vm_name, **spec))
    return f"VirtualMachine {vm_name}", shown, path


@pytest.mark.parametrize(
    "field", ["path", "source", "disk", "cdrom", "kernel", "initrd", "serial", "password"]
)
def test_a_host_path_outside_the_roots_is_refused_and_nothing_is_made(
    ws: Workspace, field: str
) -> None:
    what, shown, path = manifests_naming(ws, field)
    setting = "allowedSecretRoots" if field == "password" else "allowedDiskRoots"
    expected = f"{shown} {path} is outside {setting} ({ws.hostdir})"
    for command in (["plan"], ["apply", "--yes"]):
        done = ws.cli(*command, str(ws.directory))
        output = done.stdout + done.stderr
        assert done.returncode == 1, output
        assert "Traceback" not in output
        assert len([x for x in output.splitlines() if expected in x]) == 1, output
        assert f"! {what}: error" in output, output
    assert not Path(OUTSIDE).exists()
    kind, name = what.split()
    listing = {"StoragePool": "pool-list", "Volume": "pool-list", "VirtualMachine": "list"}[kind]
    if kind != "Volume":
        assert name not in ws.virsh(listing, "--all", "--name")
    else:
        assert name not in ws.virsh("vol-list", ws.n("pool"))
    assert f"{kind}/{name}" not in ws.inventory()


def test_a_password_file_under_the_secret_roots_is_used(ws: Workspace) -> None:
    secret = ws.hostdir / "vnc"
    secret.write_text("s3cret\n")
    name = ws.n("vm")
    ws.write("vm.yaml", vm(name, state="stopped",
                           graphics={"type": "vnc", "passwordFile": str(secret)}))  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passwd='s3cret'" in ws.domain(name).XMLDesc(1)


# --------------------------------------------------------------------------
# Item 5: the state directory's OS errors are one line naming the path
# --------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                   check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system of ``directory`` to the last byte."""
    with contextlib.suppress(OSError), (directory / "ballast").open("wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    with contextlib.suppress(OSError):
        for i in range(10000):  # inodes and partial pages too
            (directory / f"b{i}").write_bytes(b"\0" * 512)


def all_commands(ws: Workspace, state: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    flags = ["--state-dir", str(state)]
    return {
        "plan": ws.cli("plan", str(ws.directory), *flags, state=False),
        "apply": ws.cli("apply", str(ws.directory), "--yes", *flags, state=False),
        "run": ws.cli("run", str(ws.directory), *flags, state=False, timeout=60),
        "status": ws.cli("status", *flags, state=False),
    }


def test_a_file_in_the_way_of_the_state_directory(ws: Workspace) -> None:
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    state = ws.root / "state-file"
    state.write_text("not a folder\n")
    for command, done in all_commands(ws, state).items():
        line = assert_one_line_error(done, str(state))
        assert "not a folder" in line or "Not a directory" in line, (command, line)
    assert state.read_text() == "not a folder\n"
    assert ws.n("net") not in ws.virsh("net-list", "--all", "--name")


def test_a_state_directory_that_cannot_be_created(ws: Workspace) -> None:
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    for state in (Path("/proc") / ws.prefix / "state", ws.root / "file" / "state"):
        if state.parent.name == "file":
            state.parent.write_text("")
        results = all_commands(ws, state)
        for command in ("apply", "run"):
            line = assert_one_line_error(results[command], str(state))
            assert "cannot create the state directory" in line, line
        # plan creates nothing: it plans without an inventory, and says so
        plan = results["plan"]
        assert plan.returncode == 2, plan.stdout + plan.stderr
        assert "Traceback" not in plan.stderr
        assert f"{state}: no state directory yet" in plan.stderr + plan.stdout
        if not state.parent.is_file():  # status creates nothing: "no daemon has run yet"
            assert results["status"].returncode == 1
            assert "Traceback" not in results["status"].stderr
    assert ws.n("net") not in ws.virsh("net-list", "--all", "--name")


@root_only
def test_a_read_only_state_directory(ws: Workspace) -> None:
    first, second = ws.n("net1"), ws.n("net2")
    ws.write("net1.yaml", ws.isolated_network(first))
    with tmpfs(ws.root / "state-ro", "1m") as state:
        done = ws.cli("apply", str(ws.directory), "--yes", "--state-dir", str(state), state=False)
        assert done.returncode == 0, done.stdout + done.stderr
        before = (state / "inventory.json").read_bytes()
        ws.write("net2.yaml", ws.isolated_network(second))
        subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
        results = all_commands(ws, state)
        for command in ("apply", "run"):
            line = assert_one_line_error(results[command], str(state))
            assert "read-only" in line, line
        # plan only reads: it works, and says what apply would do
        assert results["plan"].returncode == 2, results["plan"].stdout + results["plan"].stderr
        # the first apply's status (the second could not write one): all in sync
        assert results["status"].returncode == 0, results["status"].stdout
        assert results["status"].stdout.startswith("written by apply"), results["status"].stdout
        assert "Traceback" not in results["status"].stderr
        assert (state / "inventory.json").read_bytes() == before
        assert second not in ws.virsh("net-list", "--all", "--name")


@root_only
def test_a_full_state_directory(ws: Workspace) -> None:
    first, second = ws.n("net1"), ws.n("net2")
    ws.write("net1.yaml", ws.isolated_network(first))
    with tmpfs(ws.root / "state-full") as state:
        done = ws.cli("apply", str(ws.directory), "--yes", "--state-dir", str(state), state=False)
        assert done.returncode == 0, done.stdout + done.stderr
        before = (state / "inventory.json").read_bytes()
        ws.write("net2.yaml", ws.isolated_network(second))
        fill(state)
        results = all_commands(ws, state)
        for command in ("apply", "run"):
            line = assert_one_line_error(results[command], str(state))
            assert "No space left on device" in line and "free space" in line, line
        assert results["plan"].returncode == 2, results["plan"].stdout + results["plan"].stderr
        assert (state / "inventory.json").read_bytes() == before
        json.loads(before)
        assert second not in ws.virsh("net-list", "--all", "--name")
        assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


@root_only
def test_an_inventory_write_on_a_full_disk_leaves_the_old_one_whole(ws: Workspace) -> None:
    """Past the lock (the disk filled during a pass): the save fails cleanly, named."""
    with tmpfs(ws.root / "state-save") as state:
        old = inventory.Inventory({"Network/a": {"uuid": "1"}})
        inventory.save(state, old)
        before = (state / "inventory.json").read_bytes()
        fill(state)
        big = inventory.Inventory({f"Network/n{i}": {"uuid": "x" * 100} for i in range(200)})
        with pytest.raises(StateDirError) as info:
            inventory.save(state, big)
        message = str(info.value)
        assert message.startswith(f"{state / 'inventory.json'}: cannot write the inventory: ")
        assert "\n" not in message
        assert (state / "inventory.json").read_bytes() == before
        assert inventory.load(state) == old
        assert not [p for p in state.iterdir() if p.name.endswith(".tmp")]


def test_status_of_a_state_directory_it_cannot_read(ws: Workspace) -> None:
    state = ws.root / "state"
    state.mkdir()
    (state / "status.json").mkdir()  # a folder in the way of the file
    done = ws.cli("status", "--state-dir", str(state), state=False)
    assert_one_line_error(done, str(state / "status.json"))

