"""A qcow2 image whose data lives in an external file is never copied into a volume.

Its header names a host path (``data_file``); libvirt's volume copy
(``virStorageVolCreateXMLFrom``: qemu-img convert on the host, as root) reads that
file into the new volume, where a guest reads it. A URL image that verifies against
its sha256 can still carry such a header (the digest says who published it, not
what it names), so the fetched image is refused before libvirt is touched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import images
from reconciler.executor import image_problem

URL = "http://127.0.0.1:1/image.qcow2"
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")


def _qcow2(path: Path, *options: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "1M"],
                   check=True)  # fmt: skip
    return path


def test_an_image_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    image = _qcow2(tmp_path / "exfil.qcow2", "-o", f"data_file={secret},data_file_raw=on")
    assert images.external_data_file(str(image))
    problem = image_problem(str(image), URL, "qcow2", 1024**3)
    assert problem is not None and URL in problem and "external file" in problem


def test_a_self_contained_image_is_not(tmp_path: Path) -> None:
    image = _qcow2(tmp_path / "plain.qcow2")
    assert not images.external_data_file(str(image))
    assert image_problem(str(image), URL, "qcow2", 1024**3) is None
    raw = tmp_path / "raw"
    raw.write_bytes(b"\0" * 4096)
    assert not images.external_data_file(str(raw))
