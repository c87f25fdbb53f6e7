"""A controller driving a "remote" host over ``qemu+ssh://`` on loopback (SPEC §6, issue 14).

The remote host is this machine's libvirtd reached through a throwaway sshd
(the fixture of test_gitsource.py: 127.0.0.1 only, its own host key, a root
key authorized only for it) and libvirt's ssh transport with that key, the
port, and an ``ssh`` wrapper pinned to a known_hosts file of the test
(``command=``), so nothing of root's ``~/.ssh`` is used or written.

The reconciler CLI runs as the controller in a mount namespace of its own in
which the storage pool's folder is hidden under an empty tmpfs, and with a
``qemu-img`` first on its PATH that only records that it was called: if the
controller ran qemu-img or opened a volume's path for the remote host, the
copy would land in the tmpfs (or the call in the record) and the checks on the
real folder would fail. libvirtd, reached over ssh, sees the real folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from reconciler.hypervisor import Hypervisor
from reconciler.inventory import CONTENT_PENDING
from tests.integration import test_daemon, test_gitsource
from tests.integration.engine_support import (  # noqa: F401
    REPO,
    Workspace,
    doc,
    pool,
    vm,
    volume,
    ws_fixture,
)
from tests.integration.test_daemon import Env, wait_until
from tests.integration.test_gitsource import Sshd

sshd = test_gitsource.sshd  # the fixture: a throwaway sshd on 127.0.0.1
env = test_daemon.env  # the fixture: a daemon test's config, state and objects

pytestmark = pytest.mark.skipif(not Path("/usr/bin/virt-ssh-helper").exists(),
                                reason="libvirt's virt-ssh-helper is not installed")  # fmt: skip


def remote_uri(ws: Workspace, sshd: Sshd) -> str:
    return remote_uri_for(ws.root, sshd)


def remote_uri_for(root: Path, sshd: Sshd) -> str:
    """``qemu+ssh://`` to this machine's libvirtd through ``sshd``, with its key, and ssh
    held to a known_hosts file in ``root`` that names only that sshd's host key."""
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key.with_suffix('.pub').read_text()}")
    wrapper = root / "ssh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec ssh -o UserKnownHostsFile="{known}" -o StrictHostKeyChecking=yes '
        '-o BatchMode=yes -o IdentitiesOnly=yes -F /dev/null "$@"\n'
    )
    wrapper.chmod(0o755)
    return (f"qemu+ssh://root@127.0.0.1:{sshd.port}/system?keyfile={sshd.user_key}"
            f"&command={wrapper}&no_tty=1")  # fmt: skip


