"""Domain XML (``<domain>``): render, project, observe, and the ownership record.

The planner renders this for ``defineXML`` (passing the existing ``uuid`` on a
redefine) and compares ``project(spec, ...)`` with ``observe(xml)`` of the
inactive definition (``XMLDesc(VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE)``:
without ``SECURE`` libvirt leaves the display password out). Everything a VM
manifest declares is one ``Field`` below (scalars) or a ``Device`` field
(disks keyed by image, CD-ROMs by target, NICs by MAC), so render, project and
observe are derived from the same declarations.

What libvirt adds and ``observe`` ignores: ``<uuid>``, ``<emulator>``,
addresses, aliases, controllers, ``<seclabel>``, ``<pm>``, audio and video
devices, the implicit PS/2 mouse and keyboard, ``check``/``migratable`` on
``<cpu>``, the console it mirrors from the serial port, and the qemu64 CPU it
adds to a ``type='qemu'`` domain that names none. It rewrites the machine type
(``pc`` -> ``pc-i440fx-7.2``): ``project`` takes the aliases from the host's
capabilities (``machine_aliases_from_capabilities``) so both sides say the
canonical name. UEFI is libvirt's firmware autoselection (``<os
firmware='efi'>``), without secure boot unless ``firmware.secureBoot`` says so
(it needs SMM, which nested KVM may lack: domain_devices.py); a started domain
shows the chosen ``<loader type='pflash'>`` instead, which reads as ``uefi``
too. An auto-assigned display port reads as ``auto``. The agent channel, rng,
watchdog, TPM, video, a virtio console, the serial log and the secure-boot
settings are fields managed only when the manifest names them (``KEPT``
otherwise: domain_devices.py).

Not comparable between the running and the persistent definition: memory
(the live value is the balloon's) and cpu (host-model expands to a named
model at start). For cpu the ownership record keeps the declared value
(``<rc:cpu>``); the running definition keeps the one it was started with,
which ``booted_cpu`` reads, so a changed cpu shows as a pending restart.
The display password is compared on both when read with ``SECURE``.

The ownership record lives in ``<metadata>`` in the tool's own namespace;
with ``cloudInit`` it also holds the digest of the seed (field ``cloudInit``),
whose volume the domain has as one more CD-ROM (``<disk type='volume'>``).

An existing domain is redefined with ``patch``: its current definition with only
the declared fields that differ set and the managed device sets made exact, so what
the manifest does not say (and libvirt added) is kept; ``render`` is for creation.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import copy
import dataclasses
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import (
    Cdrom,
    CpuSpec,
    CpuTopology,
    Disk,
    Interface,
    VirtualMachineSpec,
    clock_parts,
    clock_text,
    is_q35,
    plain_path,
    target_fits,
    target_names,
)
from reconciler.rounding import definition_memory
from reconciler.units import format_size
from reconciler.xml import domain_nics, domain_tuning, edits
from reconciler.xml._fields import (
    INT,
    KIB,
    MAC,
    YES_NO,
    Attr,
    ChangeClass,
    Device,
    Each,
    Element,
    Field,
    Flag,
    Projection,
    Text,
    beside,
    drop_attr,
    ensure,
    find,
    observe_fields,
    parse,
    parse_own,
    patch_fields,
    project_fields,
    remove,
    render_fields,
    reorder,
    serialize,
    xml_text,
)
from reconciler.xml.domain_devices import DEVICE_FIELDS, FIRMWARE_FIELDS, SERIAL_LOG_FIELD
from reconciler.xml.domain_storage import (
    BLOCK_DISK_TYPES,
    DISK_FIELDS,
    DISK_FORMAT,
    DISK_ORDER,
    FILESYSTEMS,
    HOSTDEVS,
    HOTPLUG_FS_DRIVERS,
)

__all__ = [
    "BLOCK_DISKS",
    "CDROMS",
    "DISKS",
    "FIELDS",
    "FILESYSTEMS",
    "HOSTDEVS",
    "HOTPLUG_FS_DRIVERS",
    "INTERFACES",
    "MANAGED_DISK_TYPES",
    "MANAGED_GRAPHICS_TYPES",
    "MANAGED_INTERFACE_TYPES",
    "MANAGED_SERIAL_TYPES",
    "OWNER_NAMESPACE",
    "VNC_PASSWORD_MAX",
    "WITH_BLOCK_DISKS",
    "CloudInitSeed",
    "Ownership",
    "declared_storage",
    "device_xml",
    "disks_of",
    "interfaces_for",
    "machine_aliases_from_capabilities",
    "observe",
    "patch",
    "per_device_boot",
    "project",
    "read_cpu",
    "read_ownership",
    "refusal",
    "render",
    "secret_token",
    "serial_console",
    "set_aside",
    "with_owner_instance",
]

OWNER_NAMESPACE = "https://reconciler.dev/xmlns/domain/v1"
ET.register_namespace("rc", OWNER_NAMESPACE)

_ROOT_ORDER = (
    "name", "uuid", "title", "description", "metadata", "memory", "currentMemory", "vcpu",
    "os", "features", "cpu", "clock", "on_poweroff", "on_reboot", "on_crash", "devices",
)  # fmt: skip
_OS_ORDER = ("type", "firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "boot")
_DEVICE_ORDER = (
    "disk", "controller", "interface", "serial", "console", "channel", "input", "tpm",
    "graphics", "video", "watchdog", "memballoon", "rng",
)  # fmt: skip
_BOOT_DEVICES = {"disk": "hd", "cdrom": "cdrom", "network": "network"}
_BOOT_NAMES = {dev: name for name, dev in _BOOT_DEVICES.items()}


# --- ownership --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ownership:
    """What the tool records in a domain it owns: which reconciler instance (the id of
    its state directory, ``statedir.instance_id``; None in records written before
    instances had ids), which manifest, which spec, which commit."""

    manifest: str
    digest: str
    revision: str | None = None
    instance: str | None = None


def _owner_tag(name: str) -> str:
    return f"{{{OWNER_NAMESPACE}}}{name}"


def _render_ownership(root: Element, ownership: Ownership) -> None:
    """Write the ownership record into ``<metadata>``: the one writer of ``<rc:owner>``.
    A record already there is replaced where it stands; other tools' metadata stays."""
    metadata = ensure(root, "metadata")
    old = metadata.find(_owner_tag("owner"))
    owner = ET.Element(_owner_tag("owner"))
    if old is None:
        metadata.append(owner)
    else:
        old.addnext(owner)
        remove(old)
    if ownership.instance is not None:
        ET.SubElement(owner, _owner_tag("instance")).text = xml_text(ownership.instance,
                                                                     "instance")  # fmt: skip
    ET.SubElement(owner, _owner_tag("manifest")).text = xml_text(ownership.manifest, "manifest")
    ET.SubElement(owner, _owner_tag("digest")).text = xml_text(ownership.digest, "digest")
    if ownership.revision is not None:
        revision = ET.SubElement(owner, _owner_tag("revision"))
        revision.text = xml_text(ownership.revision, "revision")


def _render_declared_cpu(root: Element, cpu: CpuSpec | None) -> None:
    owner = ensure(root, "metadata").find(_owner_tag("owner"))
    if owner is not None:
        text = "" if cpu is None else cpu.describe()
        ET.SubElement(owner, _owner_tag("cpu")).text = xml_text(text, "cpu")


def booted_cpu(xml: str | Element) -> tuple[bool, str | None]:
    """(known, value): the ``cpu`` declared when the domain was defined, as its ownership
    record says (``CpuSpec.describe`` text). Read on the running definition, it is the
    cpu the guest booted with (libvirt expands host-model into a model name there).
    Unknown for a domain defined before the record held it, or one the tool does not own."""
    text = parse(xml).findtext(f"metadata/{_owner_tag('owner')}/{_owner_tag('cpu')}")
    if text is None:
        return False, None
    return True, text or None


def running_cpu_mismatch(live: str | Element, declared: CpuSpec | None) -> str | None:
    """What the running domain's ``<cpu>`` shows against ``declared`` that a start keeps
    as written, or None: its topology, a ``disable``/``forbid`` feature, ``migratable``
    off. (A start expands host-model and may turn other policies around, so only these
    are compared.) Catches a definition edited out of band and booted, which the
    ownership record's ``<rc:cpu>`` cannot show."""
    running = read_cpu(live)
    if declared is None or running is None:
        return None
    if running.topology != declared.topology:
        t = running.topology
        return "no topology" if t is None else \
            f"topology {t.sockets}s/{t.dies}d/{t.cores}c/{t.threads}t"  # fmt: skip
    have = dict(running.features)
    for name, policy in declared.features:
        if policy in ("disable", "forbid") and have.get(name) != policy:
            return f"{name}={have.get(name, 'absent')}"
    if declared.migratable is False and running.migratable is not False:
        return "migratable on"
    return None


