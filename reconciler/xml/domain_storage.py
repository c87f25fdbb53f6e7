"""A VM's storage and host devices beyond image files: block disks and the disk
``<driver>``/``<boot>`` options, shared folders (``<filesystem>``) and host devices
(``<hostdev>``). Declarations only (``Field``/``Device``), used by ``domain.py``.

formatdomain sections: "Hard drives, floppy disks, CDROMs" (``<disk type='block'>``,
``<driver discard detect_zeroes io iothread>``, ``<shareable/>``, ``<boot order>``),
"Filesystems" (``<filesystem type='mount'>``: virtiofs and 9p, libvirt's driver
``path``) and "Host device assignment" (``<hostdev mode='subsystem'>``: PCI by
address, USB by vendor/product or bus/device).

Each set is managed only when the manifest names it (the compatibility rule):

* block disks are part of the exact disk set only in a manifest that declares at
  least one (``device:``); a manifest without one keeps every block disk the domain
  has, as before. (So removing the last declared block disk from a manifest leaves
  it in the domain, kept: detach it by hand, docs/decisions.md.)
* ``filesystems`` and ``hostdevs``: absent, the domain's are kept and not compared;
  named (``[]`` too), they are the whole set.

Measured on libvirt 9.0: a PCI hostdev at an address the host does not have is
defined (start fails); a read-only virtiofs share is refused ("virtiofs does not yet
support read-only mode", so the model refuses it first); virtiofs needs shared
memory at define time ("'virtiofs' requires shared memory"): the model asks for
``memoryBacking: {shared: true}`` (xml/domain_tuning.py writes it) beside a virtiofs
share.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import Filesystem, Hostdev, hostdev_key
from reconciler.xml._fields import (
    INT,
    KEPT,
    YES_NO,
    Attr,
    ChangeClass,
    Codec,
    Device,
    Element,
    Field,
    Flag,
    ensure,
    find,
)

__all__ = [
    "BLOCK_DISK_TYPES",
    "DISK_FIELDS",
    "DISK_FORMAT",
    "DISK_ORDER",
    "FILESYSTEMS",
    "HOSTDEVS",
    "HOTPLUG_FS_DRIVERS",
    "node_device_keys",
]

BLOCK_DISK_TYPES = frozenset({"block"})
"""The ``<disk type>`` a manifest manages when it declares a block disk (``device:``)."""

_QEMU = {"name": "qemu"}


def _disk(attr: str) -> Any:
    return lambda v: getattr(v.disk, attr)


def _kept(attr: str) -> Any:
    """A disk option: ``KEPT`` when the manifest leaves it out (the domain's is kept)."""

    def get(v: Any) -> object:
        value = getattr(v.disk, attr)
        return KEPT if value is None else value

    return get


DISK_FIELDS: tuple[Field[Any], ...] = (
    Field("device", _disk("device"), Attr("source", "dev"), variant="block"),
    Field("discard", _kept("discard"), Attr("driver", "discard", fixed=_QEMU)),
    Field("detectZeroes", _kept("detect_zeroes"), Attr("driver", "detect_zeroes", fixed=_QEMU)),
    Field("io", _kept("io"), Attr("driver", "io", fixed=_QEMU)),
    Field("iothread", _kept("iothread"), Attr("driver", "iothread", INT, fixed=_QEMU)),
    Field("shareable", _kept("shareable"), Flag("shareable")),
    Field("bootIndex", _kept("boot_index"), Attr("boot", "order", INT)),
)
"""The fields of a disk (``domain.DISKS``) this module adds; each takes a restart
(libvirt changes none of them on a running disk). All but ``device`` are ``KEPT``
when the manifest leaves them out (``_fields.KEPT``): the disk keeps the domain's
value, so existing manifests plan as before against domains that have them."""

DISK_ORDER = ("driver", "source", "target", "readonly", "shareable", "serial", "boot")


@dataclass(frozen=True, slots=True)
class _Defaulted:
    """An attribute that means ``default`` when the element leaves it out."""

    inner: Attr
    default: object

    def write(self, root: Element, value: Any) -> None:
        self.inner.write(root, value)

    def clear(self, root: Element) -> None:
        self.inner.clear(root)

    def read(self, root: Element) -> object:
        value = self.inner.read(root)
        return self.default if value is None else value

    def canon(self, value: Any) -> object:
        return self.inner.canon(value)


@dataclass(frozen=True, slots=True)
class _DiskFormat:
    """A disk's image format (``<driver type>``). A block disk without one is raw to
    libvirt (it probes no format, and a started domain shows ``type='raw'``), so it
    reads as raw."""

    inner: Attr

    def write(self, root: Element, value: Any) -> None:
        self.inner.write(root, value)

    def clear(self, root: Element) -> None:
        self.inner.clear(root)

    def read(self, root: Element) -> object:
        value = self.inner.read(root)
        return "raw" if value is None and root.get("type") == "block" else value

    def canon(self, value: Any) -> object:
        return self.inner.canon(value)


DISK_FORMAT = _DiskFormat(Attr("driver", "type", fixed=_QEMU))


# libvirt's driver 'path' is QEMU's 9p; a <filesystem> without <driver> is 'path' too
_FS_DRIVER = Codec(dump=lambda v: "path" if v == "9p" else str(v),
                   load=lambda t: "9p" if t.strip() == "path" else t.strip())  # fmt: skip

FILESYSTEMS: Device[Filesystem] = Device(
    section="filesystems",
    parent="devices",
    tag="filesystem",
    fixed={"type": "mount"},
    key=Attr("target", "dir"),
    key_of=lambda fs: fs.target,
    change=ChangeClass.LIVE,  # on HOTPLUG_FS_DRIVERS only

    fields=(
        Field("driver", lambda fs: fs.driver, _Defaulted(Attr("driver", "type", _FS_DRIVER), "9p"),
              default="virtiofs"),
        Field("source", lambda fs: fs.source, Attr("source", "dir")),
        Field("readonly", lambda fs: fs.readonly, Flag("readonly"), default=False),
        Field("accessMode", lambda fs: fs.access_mode,
              _Defaulted(Attr("", "accessmode"), "passthrough"), default="passthrough"),
    ),
    order=("driver", "source", "target", "readonly"),
)
"""Shared folders, keyed by mount tag. A virtiofs share is hot-plugged (measured on
libvirt 9.0; its unplug completes when the guest lets go); a 9p one takes a restart
("only virtiofs filesystems can be hotplugged"), as does a change of a share's field."""
HOTPLUG_FS_DRIVERS = frozenset({"virtiofs"})


def _hex(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


@dataclass(frozen=True, slots=True)
class _PciAddress:
    """A PCI hostdev's host address (``<source><address domain bus slot function>``),
    as ``0000:03:00.0``."""

    def write(self, root: Element, value: Any) -> None:
        head, function = str(value).split(".")
        domain, bus, slot = head.split(":")
        ET.SubElement(ensure(root, "source"), "address", {
            "domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}",
            "function": f"0x{function}"})  # fmt: skip

    def clear(self, root: Element) -> None:
        source = root.find("source")
        if source is not None:
            for element in source.findall("address"):
                source.remove(element)

    def read(self, root: Element) -> object:
        element = find(root, "source/address")
        if element is None:
            return None
        try:
            parts = [_hex(element.get(k, "0")) for k in ("domain", "bus", "slot", "function")]
        except ValueError:
            return None
        return f"{parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}"

    def canon(self, value: Any) -> object:
        return str(value).lower()


_HEX_ID = Codec(dump=lambda v: str(v).lower(), load=lambda t: f"0x{_hex(t.strip()):04x}")


@dataclass(frozen=True, slots=True)
class _HostdevKey:
    """A hostdev's identity (``model.hostdev_key``); written by its fields."""

    def write(self, root: Element, value: Any) -> None:
        pass

    def clear(self, root: Element) -> None:
        pass

    def read(self, root: Element) -> object:
        kind = root.get("type")
        if kind == "pci":
            address = _PciAddress().read(root)
            return None if address is None else f"pci {address}"
        if kind != "usb":
            return None
        vendor, product = find(root, "source/vendor"), find(root, "source/product")
        try:
            if vendor is not None and product is not None:
                return (f"usb {_hex(vendor.get('id', '')):04x}:"
                        f"{_hex(product.get('id', '')):04x}")  # fmt: skip
            address = find(root, "source/address")
            if address is not None:
                return f"usb {int(address.get('bus', ''))}.{int(address.get('device', ''))}"
        except ValueError:
            return None
        return None

    def canon(self, value: Any) -> object:
        return value


def _managed(dev: Hostdev) -> bool | None:
    return dev.managed if dev.type == "pci" else None


HOSTDEVS: Device[Hostdev] = Device(
    section="hostdevs",
    parent="devices",
    tag="hostdev",
    fixed={"mode": "subsystem"},
    key=_HostdevKey(),
    key_of=hostdev_key,
    variant_of=lambda dev: dev.type,
    variants=frozenset({"pci", "usb"}),
    change=ChangeClass.LIVE,  # hot-plugged (libvirt refuses where it cannot)
    fields=(
        Field("address", lambda dev: dev.address, _PciAddress(), variant="pci"),
        Field("managed", _managed, _Defaulted(Attr("", "managed", YES_NO), False),
              variant="pci", default=True),
        Field("vendor", lambda dev: dev.vendor, Attr("source/vendor", "id", _HEX_ID),
              variant="usb"),
        Field("product", lambda dev: dev.product, Attr("source/product", "id", _HEX_ID),
              variant="usb"),
        Field("bus", lambda dev: dev.bus, Attr("source/address", "bus", INT), variant="usb"),
        Field("device", lambda dev: dev.device, Attr("source/address", "device", INT),
              variant="usb"),
    ),
    order=("source", "boot", "rom", "address"),
)
"""Host PCI/USB devices, keyed by what names them on the host (``pci 0000:03:00.0``,
``usb 046d:c52b``, ``usb 1.4``); SCSI and mdev hostdevs are kept. Hot-plugged."""


def node_device_keys(xml: str) -> tuple[str, ...]:
    """Every ``hostdevs`` key a host's node device answers to, from its XML
    (``virNodeDeviceGetXMLDesc``; libvirt's formatnode.html): ``pci 0000:03:00.0``; a
    USB device both ``usb 046d:c52b`` and ``usb 1.4``; none for other devices."""
    from reconciler.xml._fields import parse

    root = parse(xml)
    try:
        pci = root.find("capability[@type='pci']")
        if pci is not None:
            parts = [int(pci.findtext(k) or "0") for k in ("domain", "bus", "slot", "function")]
            return (f"pci {parts[0]:04x}:{parts[1]:02x}:{parts[2]:02x}.{parts[3]:x}",)
        usb = root.find("capability[@type='usb_device']")
        if usb is not None:
            vendor, product = usb.find("vendor"), usb.find("product")
            keys = []
            if vendor is not None and product is not None:
                keys.append(f"usb {_hex(vendor.get('id', '')):04x}:"
                            f"{_hex(product.get('id', '')):04x}")  # fmt: skip
            keys.append(f"usb {int(usb.findtext('bus') or '')}.{int(usb.findtext('device') or '')}")
            return tuple(keys)
    except ValueError:
        return ()
    return ()
