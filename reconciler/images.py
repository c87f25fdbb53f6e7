"""What a Volume ``source`` image file is, read from its first bytes: no ``qemu-img``.

For a remote host (``qemu+ssh://...``) the source file is on the controller
and is streamed to the host through libvirt (hypervisor.Hypervisor.import_file);
nothing runs ``qemu-img`` on the controller for it. Its format and virtual size
come from here: a qcow2 header (magic ``QFI\\xfb``; virtual size at byte 24,
backing file offset at byte 8, big-endian), anything else is raw data whose
virtual size is the file's size. A qcow2 image on a backing file is named as
such: the remote host cannot follow a path on the controller.

Reads only the file it is given (a controller-local file the planner's path
check allowed); no libvirt.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
_HEADER = 32  # magic, version, backing file offset (8), size (4), cluster bits, size (8)
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: str  # "qcow2" or "raw"
    virtual_size: int  # bytes a guest sees
    file_size: int  # bytes of the file itself (what is streamed)
    has_backing: bool = False  # a qcow2 image that reads through a backing file


def parse_header(head: bytes, file_size: int) -> ImageHeader:
    """The image that the first bytes ``head`` of a ``file_size``-byte file describe."""
    if len(head) >= _HEADER and head[:4] == QCOW2_MAGIC:
        backing_offset = struct.unpack(">Q", head[8:16])[0]
        size = struct.unpack(">Q", head[24:32])[0]
        return ImageHeader("qcow2", size, file_size, has_backing=backing_offset != 0)
    return ImageHeader("raw", file_size, file_size)


# Magic bytes at offset 0 of the image formats QEMU knows that a raw disk must not be
# (qemu block drivers' probe functions): opened as raw, a guest sees the metadata.
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (QCOW2_MAGIC, "qcow2"),
    (b"QFI\x00", "qed"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"LUKS\xba\xbe", "luks"),
)
_VDI_MAGIC = (64, b"\x7f\x10\xda\xbe")  # offset, bytes (little-endian 0xbeda107f)
SNIFF = 72  # bytes sniff_format needs


def sniff_format(head: bytes) -> str:
    """The image format the first ``SNIFF`` bytes of a file announce (``qcow2``,
    ``qed``, ``vmdk``, ``vhdx``, ``vpc``, ``luks``, ``vdi``), or ``raw`` when they
    announce none (QEMU's own format probes, by magic only)."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    offset, magic = _VDI_MAGIC
    if head[offset:offset + len(magic)] == magic:
        return "vdi"
    return "raw"


def read_format(path: str) -> str | None:
    """``sniff_format`` of the file at ``path``; None when it is not a regular file or
    cannot be read (a block device is read as what it is named; preflight reports a
    missing file)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return sniff_format(f.read(SNIFF))
    except OSError:
        return None


def read_header(path: str) -> ImageHeader:
    """The header of image file ``path``; ``OSError`` when it cannot be read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return parse_header(f.read(_HEADER), size)


def virtual_size(path: str) -> int | None:
    """What a guest would see of the image at ``path``, or None when it cannot be read."""
    try:
        return read_header(path).virtual_size
    except OSError:
        return None


def file_digest(path: str) -> str:
    """SHA-256 of the file's bytes (what an upload must reproduce)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


MAX_CHAIN = 16  # backing files followed at most (qemu's own limit is deeper)


def _qcow2_references(path: str) -> tuple[str | None, bool]:
    """(backing file as written, or None; whether data lives in an external file) of the
    qcow2 image at ``path`` (qcow2 spec: backing_file_offset at byte 8, its size at 16;
    incompatible_features at 72 in version 3, bit 2 = external data file)."""
    with open(path, "rb") as f:
        head = f.read(104)
        offset, size = struct.unpack(">Q", head[8:16])[0], struct.unpack(">I", head[16:20])[0]
        version = struct.unpack(">I", head[4:8])[0]
        external = version >= 3 and len(head) >= 80 and bool(
            struct.unpack(">Q", head[72:80])[0] & 4)  # fmt: skip
        if not offset or not size or size > 4096:
            return None, external
        f.seek(offset)
        return f.read(size).decode("utf-8", "replace"), external


def external_data_file(path: str) -> bool:
    """Whether the qcow2 image at ``path`` keeps its data in an external file (qcow2
    spec, incompatible feature bit 2): whoever reads it (qemu-img convert in libvirt's
    volume copy, QEMU) reads the host file its header names. False for other formats;
    ``OSError`` when it cannot be read."""
    if read_header(path).format != "qcow2":
        return False
    return _qcow2_references(path)[1]


def chain_problem(path: str, allowed: Callable[[str], bool]) -> str | None:
    """Why the image at ``path`` may not be used by a root daemon, or None: a qcow2 image
    whose backing file (followed down the chain, relative to the image's folder) lies
    outside the allowed roots, or a backing file that is not a plain path (``json:``,
    a protocol), or data kept in an external file. Reading the image through such a
    chain would read (or let libvirt relabel) files nobody named in a manifest.
    Images in other formats are read as raw by the tool (``qemu-img -f raw``)."""
    current = path
    for _ in range(MAX_CHAIN):
        try:
            header = read_header(current)
            if header.format != "qcow2":
                return None
            backing, external = _qcow2_references(current)
        except OSError:
            return None  # preflight reports a missing or unreadable file
        if external:
            return f"{current} keeps its data in an external file; flatten it first"
        if backing is None:
            return None
        if ":" in backing.split("/", 1)[0]:
            return f"{current} has a backing file that is not a path ({backing[:80]!r})"
        resolved = os.path.normpath(os.path.join(os.path.dirname(current), backing))
        if not allowed(resolved):
            return (f"{current} reads through backing file {resolved}, outside the allowed "
                    "roots; flatten it (qemu-img convert) or move its backing file")
        current = resolved
    return f"{path} has a backing chain deeper than {MAX_CHAIN}"
