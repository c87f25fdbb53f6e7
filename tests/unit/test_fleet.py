"""Fleet: what a controller driving a remote host reads of its own disk, and which
host's manifests it plans (issue 14). The libvirt side is in
tests/integration/test_fleet_remote.py."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import executor, images
from reconciler.cli import offline_host
from reconciler.errors import ReconcilerError
from reconciler.hostpaths import HostPath, PathPolicy
from reconciler.plan import ImportVolume
from reconciler.xml import volume as volume_xml


def _qcow2_header(size: int, backing_offset: int = 0) -> bytes:
    return images.QCOW2_MAGIC + struct.pack(">IQIIQ", 3, backing_offset, 0, 16, size)


def test_a_qcow2_header_gives_its_virtual_size() -> None:
    header = images.parse_header(_qcow2_header(8 * 1024**2), 196_616)
    assert header == images.ImageHeader("qcow2", 8 * 1024**2, 196_616)


def test_a_qcow2_on_a_backing_file_says_so() -> None:
    assert images.parse_header(_qcow2_header(1024, backing_offset=512), 4096).has_backing


def test_anything_else_is_raw_of_its_file_size(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x00" * 3000)
    assert images.read_header(str(path)) == images.ImageHeader("raw", 3000, 3000)
    assert images.virtual_size(str(tmp_path / "missing")) is None


def test_copy_xml_keeps_what_the_volume_declares_and_drops_what_libvirt_assigns() -> None:
    current = (
        "<volume type='file'><name>web-root</name><key>/p/web-root</key>"
        "<capacity unit='bytes'>67108864</capacity><allocation unit='bytes'>0</allocation>"
        "<target><path>/p/web-root</path><format type='qcow2'/>"
        "<permissions><mode>0600</mode></permissions></target>"
        "<backingStore><path>/p/base</path><format type='raw'/></backingStore></volume>"
    )
    xml = volume_xml.copy_xml(current)
    assert "key" not in xml and "allocation" not in xml and "permissions" not in xml
    assert volume_xml.observe(xml) == volume_xml.observe(current)
    assert "<name>web-root</name>" in xml


def test_remote_host_paths_are_checked_as_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc")  # a symlink on the controller, not on the host
    policy = PathPolicy((root,), (), remote=True)
    disk = HostPath("disks[vda].file", str(root / "link" / "disk.img"))
    assert policy.refusal(disk) is None  # the host's /etc is not this machine's
    assert policy.refusal(HostPath("path", str(root / ".." / "x"))) is not None
    # a source is read here: resolved here
    source = HostPath("source", str(root / "link" / "passwd"), here=True)
    refusal = policy.refusal(source)
    assert refusal is not None and "resolves to /etc/passwd" in refusal
    # on a local host every path is resolved
    assert PathPolicy((root,), ()).refusal(disk) is not None


def test_offline_host_is_the_uri_host_or_this_machine() -> None:
    assert offline_host("qemu+ssh://root@kvm-2:2222/system?keyfile=/k") == "kvm-2"
    assert offline_host("qemu:///system") == socket.gethostname()


class _RemoteHv:
    remote = True
    uri = "qemu+ssh://kvm-2/system"

    def __init__(self) -> None:
        self.imported: list[tuple[str, str, str, str]] = []

    def import_file(self, pool: str, name: str, source: str, source_format: str) -> None:
        self.imported.append((pool, name, source, source_format))

    def volume_path(self, pool: str, name: str) -> str:  # pragma: no cover - must not run
        raise AssertionError("a remote volume's path is not opened here")


def test_a_remote_import_streams_through_libvirt_and_runs_no_qemu_img(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*_: Any, **__: Any) -> Any:
        raise AssertionError("no program runs for a remote import")

    monkeypatch.setattr(executor.subprocess, "run", no_subprocess)
    source = tmp_path / "base.qcow2"
    source.write_bytes(_qcow2_header(1024**2) + bytes(4096))
    hv = _RemoteHv()
    note = executor._import_volume(hv, "web-root",  # type: ignore[arg-type]
                                   ImportVolume("images", str(source), None))
    assert hv.imported == [("images", "web-root", str(source), "qcow2")]
    assert "streamed to kvm-2" in note


def test_a_remote_import_of_a_qcow2_on_a_backing_file_is_one_line(tmp_path: Path) -> None:
    source = tmp_path / "overlay.qcow2"
    source.write_bytes(_qcow2_header(1024**2, backing_offset=512) + bytes(1024))
    with pytest.raises(ReconcilerError) as caught:
        executor._import_volume(_RemoteHv(), "web-root",  # type: ignore[arg-type]
                                ImportVolume("images", str(source), None))
    message = str(caught.value)
    assert "\n" not in message and "backing file" in message and "flatten it" in message


class _Conn:
    def getHostname(self) -> str:
        return "kvm-2"


def test_the_host_name_is_libvirts_for_a_remote_uri_and_this_machines_for_a_local_one() -> None:
    from reconciler.hypervisor import Hypervisor

    remote = Hypervisor(_Conn(), "qemu+ssh://root@kvm-2/system")
    assert remote.remote and remote.host_name() == "kvm-2"
    local = Hypervisor(_Conn(), "qemu:///system")
    assert not local.remote and local.host_name() == socket.gethostname()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("instance", ["reconciler@kvm-2.service", "reconciler@.service"])
def test_systemd_analyze_verifies_the_template_unit(tmp_path: Path, instance: str) -> None:
    """As scripts/install-daemon.sh installs it: ExecStart at an existing reconciler."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "systemd" / "reconciler@.service").read_text()
    binary = Path(sys.executable).parent / "reconciler"
    assert "ExecStart=/usr/local/bin/reconciler run --config /etc/reconciler/hosts/%i.yaml" \
        " --state-dir /var/lib/reconciler/%i" in text
    (tmp_path / instance).write_text(
        text.replace("ExecStart=/usr/local/bin/reconciler ", f"ExecStart={binary} ")
    )
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / instance)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stderr
