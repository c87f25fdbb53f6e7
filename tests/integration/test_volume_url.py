"""Issue 13: a Volume from an http(s) URL, against the real libvirtd.

The image is served by a Python HTTP server on 127.0.0.1 (tests/unit/http_support.py;
nothing else on the network), which counts the requests it gets. The volume is
filled through libvirt's upload stream (as over qemu+ssh://), read back and
compared; the second apply downloads nothing; a wrong digest, a server that
closes early and an image bigger than the volume leave nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import Refused
from reconciler.plan import Op
from tests.integration import test_gitsource
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    describe,
    pool,
    volume,
    ws_fixture,
)
from tests.integration.test_fleet_remote import controller, remote_uri
from tests.integration.test_gitsource import Sshd
from tests.unit.http_support import Served, serving

sshd = test_gitsource.sshd  # the fixture: a throwaway sshd on 127.0.0.1


def _image(ws: Workspace, name: str, size: str = "8M") -> bytes:
    """A qcow2 image of ``size`` with a recognisable pattern in its first MiB."""
    raw = ws.root / f"{name}.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), size], check=True)
    with open(raw, "r+b") as f:
        f.write(b"reconciler volume-url test " * 40_000)
    out = ws.root / name
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(out)],
                   check=True)  # fmt: skip
    return out.read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _volume_path(ws: Workspace, pool_name: str, name: str) -> str | None:
    import libvirt

    p = ws.conn.storagePoolLookupByName(pool_name)
    p.refresh(0)
    try:
        return str(p.storageVolLookupByName(name).path())
    except libvirt.libvirtError:
        return None


def _same_content(image: Path, volume_path: str) -> None:
    """What a guest reads from the volume is the image (the rest of it zeros)."""
    done = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2",
                           str(image), volume_path], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def _cache(ws: Workspace) -> list[str]:
    folder = ws.state_dir / "images"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_volume_from_a_url_is_fetched_once_streamed_in_and_settles(ws: Workspace) -> None:
    data = _image(ws, "cloud.qcow2")
    served = Served(files={"/cloud.qcow2": data, "/mirror/cloud.qcow2": data})
    p = ws.n("pool")
    with serving(served):
        source = {"url": served.url("/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, ws.subdir("images")),
                 volume(ws.n("base"), p, "16MiB", format="qcow2", source=source))
        # the CLI, as an operator runs it: JSON logs carry the start and end events only
        done = ws.cli("apply", "--yes", str(ws.directory))
        assert done.returncode == 0, done.stdout + done.stderr
        events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        fetched = [e for e in events if e.get("event") == "image.fetched"]
        assert len(fetched) == 1 and fetched[0]["size"] == len(data)
        assert fetched[0]["duration"] >= 0 and fetched[0]["name"] == ws.n("base")
        assert any(e.get("event") == "image.fetch" for e in events)
        assert "MiB/s" not in done.stderr  # no progress line off a terminal
        assert served.downloads("/cloud.qcow2") == 1

        path = _volume_path(ws, p, ws.n("base"))
        assert path is not None
        _same_content(ws.root / "cloud.qcow2", path)
        xml = ws.conn.storagePoolLookupByName(p).storageVolLookupByName(ws.n("base")).XMLDesc(0)
        assert "<format type='qcow2'/>" in xml and "<capacity unit='bytes'>16777216<" in xml
        assert _cache(ws) == [_sha(data)]
        assert "contentPending" not in ws.inventory()[f"Volume/{ws.n('base')}"]
        assert_settled(ws)

        # a second volume of the same image, from another URL: no download at all
        other = {"url": served.url("/mirror/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("more.yaml", volume(ws.n("copy"), p, "16MiB", format="qcow2", source=other))
        result = ws.converge()
        assert not result.unsettled, describe(result)
        assert served.downloads("/cloud.qcow2") == 1
        assert served.bodies("/mirror/cloud.qcow2") == []  # not even a probe: it is cached
        copy = _volume_path(ws, p, ws.n("copy"))
        assert copy is not None
        _same_content(ws.root / "cloud.qcow2", copy)
        assert_settled(ws)
        assert served.downloads("/cloud.qcow2") == 1


def test_a_digest_mismatch_is_refused_and_leaves_nothing(ws: Workspace) -> None:
    data = _image(ws, "cloud.qcow2")
    wrong = "0" * 64
    p = ws.n("pool")
    with serving(Served(files={"/cloud.qcow2": data})) as served:
        url = served.url("/cloud.qcow2")
        ws.write("storage.yaml", pool(p, ws.subdir("images")),
                 volume(ws.n("base"), p, "16MiB", source={"url": url, "sha256": wrong}))
        result = ws.apply()
    [failed] = [r for r in result.results if r.outcome == "failed"]
    assert url in failed.error and wrong in failed.error and _sha(data) in failed.error
    assert _volume_path(ws, p, ws.n("base")) is None  # no volume
    assert _cache(ws) == []  # no cache file, no partial one
    assert f"Volume/{ws.n('base')}" not in ws.inventory()
    assert action(ws.plan(), "Volume", ws.n("base")).op is Op.CREATE  # never in sync


def test_an_interrupted_download_is_not_used_and_resumes(ws: Workspace) -> None:
    data = _image(ws, "cloud.qcow2")
    half = len(data) // 2
    p = ws.n("pool")
    served = Served(files={"/cloud.qcow2": data}, cut_after={"/cloud.qcow2": half})
    with serving(served):
        source = {"url": served.url("/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, ws.subdir("images")),
                 volume(ws.n("base"), p, "16MiB", source=source))
        result = ws.apply()
        [failed] = [r for r in result.results if r.outcome == "failed"]
        assert "the next apply resumes it" in failed.error
        assert _volume_path(ws, p, ws.n("base")) is None
        assert _cache(ws) == [f"{_sha(data)}.part"]  # kept to resume, never used
        assert f"Volume/{ws.n('base')}" not in ws.inventory()

        served.cut_after.clear()
        ws.converge()
        assert served.bodies("/cloud.qcow2")[-1] == f"bytes={half}-"  # resumed
    path = _volume_path(ws, p, ws.n("base"))
    assert path is not None
    _same_content(ws.root / "cloud.qcow2", path)
    assert _cache(ws) == [_sha(data)]
    assert_settled(ws)


def test_an_image_bigger_than_capacity_is_a_plan_error(ws: Workspace) -> None:
    data = _image(ws, "big.qcow2", "64M")  # virtual 64 MiB, a file of about 1 MiB
    p = ws.n("pool")
    with serving(Served(files={"/big.qcow2": data})) as served:
        source = {"url": served.url("/big.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, ws.subdir("images")),
                 volume(ws.n("big"), p, "16MiB", source=source),
                 volume(ws.n("raw"), p, "64MiB", format="raw", source=source))
        plan = ws.plan()
        assert served.downloads("/big.qcow2") == 0  # a probe of its first bytes only
    big = action(plan, "Volume", ws.n("big"))
    assert big.op is Op.ERROR and "more than capacity 16MiB" in big.reason
    assert "64MiB" in big.reason  # the qcow2 header's virtual size, not the file's
    raw = action(plan, "Volume", ws.n("raw"))
    assert raw.op is Op.ERROR and "is a qcow2 image, but the volume's format is raw" in raw.reason
    assert _cache(ws) == []


def test_a_volume_whose_upload_failed_is_not_in_sync(ws: Workspace,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The volume was made, the stream into it failed: the next plan copies again
    (content pending), never "No changes."; the copy then comes from the cache."""
    data = _image(ws, "cloud.qcow2")
    p = ws.n("pool")
    with serving(Served(files={"/cloud.qcow2": data})) as served:
        source = {"url": served.url("/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, ws.subdir("images")),
                 volume(ws.n("base"), p, "16MiB", source=source))

        def broken(*args: object) -> None:
            raise Refused("volume upload stream refused data")

        with monkeypatch.context() as patched:
            patched.setattr(ws.hypervisor, "import_file", broken)
            result = ws.apply()
        [failed] = [r for r in result.results if r.outcome == "failed"]
        assert "upload stream refused" in failed.error
        assert _volume_path(ws, p, ws.n("base")) is not None  # made, but empty
        base = action(ws.plan(), "Volume", ws.n("base"))
        assert base.op is Op.UPDATE_LIVE, base
        assert [s.verb for s in base.steps] == ["fetch-image", "import-volume"]
        assert [c.path for c in base.changes] == ["content"]

        ws.converge()
        assert served.downloads("/cloud.qcow2") == 1  # the retry used the cache
    path = _volume_path(ws, p, ws.n("base"))
    assert path is not None
    _same_content(ws.root / "cloud.qcow2", path)
    assert_settled(ws)


@pytest.mark.skipif(not Path("/usr/bin/virt-ssh-helper").exists(),
                    reason="libvirt's virt-ssh-helper is not installed")  # fmt: skip
def test_a_volume_from_a_url_over_qemu_ssh(ws: Workspace, sshd: Sshd) -> None:
    """The controller downloads into its own state directory and streams the image to
    the host through libvirt over ssh: the pool's folder is hidden from it (an empty
    tmpfs) and any qemu-img it ran would be recorded (test_fleet_remote.controller)."""
    uri = remote_uri(ws, sshd)
    images = ws.subdir("images")
    data = _image(ws, "cloud.qcow2")
    p = ws.n("pool")
    with serving(Served(files={"/cloud.qcow2": data})) as served:
        source = {"url": served.url("/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, images),
                 volume(ws.n("base"), p, "16MiB", source=source))
        applied = controller(ws, uri, images, "apply", str(ws.directory), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "streamed through 127.0.0.1" in applied.stdout, applied.stdout
        again = controller(ws, uri, images, "plan", str(ws.directory))
        assert again.returncode == 0 and "No changes." in again.stdout, again.stdout
        assert served.downloads("/cloud.qcow2") == 1
    _same_content(ws.root / "cloud.qcow2", str(images / ws.n("base")))
    assert not (ws.root / "qemu-img.calls").exists()  # the controller ran no qemu-img


def test_a_file_in_the_way_is_not_claimed_after_the_fetch(ws: Workspace) -> None:
    """A pool made by this apply already holds a file of the volume's name: libvirt
    refuses the create after the image was fetched; the file is not claimed (so never
    pruned) and is left as it was."""
    data = _image(ws, "cloud.qcow2")
    p = ws.n("pool")
    images = ws.subdir("images")
    in_the_way = images / ws.n("base")
    in_the_way.write_bytes(b"someone else's data")
    with serving(Served(files={"/cloud.qcow2": data})) as served:
        source = {"url": served.url("/cloud.qcow2"), "sha256": _sha(data)}
        ws.write("storage.yaml", pool(p, images), volume(ws.n("base"), p, "16MiB", source=source))
        result = ws.apply()
    [failed] = [r for r in result.results if r.outcome == "failed"]
    assert failed.action.name == ws.n("base")
    assert "not claimed: the volume was not created by reconciler" in failed.notes
    assert f"Volume/{ws.n('base')}" not in ws.inventory()
    assert in_the_way.read_bytes() == b"someone else's data"
