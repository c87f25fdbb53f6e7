"""Pytest fixtures and helpers for tests that boot the tiny test guest.

Register with ``pytest_plugins = ["tests.guest.fixtures"]`` (done in
``tests/integration/conftest.py``). Provides:

* ``guest_image`` (session): the built :class:`~tests.guest.build.GuestImage`;
  cache directory from ``RECONCILER_GUEST_CACHE`` (default
  ``/var/cache/reconciler-tests/guest``).
* ``guest_log_dir`` (function): an empty directory for serial logs, removed
  afterwards. libvirtd (root) opens ``<serial type='file'>`` paths itself and
  hands QEMU the descriptor, but the directory is world-writable anyway so a
  setup where QEMU opens it (as libvirt-qemu) works too.
* :class:`SerialLog`: wait for ``RCGUEST:`` lines in a serial log file.
* :func:`guest_domain_xml`: a minimal domain for the guest (no NIC, no graphics).
* :func:`make_iso`: an ISO 9660 image with a volume label (cidata seeds).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest

from tests.guest.build import DEFAULT_CACHE_DIR, GuestImage, build_guest

__all__ = [
    "GuestImage",
    "SerialLog",
    "guest_domain_xml",
    "guest_image",
    "guest_log_dir",
    "make_iso",
]


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    cache = Path(os.environ.get("RECONCILER_GUEST_CACHE", "") or DEFAULT_CACHE_DIR)
    return build_guest(cache)


@pytest.fixture
def guest_log_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rcguest-"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class SerialLog:
    """A guest's serial console log file, read as it grows.

    Only complete lines count (a line still being written could be cut short).
    Carriage returns and NULs (serial line noise) are dropped.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def lines(self) -> list[str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        text = data.decode("utf-8", "replace").replace("\r", "").replace("\0", "")
        complete, _, _partial = text.rpartition("\n")
        return complete.split("\n") if complete else []

    def mark(self) -> int:
        """The number of lines so far: pass as ``since`` to wait for newer ones."""
        return len(self.lines())

    def wait_for(self, pattern: str, timeout: float, *, since: int = 0) -> str:
        """The first line (from line ``since`` on) where regex ``pattern`` matches.

        Polls the file; raises AssertionError with the last 20 lines on timeout.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            for line in lines[since:]:
                if regex.search(line):
                    return line
            if time.monotonic() >= deadline:
                tail = "\n".join(lines[-20:]) or "(empty)"
                raise AssertionError(
                    f"no line matching {pattern!r} in {self.path} after {timeout:g} s; "
                    f"last lines:\n{tail}"
                )
            time.sleep(0.2)


def guest_domain_xml(
    name: str,
    image: GuestImage,
    serial_log: Path,
    *,
    memory_kib: int = 512 * 1024,
    current_memory_kib: int = 256 * 1024,
    vcpus: int = 2,
    current_vcpus: int = 1,
    extra_cmdline: str = "",
    extra_devices: str = "",
    machine: str = "pc",
) -> str:
    """A ``type='qemu'`` (TCG) domain that boots ``image`` directly.

    No NIC, no graphics, no disks (add some with ``extra_devices``); a virtio
    balloon; serial console to ``serial_log``; any reboot or crash stops it.
    The cloud kernel has no AHCI: put CD-ROMs on IDE (machine ``pc``) or on
    virtio-scsi.
    """
    cmdline = f"{image.cmdline} {extra_cmdline}".strip()
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='KiB'>{memory_kib}</memory>
  <currentMemory unit='KiB'>{current_memory_kib}</currentMemory>
  <vcpu placement='static' current='{current_vcpus}'>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine={quoteattr(machine)}>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path={quoteattr(str(serial_log))}/>
      <target port='0'/>
    </serial>
    <memballoon model='virtio'/>
{extra_devices}  </devices>
</domain>
"""


def make_iso(path: Path, files: Mapping[str, bytes | str], label: str = "cidata") -> Path:
    """Write an ISO 9660 image (Joliet + Rock Ridge) holding ``files`` at its root.

    Uses ``genisoimage`` (Debian package genisoimage) or ``xorriso``
    (package xorriso); falls back to the PyPI package ``pycdlib`` when
    importable.
    """
    with tempfile.TemporaryDirectory(prefix="rciso-") as src_s:
        src = Path(src_s)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (src / name).write_bytes(data)
        common = ["-quiet", "-volid", label, "-joliet", "-rock", "-output", str(path), str(src)]
        if shutil.which("genisoimage"):
            subprocess.run(["genisoimage", *common], check=True, capture_output=True)
        elif shutil.which("xorriso"):
            argv = ["xorriso", "-as", "mkisofs", *common]
            subprocess.run(argv, check=True, capture_output=True)
        else:
            _make_iso_pycdlib(path, files, label)
    os.chmod(path, 0o644)
    return path


def _make_iso_pycdlib(path: Path, files: Mapping[str, bytes | str], label: str) -> None:
    import io

    try:
        import pycdlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:
        raise RuntimeError(
            "cannot make an ISO: install Debian package genisoimage (or xorriso, "
            "or the PyPI package pycdlib)"
        ) from e
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=label)
    for i, (name, content) in enumerate(files.items()):
        data = content.encode() if isinstance(content, str) else content
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i};1", rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()