def graphics_update(live_xml: str, desired_xml: str) -> str | None:
    """The running display's ``<graphics>`` with the desired password, for a live password
    change (libvirt refuses any other change to it there); None without either."""
    live = parse(live_xml).find("devices/graphics")
    wanted = parse(desired_xml).find("devices/graphics")
    if live is None or wanted is None or wanted.get("passwd") is None:
        return None
    live.set("passwd", str(wanted.get("passwd")))
    return serialize(live).strip()


# --- live changes libvirt refused -------------------------------------------------

# Kept in the running definition only (virDomainSetMetadata, AFFECT_LIVE): a change
# refused while this boot runs is not tried again, and the record goes with the boot.
REFUSED_NAMESPACE = "https://reconciler.dev/xmlns/refused/v1"
REFUSED_PREFIX = "rcl"


def refused_xml(paths: Iterable[str]) -> str:
    """The ``<refused>`` metadata element listing field or device paths (``disks[web-data]``)."""
    root = ET.Element("refused")
    for path in sorted(set(paths)):
        ET.SubElement(root, "change", {"path": xml_text(path, "path")})
    return serialize(root).strip()


def read_refused(xml: str | Element) -> frozenset[str]:
    """The paths a ``<refused>`` record lists, read from a domain's running XML (or the
    element alone, as ``refused_xml`` writes it)."""
    root = parse(xml)
    tag = f"{{{REFUSED_NAMESPACE}}}"
    record = root if root.tag in ("refused", tag + "refused") else root.find(
        f"metadata/{tag}refused")  # fmt: skip
    if record is None:
        return frozenset()
    return frozenset(
        str(c.get("path")) for c in record
        if isinstance(c.tag, str) and c.tag.endswith("change") and c.get("path")
    )  # fmt: skip


def has_device(xml: str, path: str) -> bool:
    """Whether the domain XML has the device ``path`` names (``disks[web-data]``)."""
    section, _, key = path.partition("[")
    return device_xml(xml, section, key.rstrip("]")) is not None


def read_ownership(xml: str | Element) -> Ownership | None:
    """The ownership record in a domain's XML, or None when the tool does not own it."""
    owner = parse(xml).find(f"metadata/{_owner_tag('owner')}")
    if owner is None:
        return None
    manifest = owner.findtext(_owner_tag("manifest"))
    digest = owner.findtext(_owner_tag("digest"))
    if not manifest or not digest:
        return None
    revision = owner.findtext(_owner_tag("revision"))
    instance = (owner.findtext(_owner_tag("instance")) or "").strip() or None
    return Ownership(manifest=manifest, digest=digest, revision=revision, instance=instance)


def with_owner_instance(xml: str, instance: str) -> str:
    """The domain definition ``xml`` (its inactive XML, as libvirt returns it) with its
    ownership record naming ``instance``, all else as it was: how a record is taken
    over without redefining the domain from a manifest (``reconciler adopt
    --from-instance``, and a record written before instances had ids). ValueError for
    a definition without an ownership record."""
    root = parse(xml)
    owner = root.find(f"metadata/{_owner_tag('owner')}")
    if owner is None:
        raise ValueError("the domain has no ownership record")
    found = owner.find(_owner_tag("instance"))
    if found is None:
        found = ET.Element(_owner_tag("instance"))
        owner.insert(0, found)
    found.text = xml_text(instance, "instance")
    return serialize(root)


def with_owner_manifest(xml: str, manifest: str) -> str:
    """The domain definition ``xml`` (its inactive XML, as libvirt returns it) with its
    ownership record naming ``manifest`` as the file it is declared in, all else as it
    was: a moved manifest (or a record written with a relative path) is recorded
    without redefining the domain from the manifest. ValueError for a definition
    without an ownership record."""
    root = parse(xml)
    owner = root.find(f"metadata/{_owner_tag('owner')}")
    if owner is None:
        raise ValueError("the domain has no ownership record")
    found = owner.find(_owner_tag("manifest"))
    if found is None:
        found = ET.SubElement(owner, _owner_tag("manifest"))
    found.text = xml_text(manifest, "manifest")
    return serialize(root)


# --- machine types ----------------------------------------------------------


def machine_aliases_from_capabilities(caps_xml: str, arch: str = "x86_64") -> dict[str, str]:
    """Machine aliases (``pc`` -> ``pc-i440fx-7.2``) of ``arch`` hvm guests in capabilities XML."""
    aliases: dict[str, str] = {}
    for guest in parse(caps_xml).findall("guest"):
        if guest.findtext("os_type") != "hvm":
            continue
        for guest_arch in guest.findall("arch"):
            if guest_arch.get("name") != arch:
                continue
            for machine in (*guest_arch.findall("machine"), *guest_arch.findall("domain/machine")):
                canonical = machine.get("canonical")
                if canonical and machine.text:
                    aliases.setdefault(machine.text.strip(), canonical)
    return aliases


# --- what render and project share -----------------------------------------


@dataclass(frozen=True, slots=True)
class CloudInitSeed:
    """Where a VM's cloud-init seed is stored (a raw volume) and the digest of its files."""

    pool: str
    volume: str
    digest: str

    @property
    def key(self) -> str:
        return f"{self.pool}/{self.volume}"


@dataclass(frozen=True, slots=True)
class _Desired:
    spec: VirtualMachineSpec
    machine_aliases: Mapping[str, str]
    graphics_password: str | None
    seed: CloudInitSeed | None = None


@dataclass(frozen=True, slots=True)
class _DiskView:
    disk: Disk
    pool: str | None
    format: str | None


_KEY = os.urandom(32)


def secret_token(value: object) -> object:
    """A secret as it is compared and shown: equal secrets give equal tokens in one process.

    Keyed with a per-process random key, so a token in a plan or log says
    nothing about the secret (a plain hash of an 8-character VNC password would).
    """
    digest = hmac.new(_KEY, str(value).encode(), "sha256").hexdigest()
    return f"<secret {digest[:12]}>"


# --- custom places ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Firmware:
    """``firmware``: uefi is ``<os firmware='efi'>`` (autoselected) or a pflash loader."""

    def write(self, root: Element, value: Any) -> None:
        if value == "uefi":
            os_element = ensure(root, "os")
            os_element.set("firmware", "efi")
            # Plain OVMF: secure boot needs SMM (and enrolled keys most guests lack).
            ET.SubElement(
                ensure(os_element, "firmware"), "feature", {"enabled": "no", "name": "secure-boot"}
            )

    def clear(self, root: Element) -> None:
        os_element = root.find("os")
        if os_element is None:
            return
        drop_attr(os_element, "firmware")
        for tag in ("firmware", "loader", "nvram"):
            for element in os_element.findall(tag):
                remove(element)

    def read(self, root: Element) -> object:
        os_element = root.find("os")
        if os_element is None:
            return "bios"
        loader = os_element.find("loader")
        if os_element.get("firmware") == "efi" or (
            loader is not None and loader.get("type") == "pflash"
        ):
            return "uefi"
        return "bios"

    def canon(self, value: Any) -> object:
        return value


_BOOT_DEVS = Each("os", "boot", "dev")


@dataclass(frozen=True, slots=True)
class _BootOrder:
    """``boot``: ``<boot dev=.../>`` in ``<os>``; meaningless (so ``()``) with a kernel."""

    def write(self, root: Element, value: Any) -> None:
        _BOOT_DEVS.write(root, tuple(_BOOT_DEVICES[name] for name in value))

    def clear(self, root: Element) -> None:
        _BOOT_DEVS.clear(root)

    def read(self, root: Element) -> object:
        if root.find("os/kernel") is not None:
            return ()  # libvirt adds <boot dev='hd'/> even then
        if per_device_boot(root):
            return ()  # libvirt refuses <os><boot> beside it
        devs = _BOOT_DEVS.read(root)
        assert isinstance(devs, tuple)
        return tuple(_BOOT_NAMES.get(dev, dev) for dev in devs)

    def canon(self, value: Any) -> object:
        return tuple(value)


def per_device_boot(xml: str | Element) -> bool:
    """Whether the domain orders boot per device (``<boot order='N'/>`` in a disk, NIC,
    hostdev...; formatdomain "BIOS bootloader", "Specifying boot order"): libvirt then
    refuses ``<os><boot>``, so a manifest's ``boot`` must be ``[]``."""
    return parse(xml).find("devices/*/boot") is not None


