"""How libvirt 9.0 and QEMU 7.2 round every size a manifest gives: one place.

A manifest gives sizes in bytes (``units.parse_size``: decimal units are
powers of 1000, so ``100MB`` is 100,000,000 bytes, not a whole number of KiB).
libvirt and QEMU keep them in coarser units, and report back the rounded
value. The planner compares the rounded desired value with what libvirt shows
(never the raw bytes), so an odd size settles instead of planning the same
change, or the same restart, forever. All sizes here are bytes; pure.

Each rule, with where it comes from (measured on this project's host: Debian
12, libvirt 9.0.0, QEMU 7.2; the scripts are quoted in docs/decisions.md,
"Rounding"):

* **Memory in the definition** (``<memory>``, ``<currentMemory>``:
  formatdomain "Memory Allocation"): this tool writes ``unit='KiB'``, the
  bytes divided by 1024 and rounded *down* (``xml._fields.KIB``); libvirt
  keeps that number as it is (measured: 97656, 100001, 1000, 2047 KiB are
  kept exactly in the inactive XML, before and after a start).
  ``definition_memory``.
* **Memory of a running domain** (``<memory>`` in the live XML, and
  ``virDomainGetInfo``'s maximum): libvirt aligns the total memory up to a
  whole MiB when it starts QEMU on x86 (``qemuDomainAlignMemorySizes`` with
  ``qemuDomainGetMemorySizeAlignment`` = 1 MiB, src/qemu/qemu_domain.c).
  Measured: 97656 KiB runs as 98304, 195312 as 195584, 1000 as 1024, 2047
  as 2048, 1048577 as 1049600. The inactive definition keeps the unaligned
  value. ``running_memory``. (No NUMA cells or memory devices: a manifest
  cannot declare them; libvirt aligns each of those separately.)
* **Balloon** (``<currentMemory>`` of a running domain, ``setMemoryFlags``):
  libvirt takes KiB (``virsh setmem``), so a balloon target is the bytes
  rounded down to KiB, as in the definition; QEMU's virtio-balloon moves
  whole 4 KiB pages (``virtio_balloon_to_target``: ``(ram_size - target) >>
  VIRTIO_BALLOON_PFN_SHIFT``, hw/virtio/virtio-balloon.c), so what a guest
  with a balloon driver reports may differ by up to 4 KiB. It is never
  compared (planner.LIVE_INCOMPARABLE); measured: without a guest driver the
  live ``<currentMemory>`` is the aligned ``<memory>``. ``balloon_target``.
* **Volume capacity, created** (``<capacity>``, formatstorage "Storage
  volume XML"), dir pools: ``qcow2`` is made by ``qemu-img create`` with the
  size in KiB rounded *up* (``info.size_arg = VIR_DIV_UP(capacity, 1024)``,
  ``storageBackendCreateQemuImg``, src/storage/storage_util.c); measured:
  100000000 -> 100000768, 1000 -> 1024, 1 -> 1024, 1500000000 ->
  1500000256. ``raw`` is a file of exactly that many bytes (measured: 1, 511,
  1000, 100000000 kept). ``created_capacity``.
* **Volume capacity, resized** (``virStorageVolResize``; ``blockResize`` of a
  running disk): ``qcow2`` goes through ``qemu-img resize`` rounded *up* to
  512 bytes ("Round capacity as qemu-img resize errors out on sizes which are
  not a multiple of 512", ``storageBackendResizeQemuImg``); measured:
  101000001 -> 101000192. ``raw`` is truncated to exactly that size
  (measured: 101000001 kept). ``resized_capacity``.

* **Volume allocation** (``<allocation>``): a dir pool's file takes whole
  filesystem blocks (a raw file is allocated in full: 100000000 bytes take
  100003840), and libvirt refuses any resize to less than the current
  allocation, growth included ("can't shrink capacity below existing
  allocation", ``storageVolResize``, src/storage/storage_driver.c; measured:
  raw 100000000 -> 100001001 and raw 513 -> 1000 refused, qcow2 1000 -> 2001
  refused: its file is 196616 bytes). ``resize_refused``.

So a qcow2 capacity that is not a whole KiB has two right answers, one per
path it reached libvirt by; ``volume_capacity`` accepts either (and asks for
the KiB one, which both paths then keep exactly).
"""