def patterned(path: Path, mib: int) -> Path:
    with path.open("wb") as out:
        for i in range(mib):
            out.write(hashlib.sha256(f"{path.name}-{i}".encode()).digest() * (1024**2 // 32))
    path.chmod(0o644)
    return path


def controller(ws: Workspace, uri: str, hidden: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a controller: ``hidden`` (the pool folder) is an empty tmpfs for it, and
    any qemu-img it runs is recorded in ``ws.root / 'qemu-img.calls'``."""
    bindir = ws.root / "bin"
    bindir.mkdir(exist_ok=True)
    recorder = bindir / "qemu-img"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> "{ws.root / "qemu-img.calls"}"\n'
                        'exec /usr/bin/qemu-img "$@"\n')  # fmt: skip
    recorder.chmod(0o755)
    command = [
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
        'mount -t tmpfs -o size=1m,mode=0755 controller-sees-nothing "$0" && exec "$@"',
        str(hidden), sys.executable, "-m", "reconciler", *args, "--connect", uri,
        "--config", str(ws.config), "--state-dir", str(ws.state_dir),
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_LOG_FORMAT": "json",
           "PATH": f"{bindir}:{os.environ['PATH']}"}  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, cwd=REPO, env=env, check=False)  # fmt: skip


def guest_digest(path: Path, length: int) -> str:
    """sha256 of the first ``length`` bytes a guest reads from the image (rest zeros)."""
    raw = path.parent.parent / (path.name + ".check")
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)],
                       check=True, capture_output=True)  # fmt: skip
        data = raw.read_bytes()
        assert data[length:].count(0) == len(data) - length, f"{path}: data past {length}"
        return hashlib.sha256(data[:length]).hexdigest()
    finally:
        raw.unlink(missing_ok=True)


def capacity(ws: Workspace, pool_name: str, name: str) -> int:
    info: Any = ws.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name).info()
    return int(info[1])


def test_a_remote_host_converges_volumes_through_libvirt_only(ws: Workspace, sshd: Sshd) -> None:
    uri = remote_uri(ws, sshd)
    images = ws.hostdir / "images"
    images.mkdir()
    sources = ws.hostdir / "sources"
    sources.mkdir()
    raw_source = patterned(sources / "base.img", 3)
    qcow2_source = sources / "data.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(patterned(sources / "d.img", 2)),
                    str(qcow2_source)], check=True, capture_output=True)  # fmt: skip

    # --host defaults to the connected host's name, as libvirt gives it over ssh
    with Hypervisor.open(uri) as hv:
        assert hv.remote
        name = hv.host_name()
    assert name == ws.conn.getHostname()

    p = ws.n("pool")
    base, clone, data = ws.n("base"), ws.n("clone"), ws.n("data")
    elsewhere = ws.n("elsewhere")

    def stack(grown: bool) -> None:
        ws.write("storage.yaml", pool(p, images),
                 volume(base, p, "4MiB", format="qcow2", source=str(raw_source)),
                 volume(clone, p, "8MiB" if grown else "4MiB", format="qcow2",
                        backingVolume=base),
                 volume(data, p, "16MiB" if grown else "4MiB", format="raw",
                        source=str(qcow2_source)),
                 doc("Volume", elsewhere, {"pool": p, "capacity": "1MiB"},
                     hosts=["not-" + name]),
                 doc("Volume", ws.n("here"), {"pool": p, "capacity": "1MiB"}, hosts=[name]))  # fmt: skip

    stack(grown=False)
    valid = controller(ws, uri, images, "validate", str(ws.directory))
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "5 manifests" in valid.stdout, valid.stdout  # not the one for another host
    applied = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "streamed to 127.0.0.1" in applied.stdout, applied.stdout
    # made by libvirtd on the real folder, which the controller never saw
    for vol in (base, clone, data, ws.n("here")):
        assert (images / vol).is_file(), vol
    assert not (images / elsewhere).exists()  # selected for another host: not planned
    assert guest_digest(images / base, raw_source.stat().st_size) == hashlib.sha256(
        raw_source.read_bytes()).hexdigest()  # fmt: skip
    assert guest_digest(images / data, 2 * 1024**2) == hashlib.sha256(
        (sources / "d.img").read_bytes()).hexdigest()  # fmt: skip
    assert capacity(ws, p, data) == 4 * 1024**2
    # the clone reads through its backing volume, as libvirt made it
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(images / clone)],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert str(images / base) in info
    assert not [v for v in ws.conn.storagePoolLookupByName(p).listAllVolumes(0)
                if v.name().endswith(".upload")]  # fmt: skip

    stack(grown=True)
    grown = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert capacity(ws, p, clone) == 8 * 1024**2
    assert capacity(ws, p, data) == 16 * 1024**2

    again = controller(ws, uri, images, "plan", str(ws.directory))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout
    calls = ws.root / "qemu-img.calls"
    assert not calls.exists(), calls.read_text()  # the controller ran no qemu-img


def test_a_source_on_a_backing_volume_is_a_plan_error_for_a_remote_host(
    ws: Workspace, sshd: Sshd
) -> None:
    """libvirt's virStorageVolCreateXMLFrom writes whole images (it drops a backing store),
    so such a volume is refused at plan time, at its backingVolume, the rest proceeds."""
    uri = remote_uri(ws, sshd)
    images = ws.hostdir / "images"
    images.mkdir()
    source = patterned(ws.hostdir / "full.img", 2)
    p, base, overlay = ws.n("pool"), ws.n("base"), ws.n("overlay")
    ws.write("storage.yaml", pool(p, images), volume(base, p, "2MiB", format="qcow2"),
             volume(overlay, p, "2MiB", format="qcow2", backingVolume=base,
                    source=str(source)))  # fmt: skip
    plan = controller(ws, uri, images, "plan", str(ws.directory))
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "cannot be made on a remote host" in plan.stdout, plan.stdout
    assert "storage.yaml:" in plan.stdout
    applied = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert (images / base).is_file() and not (images / overlay).exists()


def test_a_failed_remote_copy_stays_pending_until_it_is_made(ws: Workspace, sshd: Sshd) -> None:
    """The content-pending mark (docs/reliability.md) works for a remote host: a copy that
    fails leaves the volume marked, plans are never "No changes." and the next good copy
    clears it. An ISO source (libvirt calls it iso, it is raw data) is imported as raw."""
    uri = remote_uri(ws, sshd)
    images = ws.hostdir / "images"
    images.mkdir()
    source = ws.hostdir / "seed.iso"
    overlay_of = patterned(ws.hostdir / "under.img", 1)
    # a qcow2 on a backing file: refused for a remote host, after the volume was made
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(overlay_of),
                    str(source)], check=True, capture_output=True)  # fmt: skip
    p, disk = ws.n("pool"), ws.n("iso")
    ws.write("storage.yaml", pool(p, images),
             volume(disk, p, "2MiB", format="qcow2", source=str(source)))  # fmt: skip
    failed = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "flatten it first" in failed.stdout + failed.stderr
    assert CONTENT_PENDING in ws.inventory()[f"Volume/{disk}"]
    pending = controller(ws, uri, images, "plan", str(ws.directory))
    assert pending.returncode == 2 and "content" in pending.stdout, pending.stdout

    from reconciler import cloudinit

    source.unlink()
    source.write_bytes(cloudinit.build_iso({"meta-data": "instance-id: fleet\n",
                                            "user-data": "#cloud-config\n"}))  # fmt: skip
    done = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert CONTENT_PENDING not in ws.inventory()[f"Volume/{disk}"]
    assert guest_digest(images / disk, source.stat().st_size) == hashlib.sha256(
        source.read_bytes()).hexdigest()  # fmt: skip
    assert capacity(ws, p, disk) == 2 * 1024**2
    again = controller(ws, uri, images, "plan", str(ws.directory))
    assert again.returncode == 0, again.stdout + again.stderr
    assert not (ws.root / "qemu-img.calls").exists()


def test_a_daemon_for_a_remote_host_runs_its_manifests(env: Env, sshd: Sshd) -> None:
    """``reconciler run`` as reconciler@HOST runs it: connected over ssh, it takes the
    manifests selecting libvirt's name for the host, and runs their VM on a volume
    streamed from a source on the controller."""
    remote = dataclasses.replace(env, uri=remote_uri_for(env.root, sshd))
    name = env.conn.getHostname()
    folder = Path(tempfile.mkdtemp(prefix=env.prefix, dir="/var/tmp"))
    try:
        folder.chmod(0o755)
        source = patterned(folder / "root.img", 1)
        images = folder / "images"
        p, root, web, other = env.n("pool"), env.n("root"), env.n("web"), env.n("other")
        remote.put("fleet.yaml", pool(p, images),
                   volume(root, p, "4MiB", format="qcow2", source=str(source)),
                   {**vm(web, disks=[{"volume": root}]),
                    "metadata": {"name": web, "hosts": [name]}},
                   {**vm(other), "metadata": {"name": other, "hosts": ["not-" + name]}})  # fmt: skip
        daemon = remote.start()
        connected = daemon.wait_for("libvirt.connected",
                                    lambda e: e.get("event") == "libvirt.connected")  # fmt: skip
        assert connected["host"] == name and connected["uri"].startswith("qemu+ssh://")
        wait_until(f"{web} running", lambda: remote.domain(web) is not None
                   and bool(remote.domain(web).isActive()))  # fmt: skip
        daemon.wait_quiet()
        assert remote.domain(other) is None
        assert (images / root).is_file()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
