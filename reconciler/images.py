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
import struct
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
