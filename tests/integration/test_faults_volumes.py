"""Issue 11 item 1 against libvirtd: a volume with ``source:`` is done only when its
content is. A real SIGKILL of ``apply`` between the volume's create and its copy, a
copy that fails, and a source larger than the volume: the next plan never says
``No changes.`` for a volume that does not hold its source, and the converging
apply leaves content equal to the source (compared by checksum).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from reconciler.inventory import CONTENT_PENDING
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    pool,
    volume,
    ws_fixture,
)


def content_digest(path: str | Path, fmt: str | None = None, length: int | None = None) -> str:
    """sha256 of what a guest reads from an image (converted to raw first): its first
    ``length`` bytes, the rest checked to be zeros (a volume larger than its source)."""
    raw = Path(str(path) + ".raw-check")
    try:
        command = ["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)]
        if fmt:
            command[3:3] = ["-f", fmt]
        subprocess.run(command, check=True, capture_output=True)
        data = raw.read_bytes()
        if length is not None:
            assert data[length:].count(0) == len(data) - length, f"{path}: data past {length}"
            data = data[:length]
        return hashlib.sha256(data).hexdigest()
    finally:
        raw.unlink(missing_ok=True)


def patterned_image(ws: Workspace, name: str, size_mib: int = 4) -> Path:
    """A raw image whose every MiB differs (an empty copy cannot pass for it)."""
    path = ws.hostdir / name
    with path.open("wb") as out:
        for i in range(size_mib):
            out.write(hashlib.sha256(f"{name}-{i}".encode()).digest() * (1024 * 1024 // 32))
    path.chmod(0o644)
    return path


def fake_qemu_img(ws: Workspace, on_convert: str) -> dict[str, str]:
    """An environment whose ``qemu-img convert`` runs ``on_convert`` (shell) instead."""
    bindir = ws.root / "fakebin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "qemu-img"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = convert ]; then {on_convert}; fi\n'
        'exec /usr/bin/qemu-img "$@"\n'
    )
    script.chmod(0o755)
    import os

    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def cli(ws: Workspace, *args: str, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    import os
    import sys

    from tests.integration.engine_support import REPO

    command = [sys.executable, "-m", "reconciler", *args, "--connect", ws.uri,
               "--config", str(ws.config), "--state-dir", str(ws.state_dir)]  # fmt: skip
    full = {**os.environ, "NO_COLOR": "1", "RECONCILER_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, cwd=REPO, env=full, check=False)  # fmt: skip


def _stack(ws: Workspace, source: Path, capacity: str = "8MiB", fmt: str = "qcow2") -> str:
    images = ws.subdir("images")
    ws.write("storage.yaml", pool(ws.n("pool"), images),
             volume(ws.n("disk"), ws.n("pool"), capacity, format=fmt, source=str(source)))  # fmt: skip
    return str(images / ws.n("disk"))


def test_apply_killed_between_create_and_copy_is_finished_by_the_next(ws: Workspace) -> None:
    source = patterned_image(ws, "base.img")
    path = _stack(ws, source)
    # the copy's qemu-img kills the apply that started it: a SIGKILL at exactly that point
    killed = cli(ws, "apply", str(ws.directory), "--yes",
                 env=fake_qemu_img(ws, 'kill -9 "$PPID"; exit 1'))  # fmt: skip
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert Path(path).exists()
    assert ws.inventory()[f"Volume/{ws.n('disk')}"][CONTENT_PENDING] == {"source": str(source)}

    plan = cli(ws, "plan", str(ws.directory))
    assert plan.returncode == 2, plan.stdout + plan.stderr  # not "No changes."
    assert "content" in plan.stdout, plan.stdout
    done = cli(ws, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    size = source.stat().st_size
    assert content_digest(path, length=size) == content_digest(source, "raw")
    assert CONTENT_PENDING not in ws.inventory()[f"Volume/{ws.n('disk')}"]
    again = cli(ws, "plan", str(ws.directory))
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_failed_copy_is_retried_never_reported_in_sync(ws: Workspace) -> None:
    source = patterned_image(ws, "base.img")
    path = _stack(ws, source)
    failed = cli(ws, "apply", str(ws.directory), "--yes",
                 env=fake_qemu_img(ws, "echo 'simulated failure' >&2; exit 1"))  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    plan = cli(ws, "plan", str(ws.directory))
    assert plan.returncode == 2 and "content" in plan.stdout, plan.stdout + plan.stderr
    done = cli(ws, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    size = source.stat().st_size
    assert content_digest(path, length=size) == content_digest(source, "raw")
    assert cli(ws, "plan", str(ws.directory)).returncode == 0


def test_a_source_larger_than_capacity_is_a_plan_error(ws: Workspace) -> None:
    source = patterned_image(ws, "big.img", size_mib=6)
    _stack(ws, source, capacity="4MiB")
    plan = cli(ws, "plan", str(ws.directory))
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "more than capacity 4MiB" in plan.stdout + plan.stderr, plan.stdout + plan.stderr
    applied = cli(ws, "apply", str(ws.directory), "--yes")
    assert applied.returncode == 1
    assert ws.n("disk") not in ws.virsh("vol-list", ws.n("pool"), check=False)