@dataclass(frozen=True, slots=True)
class _Clock:
    """``clock``: ``<clock offset>`` and its attributes (start, timezone, adjustment,
    basis) as one canonical text (``model.clock_text``); the timers inside are kept."""

    def write(self, root: Element, value: Any) -> None:
        offset, attrs = clock_parts(str(value))
        clock = ensure(root, "clock")
        clock.set("offset", xml_text(offset, "clock"))
        for key, text in attrs.items():
            clock.set(key, xml_text(text, f"clock.{key}"))

    def clear(self, root: Element) -> None:
        clock = root.find("clock")
        if clock is not None:
            for key in ("offset", *_CLOCK_ATTRS):
                drop_attr(clock, key)

    def read(self, root: Element) -> object:
        clock = root.find("clock")
        if clock is None or clock.get("offset") is None:
            return None
        return clock_text(str(clock.get("offset")),
                          **{k: clock.get(k) for k in _CLOCK_ATTRS})  # fmt: skip

    def canon(self, value: Any) -> object:
        return str(value)


_CLOCK_ATTRS = ("adjustment", "basis", "start", "timezone")
_DEFAULT_CPU_MODELS = ("qemu64",)
_CPU_ORDER = ("model", "vendor", "topology", "cache", "feature", "numa")


def read_cpu(xml: str | Element) -> CpuSpec | None:
    """The ``<cpu>`` of a domain definition as a ``CpuSpec`` (formatdomain, "CPU model
    and topology"); None when it names none, or only the qemu64 CPU libvirt adds to a
    ``type='qemu'`` domain that names none. ``check``, ``match`` and ``fallback`` are
    libvirt's bookkeeping, not the CPU's meaning, and are not read."""
    cpu = parse(xml).find("cpu")
    if cpu is None:
        return None
    mode = cpu.get("mode", "custom")
    model_element = cpu.find("model")
    model = None
    if mode == "custom":
        if model_element is None or not (model_element.text or "").strip():
            return None
        model = (model_element.text or "").strip()
    features = tuple(sorted(
        (str(f.get("name")), f.get("policy", "require"))
        for f in cpu.findall("feature") if f.get("name")
    ))  # fmt: skip
    if (
        model in _DEFAULT_CPU_MODELS
        and cpu.get("check") == "none"
        and model_element is not None
        and model_element.get("fallback") == "forbid"
        and not features
    ):
        return None
    topology = None
    element = cpu.find("topology")
    if element is not None:
        topology = CpuTopology(
            *(int(element.get(k, "1")) for k in ("sockets", "dies", "cores", "threads"))
        )
    migratable = cpu.get("migratable")
    return CpuSpec(
        mode=mode, model=model, features=features, topology=topology,
        migratable=None if migratable is None else migratable == "on",
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Cpu:
    """``cpu``: a ``CpuSpec``, compared as its canonical text (``CpuSpec.describe``)."""

    def write(self, root: Element, value: Any) -> None:
        assert isinstance(value, CpuSpec)
        cpu = ensure(root, "cpu")
        cpu.set("mode", value.mode)
        if value.mode == "custom":
            cpu.set("match", "exact")
            model = ET.SubElement(cpu, "model", {"fallback": "allow"})
            model.text = xml_text(str(value.model), "cpu.model")
        if value.migratable is not None:
            cpu.set("migratable", "on" if value.migratable else "off")
        if value.topology is not None:
            t = value.topology
            ET.SubElement(cpu, "topology", {
                "sockets": str(t.sockets), "dies": str(t.dies),
                "cores": str(t.cores), "threads": str(t.threads),
            })  # fmt: skip
        for name, policy in value.features:
            ET.SubElement(cpu, "feature", {"policy": policy, "name": xml_text(name, "feature")})
        reorder(cpu, _CPU_ORDER)

    def clear(self, root: Element) -> None:
        for cpu in root.findall("cpu"):
            remove(cpu)

    def read(self, root: Element) -> object:
        cpu = read_cpu(root)
        return None if cpu is None else cpu.describe()

    def canon(self, value: Any) -> object:
        return value.describe() if isinstance(value, CpuSpec) else value


@dataclass(frozen=True, slots=True)
class _GraphicsPort:
    """``graphics.port``: a number (``autoport='no'``), or ``auto`` (libvirt picks one)."""

    def write(self, root: Element, value: Any) -> None:
        graphics = ensure(root, "devices/graphics")
        if value == "auto":
            graphics.set("autoport", "yes")
        else:
            graphics.set("port", str(int(value)))
            graphics.set("autoport", "no")

    def clear(self, root: Element) -> None:
        graphics = root.find("devices/graphics")
        if graphics is not None:
            for key in ("port", "autoport"):
                drop_attr(graphics, key)

    def read(self, root: Element) -> object:
        graphics = root.find("devices/graphics")
        if graphics is None:
            return None
        if graphics.get("autoport") == "yes":
            return "auto"
        port = graphics.get("port")
        return "auto" if port is None or int(port) < 0 else int(port)

    def canon(self, value: Any) -> object:
        return value if value == "auto" else int(value)


@dataclass(frozen=True, slots=True)
class _Serial:
    """``serial``: the first ``<serial>``'s type (pty, file), ``none`` without one.

    Rendered with the ``<console>`` that ``virsh console`` attaches to.
    """

    def write(self, root: Element, value: Any) -> None:
        if value == "none":
            return
        devices = ensure(root, "devices")
        serial = ET.SubElement(devices, "serial", {"type": value})
        ET.SubElement(serial, "target", {"port": "0"})
        console = ET.SubElement(devices, "console", {"type": value})
        ET.SubElement(console, "target", {"type": "serial", "port": "0"})

    def clear(self, root: Element) -> None:
        """The first serial port and the console that mirrors it (port 0)."""
        devices = root.find("devices")
        if devices is None:
            return
        serial = devices.find("serial")
        if serial is not None:
            remove(serial)
        for console in devices.findall("console"):
            target = console.find("target")
            if target is None or (target.get("type", "serial") == "serial"
                                  and target.get("port", "0") == "0"):  # fmt: skip
                remove(console)

    def read(self, root: Element) -> object:
        serial = root.find("devices/serial")
        return "none" if serial is None else serial.get("type")

    def canon(self, value: Any) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _SerialFile:
    """``serial.file``: the log file of a ``type='file'`` serial port (and its console)."""

    def write(self, root: Element, value: Any) -> None:
        for tag in ("serial", "console"):
            element = find(root, f"devices/{tag}[@type='file']")
            if element is not None:
                element.insert(0, ET.Element("source", {"path": xml_text(str(value), "serial")}))

    def clear(self, root: Element) -> None:
        for tag in ("serial", "console"):
            element = find(root, f"devices/{tag}[@type='file']")
            if element is not None:
                for source in element.findall("source"):
                    remove(source)

    def read(self, root: Element) -> object:
        return Attr("devices/serial[@type='file']/source", "path").read(root)

    def canon(self, value: Any) -> object:
        return value


@dataclass(frozen=True, slots=True)
class _SeedDigest:
    """``cloudInit``: the digest of the seed the domain was defined with, kept in the
    ownership record (``<rc:owner><rc:cloudInit>``). The running definition keeps the
    digest it was started with, so a seed rewritten since shows as a pending restart."""

    def write(self, root: Element, value: Any) -> None:
        metadata = ensure(root, "metadata")
        owner = metadata.find(_owner_tag("owner"))
        if owner is None:
            owner = ET.SubElement(metadata, _owner_tag("owner"))
        ET.SubElement(owner, _owner_tag("cloudInit")).text = xml_text(str(value), "cloudInit")

    def clear(self, root: Element) -> None:
        for element in root.findall(f"metadata/{_owner_tag('owner')}/{_owner_tag('cloudInit')}"):
            remove(element)

    def read(self, root: Element) -> object:
        return root.findtext(f"metadata/{_owner_tag('owner')}/{_owner_tag('cloudInit')}")

    def canon(self, value: Any) -> object:
        return str(value)


# --- the declarations -------------------------------------------------------


def _graphics(attr: str) -> Callable[[_Desired], object]:
    def get(d: _Desired) -> object:
        graphics = d.spec.graphics
        if graphics is None:
            return None
        if attr == "password":
            return d.graphics_password if graphics.password_file is not None else None
        if attr == "port":
            return "auto" if graphics.port is None else graphics.port
        return getattr(graphics, attr)

    return get


def _sorted(value: object) -> object:
    assert isinstance(value, tuple)
    return tuple(sorted(value))


def _size(value: object) -> object:
    """A size in bytes as a manifest writes it (``format_size``: 128MiB)."""
    return format_size(value) if isinstance(value, int) else value


FIELDS: tuple[Field[_Desired], ...] = (
    Field("type", lambda d: d.spec.type, Attr("", "type"), default="kvm"),
    Field("maxMemory", lambda d: d.spec.max_memory, Text("memory", KIB, {"unit": "KiB"}),
          unit="bytes", rounding=definition_memory, export=_size),
    # the balloon: set live up to maxMemory; a running domain does not show its target
    Field(
        "memory",
        lambda d: d.spec.memory,
        Text("currentMemory", KIB, {"unit": "KiB"}),
        fallback="maxMemory",
        change=ChangeClass.LIVE, live_readable=False,
        unit="bytes", rounding=definition_memory, export=_size,
    ),
    Field("maxVcpus", lambda d: d.spec.max_vcpus, Text("vcpu", INT)),
    # hot-plugged up to maxVcpus (an unplug waits for a restart: see the planner)
    Field("vcpus", lambda d: d.spec.vcpus, Attr("vcpu", "current", INT), fallback="maxVcpus",
          change=ChangeClass.LIVE, default=1),
    Field(
        "machine",
        lambda d: d.machine_aliases.get(d.spec.machine, d.spec.machine),
        Attr("os/type", "machine", fixed={"arch": "x86_64"}),
        default="pc",
    ),
    Field("firmware", lambda d: d.spec.firmware, _Firmware(), default="bios"),
    *FIRMWARE_FIELDS,  # secure boot, loader, NVRAM template: managed when named
    Field("kernel", lambda d: d.spec.kernel, Text("os/kernel")),
    Field("initrd", lambda d: d.spec.initrd, Text("os/initrd")),
    Field("cmdline", lambda d: d.spec.cmdline, Text("os/cmdline")),
    Field("boot", lambda d: () if d.spec.kernel else d.spec.boot, _BootOrder(),
          default=("disk",)),
    # host-model is expanded in the running definition: compared through the record of
    # the CPU the domain booted with (booted_cpu), not the running <cpu>
    Field("cpu", lambda d: d.spec.cpu, _Cpu(), live_readable=False, export=None),
    Field("clock", lambda d: d.spec.clock, _Clock(), default="utc"),
    Field("graphics.type", _graphics("type"), Attr("devices/graphics", "type"), default="vnc"),
    Field("graphics.port", _graphics("port"), _GraphicsPort(), default="auto"),
    Field(
        "graphics.listen",
        _graphics("listen"),
        Attr("devices/graphics/listen[@type='address']", "address"),
        default="127.0.0.1",
    ),
    Field("graphics.keymap", _graphics("keymap"), Attr("devices/graphics", "keymap")),
    Field(
        "graphics.password",
        _graphics("password"),
        Attr("devices/graphics", "passwd"),
        show=secret_token,
        change=ChangeClass.LIVE,  # a rotated secret is set on the running display
        export=None,  # never written back: the manifest names a file
    ),
    Field(
        "inputs",
        lambda d: d.spec.inputs,
        Each("devices", "input", "type", fixed={"bus": "usb"}),
        show=_sorted,
    ),
    Field("serial", lambda d: d.spec.serial, _Serial(), default="pty"),
    Field(
        "serial.file",
        lambda d: d.spec.serial_file if d.spec.serial == "file" else None,
        _SerialFile(),
    ),
    SERIAL_LOG_FIELD,
    *DEVICE_FIELDS,  # agent channel, rng, watchdog, TPM, video, console: when named
    Field("cloudInit", lambda d: None if d.seed is None else d.seed.digest, _SeedDigest(),
          export=None),
)

FIELDS_BY_PATH: Mapping[str, Field[_Desired]] = {f.path: f for f in FIELDS}

LIVE_INCOMPARABLE = frozenset(f.path for f in FIELDS if not f.live_readable)
"""Fields a running definition cannot tell (``Field.live_readable``): memory, cpu."""

HOTPLUG_DISK_BUSES = frozenset({"virtio", "scsi"})
"""Disk buses a pc/q35 machine hot-plugs (``DISKS.change`` is live on these alone)."""


@dataclass(frozen=True, slots=True)
class _DiskSource:
    """A disk's identity: the volume it names (``type='volume'``), else its file path.
    Written by the source fields; only read here."""

    def write(self, root: Element, value: Any) -> None:
        pass

    def clear(self, root: Element) -> None:
        pass

    def read(self, root: Element) -> object:
        source = root.find("source")
        if source is None:
            return None
        kind = root.get("type")
        return source.get("volume" if kind == "volume" else "dev" if kind == "block" else "file")

    def canon(self, value: Any) -> object:
        return value


MANAGED_GRAPHICS_TYPES = frozenset({"vnc", "spice"})
"""The ``<graphics type>`` a manifest manages; an SDL, egl-headless, dbus, rdp display
is kept as it is (``set_aside``)."""
MANAGED_SERIAL_TYPES = frozenset({"pty", "file"})
"""The ``<serial type>`` of a serial port 0 a manifest manages with its console; a
port 0 of another type (tcp, udp, unix, dev...) is kept, with every serial port and
the port-0 console (``set_aside``), and the manifest reads ``serial: none``."""
MANAGED_DISK_TYPES = frozenset({"file", "volume"})
"""The ``<disk type>`` of the disks and CD-ROMs a manifest manages as a whole set.
Block and network disks (and the rest, docs/decisions.md) are kept as they are."""
MANAGED_INTERFACE_TYPES = frozenset({"network", "bridge", "direct"})
"""The ``<interface type>`` a manifest manages; user, hostdev... NICs are kept. Direct
NICs are a set of their own: managed only by a manifest that declares one
(``interfaces_for``, ``observe(direct=True)``)."""


def disk_key(disk: Disk) -> str:
    """A disk's identity in projections and plans: its volume name, else its file path
    (or its block device's)."""
    if disk.volume is not None:
        return disk.volume
    return str(disk.file if disk.device is None else disk.device)


DISKS: Device[_DiskView] = Device(
    section="disks",
    parent="devices",
    tag="disk",
    fixed={"device": "disk"},
    key=_DiskSource(),
    key_of=lambda v: disk_key(v.disk),
    variant_of=lambda v: ("volume" if v.disk.volume is not None
                          else "block" if v.disk.device is not None else "file"),
    variants=MANAGED_DISK_TYPES,
    readdress=frozenset({"bus"}),
    change=ChangeClass.LIVE,  # hot-plugged on HOTPLUG_DISK_BUSES only
    ahead=True,  # before the CD-ROMs: <boot dev='hd'> boots the first disk
    fields=(
        Field("target", lambda v: v.disk.target, Attr("target", "dev")),
        Field("format", lambda v: v.format, DISK_FORMAT),
        Field("cache", lambda v: v.disk.cache, Attr("driver", "cache", fixed={"name": "qemu"})),
        Field("pool", lambda v: v.pool, Attr("source", "pool"), variant="volume"),
        Field("volume", lambda v: v.disk.volume, Attr("source", "volume"), variant="volume"),
        Field("file", lambda v: v.disk.file, Attr("source", "file"), variant="file"),
        Field("bus", lambda v: v.disk.bus, Attr("target", "bus"), default="virtio"),
        Field("readonly", lambda v: v.disk.readonly, Flag("readonly"), default=False),
        Field("serial", lambda v: v.disk.serial, Text("serial")),
        *DISK_FIELDS,
    ),
    order=DISK_ORDER,
)
WITH_BLOCK_DISKS: Device[_DiskView] = dataclasses.replace(
    DISKS, variants=MANAGED_DISK_TYPES | BLOCK_DISK_TYPES)
"""``DISKS`` of a manifest that declares a block disk: block disks are in its set."""
BLOCK_DISKS: Device[_DiskView] = dataclasses.replace(DISKS, variants=BLOCK_DISK_TYPES)


def disks_of(spec: VirtualMachineSpec) -> Device[_DiskView]:
    """The disk set ``spec`` manages: with block disks only if it declares one."""
    return WITH_BLOCK_DISKS if any(d.device is not None for d in spec.disks) else DISKS


def declared_storage(spec: VirtualMachineSpec, xml: str | Element) -> Projection:
    """What ``observe`` leaves out and ``spec`` manages, read from a domain's XML: its
    block disks when ``spec`` declares one, its shares and host devices when ``spec`` names
    ``filesystems``/``hostdevs`` (domain_storage.py: managed only when named)."""
    root = parse(xml)
    out: Projection = {}
    if disks_of(spec) is WITH_BLOCK_DISKS:
        out.update(BLOCK_DISKS.observe(root))
    if spec.filesystems is not None:
        out.update(FILESYSTEMS.observe(root))
    if spec.hostdevs is not None:
        out.update(HOSTDEVS.observe(root))
    return out


def _cdrom_structure(element: Element, cdrom: Cdrom) -> None:
    ensure(element, "driver").attrib.update({"name": "qemu", "type": "raw"})
    ensure(element, "readonly")


CDROMS: Device[Cdrom] = Device(
    section="cdroms",
    parent="devices",
    tag="disk",
    fixed={"device": "cdrom"},
    key=Attr("target", "dev"),
    key_of=lambda cdrom: cdrom.target,
    variant_of=lambda cdrom: "file" if cdrom.volume is None else "volume",
    # a medium change is done to the running domain (update-device)
    fields=(
        Field("file", lambda cdrom: cdrom.file, Attr("source", "file"), variant="file",
              change=ChangeClass.LIVE),
        Field("pool", lambda cdrom: cdrom.pool, Attr("source", "pool"), variant="volume"),
        Field("volume", lambda cdrom: cdrom.volume, Attr("source", "volume"), variant="volume"),
        Field("bus", lambda cdrom: cdrom.bus, Attr("target", "bus")),
    ),
    decorate=_cdrom_structure,
    order=("driver", "source", "target", "readonly"),
    variants=MANAGED_DISK_TYPES,
    readdress=frozenset({"bus"}),
)

INTERFACES: Device[Interface] = Device(
    section="interfaces",
    parent="devices",
    tag="interface",
    key=Attr("mac", "address", MAC),
    key_of=lambda nic: nic.mac,
    variant_of=lambda nic: ("network" if nic.network is not None
                            else "direct" if nic.direct is not None else "bridge"),
    change=ChangeClass.LIVE,  # NICs are hot-plugged and unplugged
    fields=(
        Field("network", lambda nic: nic.network, Attr("source", "network"), variant="network"),
        Field("bridge", lambda nic: nic.bridge, Attr("source", "bridge"), variant="bridge"),
        Field("model", lambda nic: nic.model, Attr("model", "type"), default="virtio"),
        # No PXE option ROM unless the VM boots from the network: a guest with an
        # empty disk must not fall through to network boot.
        Field(
            "bootRom", lambda nic: None if nic.boot_rom else False, Attr("rom", "enabled", YES_NO)
        ),
        *domain_nics.FIELDS,
    ),
    order=("mac", "source", "vlan", "model", "bandwidth", "link", "mtu", "rom"),
    variants=MANAGED_INTERFACE_TYPES,
    decorate=domain_nics.tidy,
)
_INTERFACES_NOT_DIRECT = dataclasses.replace(
    INTERFACES, variants=MANAGED_INTERFACE_TYPES - {"direct"})


def interfaces_for(spec: VirtualMachineSpec) -> Device[Interface]:
    """The NIC set ``spec`` makes exact: every managed NIC when it declares a direct
    NIC, else the network and bridge NICs (its direct NICs are kept as they are)."""
    return INTERFACES if domain_nics.declares_direct(spec) else _INTERFACES_NOT_DIRECT


# --- render / project / observe ------------------------------------------------


def set_aside(root: Element) -> list[Element]:
    """The devices of kinds the manifest manages that it cannot hold, which a redefine
    keeps and observation does not see: displays not in ``MANAGED_GRAPHICS_TYPES``;
    with a serial port 0 not in ``MANAGED_SERIAL_TYPES``, every serial port and the
    console on serial port 0. (Elements of ``root``, not removed.)"""
    devices = root.find("devices")
    if devices is None:
        return []
    found = [g for g in devices.findall("graphics") if g.get("type") not in MANAGED_GRAPHICS_TYPES]
    serial = devices.find("serial")
    if serial is not None and serial.get("type") not in MANAGED_SERIAL_TYPES:
        found += devices.findall("serial")
        found += [c for c in devices.findall("console") if serial_console(c)]
    return found


def _take_aside(root: Element) -> list[tuple[Element, Element | None]]:
    """Take the ``set_aside`` devices out of ``root``: (device, the sibling before it
    that stays, None at the start), for ``_put_back``."""
    aside = set_aside(root)
    taken = []
    for element in aside:
        anchor = element.getprevious()
        while anchor is not None and any(anchor is other for other in aside):
            anchor = anchor.getprevious()
        taken.append((element, anchor))
    for element, _ in taken:
        remove(element)
    return taken


def _put_back(devices: Element, taken: list[tuple[Element, Element | None]]) -> None:
    """Put ``_take_aside``'s devices back where they stood (after the same sibling, or
    at the end when it is gone); libvirt orders devices by kind anyway."""
    last: list[tuple[Element | None, Element]] = []  # anchor -> the last put after it
    for element, anchor in taken:
        after = next((e for a, e in reversed(last) if a is anchor), anchor)
        if after is None:
            devices.insert(0, element)
        elif after.getparent() is devices:
            after.addnext(element)
        else:
            devices.append(element)
        last.append((anchor, element))


def serial_console(console: Element) -> bool:
    """Whether a ``<console>`` is serial port 0's (``virsh console``), the one a
    manifest's ``serial`` manages; other consoles (virtio...) are kept."""
    target = console.find("target")
    return target is None or (target.get("type", "serial") == "serial"
                              and target.get("port", "0") == "0")  # fmt: skip


def refusal(
    spec: VirtualMachineSpec,
    current: str | Element,
    patched: Callable[[], str | Element] | None = None,
) -> str | None:
    """Why ``spec`` cannot be applied to the existing domain ``current`` without losing
    what it has, or None: ``boot`` listed for a domain ordering boot per device (in
    ``patched()``, the redefinition, when given: a boot order on a device the change
    replaces or removes goes with it), or a serial port declared where a serial port
    the manifest cannot hold is kept. ``patched`` may raise ValueError as ``patch``."""
    root = parse(current)
    if spec.boot and not spec.kernel and per_device_boot(root) and (
        patched is None or per_device_boot(patched())
    ):
        return ("boot: the domain orders boot per device (<boot order=.../> in its devices), "
                "and libvirt refuses <os><boot> beside it; write boot: [] to keep that order")
    kept = [e for e in set_aside(root) if e.tag == "serial"]
    if kept and spec.serial != "none":
        return (f"serial: the domain's serial port 0 is {kept[0].get('type')}, which a "
                "manifest does not manage and a redefine keeps; write serial: none")
    return None


def unmanaged_clash(
    spec: VirtualMachineSpec, current: str | Element
) -> tuple[tuple[str | int, ...], str] | None:
    """A declared disk target or NIC MAC that a device the manifest does not manage
    already has in ``current`` (a block or network disk, a ``direct`` or hostdev NIC:
    kept by every redefine), or a ``graphics`` that clashes with a kept second VNC/SPICE
    display (its type, which libvirt starts only once per type; or none, which would make
    it the manifest's display), as (the field's path in the manifest, why), or None.
    libvirt refuses a duplicated target only at define time (``target 'vdc'
    duplicated``) and accepts two NICs with one MAC, which no later plan can tell
    apart (formatdomain "Hard drives...", "Network interfaces")."""
    root = parse(current)
    unmanaged_targets: dict[str, Element] = {}
    for element in root.findall("devices/disk"):
        if disks_of(spec).managed(element) or CDROMS.managed(element):
            continue
        target = element.find("target")
        if target is not None and target.get("dev"):
            unmanaged_targets.setdefault(str(target.get("dev")), element)
    for i, disk in enumerate(spec.disks):
        other = unmanaged_targets.get(disk.target) if disk.target_declared else None
        if other is not None:
            return (("spec", "disks", i, "target"),
                    f"target {disk.target} is the target of the domain's {_unmanaged(other)}, "
                    "which a manifest does not manage and a redefine keeps; declare "
                    "another target, or none (a free one is chosen)")  # fmt: skip
    for i, cdrom in enumerate(spec.cdroms):
        other = unmanaged_targets.get(cdrom.target)
        if other is not None:
            return (("spec", "cdroms", i, "target"),
                    f"target {cdrom.target} is the target of the domain's "
                    f"{_unmanaged(other)}, which a manifest does not manage and a "
                    "redefine keeps; declare another target")  # fmt: skip
    displays = [g for g in root.findall("devices/graphics")
                if g.get("type") in MANAGED_GRAPHICS_TYPES]  # fmt: skip
    if len(displays) > 1:
        kept = displays[1].get("type")
        wanted = "none" if spec.graphics is None else spec.graphics.type
        if wanted == "none":
            return (("spec", "graphics"),
                    f"graphics: none removes the domain's first display "
                    f"({displays[0].get('type')}), and its second display ({kept}), which "
                    "a manifest does not manage and a redefine keeps, would become the "
                    "manifest's display; keep graphics as the first display, or remove "
                    "the second display from the domain first")  # fmt: skip
        if wanted == kept:
            return (("spec", "graphics", "type"),
                    f"graphics.type {wanted} is the type of the domain's second display "
                    "(kept by every redefine): libvirt allows one graphics device of "
                    f"each type; declare type {displays[0].get('type')}, or remove the "
                    "second display from the domain first")  # fmt: skip
    unmanaged_macs: dict[str, Element] = {}
    for element in root.findall("devices/*/mac/.."):
        if element.tag == "interface" and interfaces_for(spec).managed(element):
            continue
        mac = element.find("mac")
        if mac is not None and mac.get("address"):
            unmanaged_macs.setdefault(str(mac.get("address")).lower(), element)
    for i, nic in enumerate(spec.interfaces):
        other = unmanaged_macs.get(nic.mac.lower())
        if other is not None:
            return (("spec", "interfaces", i, "mac"),
                    f"mac {nic.mac} is the MAC of the domain's {_unmanaged(other)}, which a "
                    "manifest does not manage and a redefine keeps: two NICs with one MAC; "
                    "declare another mac, or remove that device from the domain")  # fmt: skip
    return None


def _unmanaged(device: Element) -> str:
    """An unmanaged device as the domain has it: ``block disk (/dev/sdb) at vdc``."""
    source = device.find("source")
    where = None
    if source is not None:
        where = (source.get("dev") or source.get("file") or source.get("name")
                 or source.get("network") or source.get("bridge"))  # fmt: skip
    target = device.find("target")
    at = f" at {target.get('dev')}" if device.tag == "disk" and target is not None else ""
    return f"{device.get('type', '')} {device.tag}".strip() + (f" ({where})" if where else "") + at


def boot_order_refusal(
    spec: VirtualMachineSpec, current: str | Element, patched: str | Element
) -> str | None:
    """Why ``boot: []`` cannot hold for ``patched`` (the redefinition of ``current``),
    or None. ``boot: []`` means "the devices carry ``<boot order>``" (formatdomain
    "BIOS bootloader", "Specifying boot order"); where no device of the patched
    definition carries one any more (the device that did was replaced or removed),
    libvirt adds ``<boot dev='hd'/>`` and the definition never settles."""
    if spec.boot or spec.kernel or per_device_boot(patched):
        return None
    carried = [_device_name(e) for e in parse(current).findall("devices/*/boot/..")]
    had = (f"the boot order was on {', '.join(carried)}, which this change replaces or "
           "removes" if carried else "no device of the domain has one")  # fmt: skip
    return ("boot: [] keeps the boot order the domain's devices carry (<boot order=.../>), "
            f"but after this change no device carries one ({had}); libvirt would add "
            "<boot dev='hd'/>. Write the classes to boot from instead, e.g. boot: [disk]")


def _device_name(device: Element) -> str:
    """A device as a person names it: ``disk vda``, ``interface 52:54:00:..``."""
    target = device.find("target")
    mac = device.find("mac")
    if target is not None and target.get("dev"):
        return f"{device.tag} {target.get('dev')}"
    if mac is not None and mac.get("address"):
        return f"{device.tag} {mac.get('address')}"
    return device.tag


VNC_PASSWORD_MAX = 8


def _desired(
    spec: VirtualMachineSpec,
    machine_aliases: Mapping[str, str] | None,
    graphics_password: str | None,
    seed: CloudInitSeed | None = None,
) -> _Desired:
    if (
        spec.graphics is not None
        and spec.graphics.type == "vnc"
        and graphics_password is not None
        and len(graphics_password) > VNC_PASSWORD_MAX
    ):
        # libvirt refuses it too, but only when asked to define.
        raise ValueError(
            f"a VNC password has at most {VNC_PASSWORD_MAX} characters,"
            f" this one has {len(graphics_password)}"
        )
    if spec.cloud_init is not None and seed is None:
        raise ValueError("cloudInit: the pool of the seed volume is not known")
    return _Desired(spec, machine_aliases or {}, graphics_password, seed)


def _cdroms(desired: _Desired) -> tuple[Cdrom, ...]:
    """The manifest's CD-ROMs, and the cloud-init seed's."""
    ci, seed = desired.spec.cloud_init, desired.seed
    if ci is None or seed is None:
        return desired.spec.cdroms
    return (
        *desired.spec.cdroms,
        Cdrom(target=ci.target, bus=ci.bus, volume=seed.volume, pool=seed.pool),
    )


def _disk_views(
    spec: VirtualMachineSpec, volume_pools: Mapping[str, str], volume_formats: Mapping[str, str]
) -> tuple[_DiskView, ...]:
    views = []
    for disk in spec.disks:
        if disk.volume is None:
            views.append(_DiskView(disk, None, disk.format))
            continue
        missing = [
            what
            for what, known in (("pool", volume_pools), ("format", volume_formats))
            if disk.volume not in known
        ]
        if missing:
            # Never let qemu guess: a qcow2 volume without its format is opened as raw.
            raise ValueError(
                f"disk {disk.target}: volume {disk.volume!r} has no known " + " or ".join(missing)
            )
        views.append(_DiskView(disk, volume_pools[disk.volume], volume_formats[disk.volume]))
    return tuple(views)


def render(
    name: str,
    spec: VirtualMachineSpec,
    *,
    uuid: str | None = None,
    ownership: Ownership | None = None,
    volume_pools: Mapping[str, str] | None = None,
    volume_formats: Mapping[str, str] | None = None,
    graphics_password: str | None = None,
    machine_aliases: Mapping[str, str] | None = None,
    cloud_init_seed: CloudInitSeed | None = None,
) -> str:
    """Domain XML for ``defineXML``.

    ``volume_pools``/``volume_formats``: pool and image format of every volume
    a disk names. ``graphics_password``: the first line of ``passwordFile``,
    read by the caller. ``machine_aliases``: optional, to pin the versioned type.
    ``cloud_init_seed``: the seed volume, needed when the spec has ``cloudInit``.
    """
    desired = _desired(spec, machine_aliases, graphics_password, cloud_init_seed)
    root = ET.Element("domain")
    ET.SubElement(root, "name").text = xml_text(name, "name")
    if uuid is not None:
        ET.SubElement(root, "uuid").text = xml_text(uuid, "uuid")
    if ownership is not None:
        _render_ownership(root, ownership)
        _render_declared_cpu(root, spec.cpu)
    ET.SubElement(ET.SubElement(root, "os"), "type", {"arch": "x86_64"}).text = "hvm"
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    for event, action in (
        ("on_poweroff", "destroy"),
        ("on_reboot", "restart"),
        ("on_crash", "destroy"),
    ):
        ET.SubElement(root, event).text = action
    render_fields(root, FIELDS, desired)
    domain_tuning.render(root, spec)
    DISKS.render(root, _disk_views(spec, volume_pools or {}, volume_formats or {}))
    CDROMS.render(root, _cdroms(desired))
    INTERFACES.render(root, spec.interfaces)
    FILESYSTEMS.render(root, spec.filesystems or ())
    HOSTDEVS.render(root, spec.hostdevs or ())
    devices = ensure(root, "devices")
    if any(disk.bus == "scsi" for disk in spec.disks) or any(
        cdrom.bus == "scsi" for cdrom in spec.cdroms
    ):
        ET.SubElement(devices, "controller", {"type": "scsi", "model": "virtio-scsi"})
    ports = pcie_root_ports(spec)
    if ports:  # with one pci controller named, libvirt wants the root named too
        ET.SubElement(devices, "controller", {"type": "pci", "index": "0", "model": "pcie-root"})
    for _ in range(ports):
        ET.SubElement(devices, "controller", {"type": "pci", "model": "pcie-root-port"})
    ET.SubElement(devices, "memballoon", {"model": "virtio"})
    reorder(root, _ROOT_ORDER)
    domain_tuning.arrange(root)
    reorder(ensure(root, "os"), _OS_ORDER)
    reorder(devices, _DEVICE_ORDER)
    edits.apply(root, spec.xml)  # the escape hatch, after the typed fields (xml/edits.py)
    return serialize(root)


def patch(
    current: str | Element,
    spec: VirtualMachineSpec,
    *,
    ownership: Ownership | None = None,
    volume_pools: Mapping[str, str] | None = None,
    volume_formats: Mapping[str, str] | None = None,
    graphics_password: str | None = None,
    machine_aliases: Mapping[str, str] | None = None,
    cloud_init_seed: CloudInitSeed | None = None,
) -> str:
    """Domain XML for redefining an existing domain: ``current`` (its persistent
    definition, read INACTIVE|SECURE) with the declared fields that differ set and the
    managed device sets made exact; everything else is kept as it is (addresses,
    controllers, timers, ``<pm>``, other tools' metadata, unknown elements, and the
    video, channels, rng, watchdog, TPM a manifest does not name). Same keywords as
    ``render``; ``spec``'s disk targets should be settled
    against ``current`` first (``settle_targets``).

    Managed device sets (formatdomain "Hard drives, floppy disks, CDROMs", "Network
    interfaces", "Graphical framebuffers", "Input devices", "Serial port"): disks and
    CD-ROMs of type file/volume, NICs of type network/bridge (and direct, when ``spec``
    declares a direct NIC: ``interfaces_for``), the graphics, USB inputs,
    the serial port and its console. A disk or NIC kept by identity keeps its element:
    only fields that differ change, and a bus change drops only that disk's address.
    New devices have no address (libvirt gives each a free one, and on q35 the root port
    it needs); spare root ports are added only with a change to q35. The ownership record
    (``<rc:owner>``) is replaced where it stands. Raises ValueError as ``render``."""
    desired = _desired(spec, machine_aliases, graphics_password, cloud_init_seed)
    root = parse_own(current)  # never change the caller's tree
    aside = _take_aside(root)
    os_type = root.find("os/type")
    was_q35 = is_q35("" if os_type is None else os_type.get("machine", ""))
    numa = domain_tuning.hold(root)  # a <cpu> rewritten keeps the <numa> it had
    patch_fields(root, (f for f in FIELDS if f.path != "cloudInit"), desired)
    domain_tuning.patch(root, spec, numa)
    if was_q35 != is_q35(spec.machine):
        _new_chipset(root)
    if spec.graphics is None:
        # only the managed display, the first VNC/SPICE one: a second display is kept,
        # as export says (unmanaged_clash refuses what that would make of the manifest)
        managed = root.find("devices/graphics")
        if managed is not None:
            remove(managed)
    added = disks_of(spec).patch(root, _disk_views(spec, volume_pools or {},
                                                   volume_formats or {}))  # fmt: skip
    added += CDROMS.patch(root, _cdroms(desired))
    added += interfaces_for(spec).patch(root, spec.interfaces)
    if spec.filesystems is not None:
        added += FILESYSTEMS.patch(root, spec.filesystems)
    if spec.hostdevs is not None:
        added += HOSTDEVS.patch(root, spec.hostdevs)
    devices = ensure(root, "devices")
    scsi = any(disk.bus == "scsi" for disk in spec.disks) or any(
        cdrom.bus == "scsi" for cdrom in spec.cdroms
    )
    if scsi and devices.find("controller[@type='scsi']") is None:
        beside(ET.SubElement(devices, "controller", {"type": "scsi", "model": "virtio-scsi"}))
    # Spare root ports come with a VM the tool creates (render) or moves to q35 (the
    # machine change the plan names); a redefine that adds a device adds none: they
    # are PCI bridges the guest would meet at its next boot, unasked. libvirt gives
    # the new device the port it needs.
    if was_q35 != is_q35(spec.machine) and is_q35(spec.machine):
        if devices.find("controller[@model='pcie-root']") is None:
            beside(ET.SubElement(devices, "controller", {"type": "pci", "index": "0",
                                                  "model": "pcie-root"}))  # fmt: skip
        have = len(devices.findall("controller[@model='pcie-root-port']"))
        for _ in range(pcie_root_ports(spec) - have):
            beside(ET.SubElement(devices, "controller", {"type": "pci", "model": "pcie-root-port"}))
    if ownership is not None:
        _render_ownership(root, ownership)
        _render_declared_cpu(root, spec.cpu)
    else:
        for owner in root.findall(f"metadata/{_owner_tag('owner')}"):
            remove(owner)
    if cloud_init_seed is not None and ownership is not None:
        _SeedDigest().write(root, cloud_init_seed.digest)
    _put_back(ensure(root, "devices"), aside)
    edits.apply(root, spec.xml)  # the escape hatch: only the entries not satisfied yet
    return serialize(root)


_CHIPSET_CONTROLLERS = ("pci", "ide", "sata", "usb")


def _new_chipset(root: Element) -> None:
    """A machine changed between i440fx (pc) and q35: the chipset's controllers and
    every device address belong to the old chipset, so they go (libvirt gives the new
    chipset's). Only for a declared machine change, which the plan shows."""
    devices = root.find("devices")
    if devices is None:
        return
    for device in list(devices):
        if device.tag == "controller" and device.get("type") in _CHIPSET_CONTROLLERS:
            remove(device)
            continue
        for address in device.findall("address"):
            remove(address)


def switch_sources(
    spec: VirtualMachineSpec,
    current: str | Element,
    volume_paths: Mapping[tuple[str, str], str],
    volume_pools: Mapping[str, str],
    real_paths: Mapping[str, str] | None = None,
) -> tuple[Element, tuple[tuple[str, str, str], ...]]:
    """Disks are one image whatever names it: ``current`` (a domain's XML, not
    changed) with each managed disk whose image a declared disk names another way (a
    file path where the manifest names the volume at that path, or the other way
    round) relabelled as the manifest names it, so that the disk keeps its element
    (target, address, boot order) and is never detached and attached again; and per
    such disk (its key as the manifest names it, what the domain has, what the
    manifest says), for the plan to show as one change of that disk.

    ``volume_paths``: (pool, volume) -> the volume's file path, as observed;
    ``volume_pools``: a declared volume's pool. A volume not observed yet resolves to
    nothing (a new image). ``real_paths``: plain path -> the real file, symlinks
    resolved (read by the caller: this module does no I/O); images are compared by
    it, so a file named through a symlinked folder is the image it resolves to."""
    root = parse(current)
    root = ET.fromstring(ET.tostring(root))  # never change the caller's tree
    real = real_paths or {}

    def declared_path(disk: Disk) -> str | None:
        if disk.volume is None:
            return None if disk.file is None else real_image(disk.file)
        pool = volume_pools.get(disk.volume)
        found = None if pool is None else volume_paths.get((pool, disk.volume))
        return None if found is None else real_image(found)

    def real_image(path: str) -> str:
        plain = plain_path(path)
        return real.get(plain, plain)

    wanted = {p: d for d in spec.disks if (p := declared_path(d)) is not None}
    keys = {disk_key(d) for d in spec.disks}
    switched: list[tuple[str, str, str]] = []
    for element in root.findall("devices/disk"):
        if not DISKS.managed(element):
            continue
        source = element.find("source")
        if source is None or DISKS.key.read(element) in keys:
            continue
        if element.get("type") == "volume":
            found = volume_paths.get((source.get("pool") or "", source.get("volume") or ""))
            had = f"volume {source.get('volume')}"
        else:
            found, had = source.get("file"), f"file {source.get('file')}"
        disk = None if found is None else wanted.get(real_image(found))
        if disk is None:
            continue
        for name in ("file", "pool", "volume"):
            source.attrib.pop(name, "")
        if disk.volume is not None:
            element.set("type", "volume")
            source.set("pool", volume_pools.get(disk.volume, ""))
            source.set("volume", disk.volume)
            now = f"volume {disk.volume}"
        else:
            element.set("type", "file")
            source.set("file", str(disk.file))
            now = f"file {disk.file}"
        switched.append((disk_key(disk), had, now))
    return root, tuple(switched)


def disk_images(
    current: str | Element, volume_paths: Mapping[tuple[str, str], str]
) -> tuple[str, ...]:
    """The image path of every ``<disk device='disk'>`` of ``current`` (a domain's XML),
    managed or not: a file's path, a volume's observed path, a block device's node;
    a volume not observed, or a network disk, names none (formatdomain.html#hard-drives-
    floppy-disks-cdroms)."""
    found: list[str] = []
    for element in parse(current).findall("devices/disk"):
        source = element.find("source")
        if element.get("device", "disk") != "disk" or source is None:
            continue
        if element.get("type") == "volume":
            path = volume_paths.get((source.get("pool") or "", source.get("volume") or ""))
        else:
            path = source.get("file") or source.get("dev")
        if path:
            found.append(path)
    return tuple(found)


def settle_targets(
    spec: VirtualMachineSpec, current: str | Element, *, reuse_freed: bool = False
) -> VirtualMachineSpec:
    """``spec`` with each disk whose target the manifest does not declare at the target
    the existing domain (``current``, its persistent XML) gives that disk's source, so
    a target once assigned is kept; a disk new to the domain, or whose bus no longer
    fits its target, gets the first name for its bus that no disk or CD-ROM of the
    domain has (its own, the manifest's, and the ones the manifest does not manage).

    ``reuse_freed`` (the domain is not running): a managed disk the manifest no longer
    lists frees its target, and the disks new to the domain take the freed targets
    that fit their bus first, in order (an image replaced in place keeps the guest's
    name for it: ``sda`` stays ``sda``). A running domain holds a removed disk's name
    until its guest lets the disk go, so a new disk there takes an unused name."""
    root = parse(current)
    used: set[str] = set()
    have: dict[object, str] = {}
    declared = {disk_key(d) for d in spec.disks}
    freed: list[str] = []
    for element in root.findall("devices/disk"):
        target = element.find("target")
        dev = None if target is None else target.get("dev")
        if not dev:
            continue
        used.add(str(dev))
        if disks_of(spec).managed(element):
            key = DISKS.key.read(element)
            if key is not None:
                have.setdefault(key, str(dev))
                if reuse_freed and key not in declared:
                    freed.append(str(dev))
    used.update(d.target for d in spec.disks if d.target_declared)
    used.update(c.target for c in spec.cdroms)
    if spec.cloud_init is not None:
        used.add(spec.cloud_init.target)
    settled: dict[int, str] = {}
    for i, disk in enumerate(spec.disks):
        now = have.get(disk_key(disk))
        if not disk.target_declared and now is not None and target_fits(now, disk.bus):
            settled[i] = now
    taken = used | set(settled.values())
    reusable = [t for t in freed if t not in set(settled.values())
                and t not in {d.target for d in spec.disks if d.target_declared}]
    for i, disk in enumerate(spec.disks):
        if disk.target_declared or i in settled:
            continue
        again = next((t for t in reusable if target_fits(t, disk.bus)), None)
        if again is not None:
            reusable.remove(again)
            settled[i] = again
            continue
        free = next((t for t in target_names(disk.bus) if t not in taken), disk.target)
        settled[i] = free
        taken.add(free)
    if all(spec.disks[i].target == t for i, t in settled.items()):
        return spec
    disks = tuple(
        dataclasses.replace(d, target=settled[i]) if i in settled else d
        for i, d in enumerate(spec.disks)
    )
    return dataclasses.replace(spec, disks=disks)


# PCIe root ports of a q35 domain: as many as virt-install gives (14), and always some
# beyond the devices declared. A q35 device hot-plugs only into a free root port, and
# libvirt adds just enough ports for the devices a definition has.
Q35_ROOT_PORTS = 14
Q35_SPARE_ROOT_PORTS = 4
_BUILTIN_PCIE_DEVICES = 4  # USB controller, balloon, and room for what libvirt adds


def pcie_root_ports(spec: VirtualMachineSpec) -> int:
    """How many ``pcie-root-port`` controllers a q35 domain is defined with (0 for pc)."""
    if not is_q35(spec.machine):
        return 0
    scsi = any(d.bus == "scsi" for d in spec.disks) or any(c.bus == "scsi" for c in spec.cdroms)
    used = (sum(1 for d in spec.disks if d.bus == "virtio") + len(spec.interfaces)
            + int(scsi) + _BUILTIN_PCIE_DEVICES)  # fmt: skip
    # shares and PCI host devices take a port each (domain_storage.py)
    used += len(spec.filesystems or ()) + sum(1 for h in spec.hostdevs or () if h.type == "pci")
    return max(Q35_ROOT_PORTS, used + Q35_SPARE_ROOT_PORTS)


def project(
    spec: VirtualMachineSpec,
    *,
    volume_pools: Mapping[str, str] | None = None,
    volume_formats: Mapping[str, str] | None = None,
    graphics_password: str | None = None,
    machine_aliases: Mapping[str, str] | None = None,
    cloud_init_seed: CloudInitSeed | None = None,
) -> Projection:
    """The desired fields, keyed like ``observe`` keys them (same keywords as ``render``)."""
    desired = _desired(spec, machine_aliases, graphics_password, cloud_init_seed)
    out = project_fields(FIELDS, desired)
    out.update(domain_tuning.project(spec))
    out.update(DISKS.project(_disk_views(spec, volume_pools or {}, volume_formats or {})))
    out.update(CDROMS.project(_cdroms(desired)))
    out.update(INTERFACES.project(spec.interfaces))
    out.update(FILESYSTEMS.project(spec.filesystems or ()))
    out.update(HOSTDEVS.project(spec.hostdevs or ()))
    out.update(edits.project(spec.xml))
    return out


def observe_edits(xml: str | Element, spec: VirtualMachineSpec) -> Projection:
    """What a domain's XML has of each of ``spec``'s ``xml`` entries, keyed as ``project``
    keys them (``observe`` alone cannot: the entries are the manifest's)."""
    return edits.observe(parse(xml), spec.xml) if spec.xml else {}


def live_unreadable_edits(spec: VirtualMachineSpec) -> frozenset[str]:
    """The projection keys of ``spec``'s ``xml`` entries a running domain cannot tell, as
    ``LIVE_INCOMPARABLE`` for the typed fields: those on the guest ``<cpu>`` (a path under
    ``./cpu``, or a ``<cpu>`` added whole), since the running definition holds libvirt's
    expansion of it (``check='full'``, the model's features), never the definition's."""
    out = set()
    for i, edit in enumerate(spec.xml):
        path = edit.xpath.rstrip("/")
        whole = edit.add is not None and path == "." and edit.add.lstrip().startswith("<cpu")
        if whole or path == "./cpu" or path.startswith(("./cpu/", "./cpu[")):
            out.add(edits.edit_key(i, edit))
    return frozenset(out)


def edit_refusal(spec: VirtualMachineSpec, base: str | Element) -> tuple[int, str] | None:
    """Why an ``xml`` entry of ``spec`` cannot be applied to ``base`` (the definition
    the entries apply to: the current one, or the typed render of a new one), as
    (its index, why), or None (``edits.refusal`` with this module's ``observe``): an
    entry that leaves a typed field changed is refused naming it; the typed fields win.
    (Applied in order: a loader added after the firmware attribute is deleted is still
    UEFI.)"""
    if not spec.xml:
        return None
    # direct NICs, block disks, shares and host devices too: an entry adding one is a
    # typed field's (domain_nics, domain_storage), declared or not
    return edits.refusal(spec.xml, parse(base),
                         lambda root: observe(_with_macs(root), direct=True,
                                              storage=True))  # fmt: skip


def _with_macs(root: Element) -> Element:
    """``root`` as libvirt defines it, as far as NICs go: a NIC without a ``<mac>`` gets
    one (a placeholder here), so the typed ``interfaces`` (keyed by MAC) see a NIC an
    entry adds without one, as they will once libvirt has given it its MAC."""
    bare = [i for i in root.iterfind("devices/interface") if i.find("mac") is None]
    if not bare:
        return root
    root = copy.deepcopy(root)
    for n, nic in enumerate(i for i in root.iterfind("devices/interface")
                            if i.find("mac") is None):  # fmt: skip
        ET.SubElement(nic, "mac", {"address": f"00:00:00:00:{n // 256:02x}:{n % 256:02x}"})
    return root


def edits_invalid(composed: str | Element, spec: VirtualMachineSpec,
                  base: str | Element | None = None) -> tuple[int, str] | None:  # fmt: skip
    """Whether the composed definition (typed fields and ``xml`` entries) is invalid
    against libvirt's domain schema (``edits.invalid``), as (the index of the first
    entry that makes it so, the schema's message), or None."""
    if not spec.xml:
        return None
    return edits.invalid(parse(composed), spec.xml, None if base is None else parse(base),
                         edits.LIBVIRT_DOMAIN_RNG)  # fmt: skip


def device_xml(xml: str, section: str, key: str) -> str | None:
    """One device of a domain XML, for hot-plug calls: ``section`` is disks, cdroms or
    interfaces, ``key`` its identity as in the projection (image, target, MAC)."""
    tables: dict[str, Device[Any]] = {"disks": WITH_BLOCK_DISKS, "cdroms": CDROMS,
                                      "interfaces": INTERFACES, "filesystems": FILESYSTEMS,
                                      "hostdevs": HOSTDEVS}  # fmt: skip
    element = tables[section].element(parse(xml), key)
    if element is None:
        return None
    alone = ET.fromstring(ET.tostring(element, with_tail=False))
    ET.cleanup_namespaces(alone)  # not the document's other namespaces (libosinfo:...)
    return serialize(alone).strip()


def observe(xml: str | Element, *, direct: bool = False, storage: bool = False) -> Projection:
    """The declared fields read from a domain's XML (inactive or live); devices a
    manifest cannot hold (``set_aside``) are not seen. Direct (macvtap) NICs are seen
    only with ``direct``: for a manifest that declares one (``interfaces_for``), and
    for export; a manifest that declares none keeps them as they are. Block disks,
    shares and host devices only with ``storage`` (export; a plan adds those its
    manifest manages: ``declared_storage``)."""
    root = parse(xml)
    if set_aside(root):
        root = ET.fromstring(ET.tostring(root))  # never change the caller's tree
        for element in set_aside(root):
            remove(element)
    out = observe_fields(root, FIELDS)
    out.update(domain_tuning.observe(root))
    out.update((WITH_BLOCK_DISKS if storage else DISKS).observe(root))  # in document order
    out.update(CDROMS.observe(root))
    out.update((INTERFACES if direct else _INTERFACES_NOT_DIRECT).observe(root))
    if storage:
        out.update(FILESYSTEMS.observe(root))
        out.update(HOSTDEVS.observe(root))
    return out