from __future__ import annotations

__all__ = [
    "KIB",
    "MIB",
    "balloon_target",
    "created_capacity",
    "definition_memory",
    "resize_refused",
    "resized_capacity",
    "rounded_note",
    "running_memory",
    "volume_capacity",
]

KIB = 1024
MIB = 1024 * 1024
SECTOR = 512
QCOW2 = "qcow2"


def _down(value: int, unit: int) -> int:
    return value // unit * unit


def _up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def definition_memory(size: int) -> int:
    """Bytes a domain definition keeps for ``size`` bytes of memory (``<memory>``,
    ``<currentMemory>`` written in KiB): rounded down to a whole KiB."""
    return _down(size, KIB)


def running_memory(size: int) -> int:
    """Bytes a running x86 QEMU domain has for a definition of ``size`` bytes of
    ``<memory>``: the definition's KiB, aligned up to a whole MiB at start."""
    return _up(definition_memory(size), MIB)


def balloon_target(size: int) -> int:
    """Bytes a balloon is set to for ``size`` (``setMemoryFlags`` takes KiB: down)."""
    return _down(size, KIB)


def created_capacity(size: int, fmt: str) -> int:
    """Bytes libvirt reports for a volume of ``fmt`` created with ``size`` bytes in a
    dir pool: qcow2 up to a whole KiB, raw (and any other format) exact."""
    return _up(size, KIB) if fmt == QCOW2 else size


def resized_capacity(size: int, fmt: str) -> int:
    """Bytes libvirt reports for a volume of ``fmt`` resized to ``size`` bytes: qcow2 up
    to a whole 512-byte sector, raw exact."""
    return _up(size, SECTOR) if fmt == QCOW2 else size


def volume_capacity(size: int, fmt: str, current: int | None = None) -> int:
    """The capacity to compare a volume's ``current`` capacity with, for a manifest's
    ``size`` bytes: ``current`` itself when libvirt makes it of ``size`` on either path
    (creation or resize: for qcow2, ``size`` rounded up to 512 or to 1024 bytes),
    otherwise the created capacity (a whole KiB for qcow2, which a resize keeps)."""
    wanted = created_capacity(size, fmt)
    if current is not None and current in (wanted, resized_capacity(size, fmt)):
        return current
    return wanted


LVM_EXTENT = 4 * MIB
"""The physical extent of a volume group libvirt builds (``vgcreate`` without ``-s``:
LVM's default, lvm.conf ``physical_extent_size``)."""


def logical_capacity(size: int) -> int:
    """Bytes a logical volume of ``size`` bytes has: libvirt asks ``lvcreate -L`` for the
    size in KiB rounded up (``virStorageBackendLogicalLVCreate``), and LVM rounds that up
    to whole extents ("Rounding up size to full physical extent"). Not measured here:
    this kernel has no device-mapper, so no LV can be made (docs/decisions.md)."""
    return _up(_up(size, KIB), LVM_EXTENT)


def resize_refused(capacity: int, allocation: int | None) -> bool:
    """Whether libvirt refuses resizing a volume that takes ``allocation`` bytes to
    ``capacity`` bytes (below the allocation, even when it grows the volume)."""
    return allocation is not None and capacity < allocation


def rounded_note(size: int, rounded: int) -> str:
    """The plan's note on a size libvirt does not keep exactly (``manifest: 100000000
    bytes, which libvirt keeps as 100000768``), or "" when it does."""
    if rounded == size:
        return ""
    return f"manifest: {size} bytes, which libvirt keeps as {rounded}"
