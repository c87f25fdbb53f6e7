"""``build: true`` never writes over data libvirt's own check does not recognise.

libvirt's ``VIR_STORAGE_POOL_BUILD_NO_OVERWRITE`` refuses a device only when blkid
finds a filesystem, a partition table or an LVM label on it: a qcow2 image written
straight on the device (as block storage of other virtualisation stacks keeps them)
or random data passed, and pvcreate or a partition table was written over it. The
device must now read as zeros at both ends, else the build is refused, the device
unchanged. A blank device is still built.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    describe,
    doc,
    ws_fixture,
)
from tests.integration.test_pool_types import loop as loop_fixture
from tests.integration.test_pool_types import needs_lvm, run

loop = loop_fixture  # the fixture, by its name


def _digest(device: str) -> str:
    with open(device, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@needs_lvm
def test_a_device_holding_a_qcow2_image_is_not_built_over(
    ws: Workspace, loop: Callable[[], str]
) -> None:
    image = ws.hostdir / "held.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    name, vg = ws.n("lvm"), ws.n("vg")
    for kind in ("logical", "disk"):
        device = loop()
        with open(device, "r+b") as f:
            f.write(image.read_bytes())
        assert run("blkid", "-p", device, check=False).returncode == 2  # nothing blkid knows
        before = _digest(device)
        spec = ({"type": "logical", "source": {"devices": [device], "name": vg}, "build": True}
                if kind == "logical" else
                {"type": "disk", "path": "/dev", "source": {"device": device, "format": "dos"},
                 "build": True})  # fmt: skip
        ws.write(f"{kind}.yaml", doc("StoragePool", f"{name}-{kind}", spec))
        result = ws.apply(allowed_roots=(ws.hostdir, Path(device)))
        failed = [r for r in result.results if r.outcome == "failed"]
        assert [r.action.name for r in failed] == [f"{name}-{kind}"], describe(result)
        assert "not blank" in failed[0].error and device in failed[0].error
        assert _digest(device) == before, kind
    assert run("vgs", vg, check=False).returncode != 0


@needs_lvm
def test_a_blank_device_is_still_built(ws: Workspace, loop: Callable[[], str]) -> None:
    device = loop()
    name, vg = ws.n("lvm"), ws.n("vg")
    spec = {"type": "logical", "source": {"devices": [device], "name": vg}, "build": True}
    ws.write("pool.yaml", doc("StoragePool", name, spec))
    result = ws.apply(allowed_roots=(ws.hostdir, Path(device)))
    assert not result.failed, describe(result)
    assert run("vgs", "--noheadings", "-o", "pv_name", vg).stdout.split() == [device]
