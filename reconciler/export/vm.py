"""vm"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from typing import Any

from reconciler.export.hatch import entries
from reconciler.export.kept import _MANAGED_DISK_TYPES, _REMOVES, kept_in_definition
from reconciler.export.notes import (
    _IPV4,
    _NAME,
    Context,
    Exported,
    _build,
    _check_name,
    _compare,
    _entries,
    _Notes,
    _tuple,
    _unexportable,
    document,
)
from reconciler.model import (
    CPU_HYPERVISOR_DEFAULT,
    VIDEO_VRAM_KIB,
    CpuSpec,
    Kind,
    VirtualMachineSpec,
    clock_parts,
    cpu_manifest,
    seed_volume_name,
)
from reconciler.report import show_value
from reconciler.snapshot import DomainRecord
from reconciler.tuning import from_manifest as tuning_from_manifest
from reconciler.tuning import manifest as tuning_manifest
from reconciler.units import format_duration, format_size, parse_size
from reconciler.xml import domain as domain_xml
from reconciler.xml import domain_nics, domain_tuning
from reconciler.xml._fields import Element, Projection

_KEYMAP = re.compile(r"^[a-z]{2}(-[a-z]{2,})?$")


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


_FEATURE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


_DISK_SERIAL = re.compile(r"^[A-Za-z0-9_.+-]{1,36}$")


_BRIDGE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


# the model's default (a slots dataclass: read from its fields)
_DEFAULT_SHUTDOWN_TIMEOUT = next(
    f.default for f in dataclasses.fields(VirtualMachineSpec) if f.name == "shutdown_timeout")
_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}


_TARGET = re.compile(r"^(vd|sd|hd)[a-z]{1,2}$")


def vm_spec(
    projection: Projection, *, active: bool, autostart: bool, name: str,
    notes: _Notes | None = None, cpu: CpuSpec | None = None, config: Element | None = None,
    shutdown_timeout: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A VirtualMachine spec from ``domain_xml.observe`` of the persistent definition.

    Values the schema cannot hold are not exported, with a note; whatever else the
    manifest cannot say is found by comparing projections afterwards. ``cpu``: the
    definition's ``<cpu>`` (``domain_xml.read_cpu``); without it only a CPU mode or
    model name is taken from the projection. ``config``: the parsed definition, to
    tell the CD-ROMs the manifest manages (image files, volumes) from host drives.
    Devices the manifest does not manage (block and network disks, NICs other than
    network and bridge ones) are not exported and have no note: ``export_vm`` lists
    them as kept. ``shutdown_timeout``: seconds, from the inventory record of a VM
    the tool manages (libvirt's XML has no such field); written when not the default.
    """
    notes = notes if notes is not None else _Notes()
    p = projection
    spec: dict[str, Any] = {}
    # each as its field declaration writes it back (Field.exported: left out at its default)
    fields = domain_xml.FIELDS_BY_PATH
    if (kind := fields["type"].exported(p.get("type"))) is not None:
        spec["type"] = kind
    spec["memory"] = fields["memory"].exported(p.get("memory"))
    if p.get("maxMemory") != p.get("memory"):
        spec["maxMemory"] = fields["maxMemory"].exported(p.get("maxMemory"))
    spec["vcpus"] = p.get("vcpus")
    if p.get("maxVcpus") != p.get("vcpus"):
        spec["maxVcpus"] = p.get("maxVcpus")
    _put(spec, "machine", p.get("machine"), _MODEL_NAME.match, notes)
    if p.get("firmware") == "uefi":
        spec["firmware"] = _firmware(p)
    if cpu is None and p.get("cpu") is None:
        if p.get("type") == "kvm":  # type qemu has no <cpu> by default
            spec["cpu"] = CPU_HYPERVISOR_DEFAULT
    elif cpu is not None and (cpu.model is None or _MODEL_NAME.match(cpu.model)) and all(
        _FEATURE_NAME.match(name) for name, _ in cpu.features
    ):
        spec["cpu"] = cpu_manifest(cpu)
    else:
        _put(spec, "cpu", p.get("cpu"), _MODEL_NAME.match, notes)
    clock = _clock(p.get("clock"))
    if clock is not None:
        spec["clock"] = clock
    for key in ("kernel", "initrd", "cmdline"):
        if (value := fields[key].exported(p.get(key))) is not None:
            spec[key] = value
    disks = _disks(p, notes)
    if disks:
        spec["disks"] = disks
    cdroms = _cdroms(p, name, notes, config)
    if cdroms:
        spec["cdroms"] = cdroms
    _storage_devices(spec, p, notes)
    # device classes as libvirt has them: a host CD-ROM drive or no NIC at all is
    # still the domain's boot order (the firmware skips a class with no device)
    boot = [dev for dev in _tuple(p.get("boot")) if dev in ("cdrom", "disk", "network")]
    interfaces = _interfaces(p, "network" in boot, notes)
    if interfaces:
        spec["interfaces"] = interfaces
    if boot and boot != ["disk"]:
        spec["boot"] = boot
    elif p.get("boot") == () and p.get("kernel") is None:
        spec["boot"] = []  # the devices carry their own <boot order>
    graphics = _graphics(p, notes)
    if graphics is not None:
        spec["graphics"] = graphics
    inputs = [kind for kind in _tuple(p.get("inputs")) if kind in ("tablet", "mouse", "keyboard")]
    if inputs:
        spec["inputs"] = inputs
    serial = p.get("serial")
    if serial == "file" and p.get("serial.file") is not None:
        spec["serial"] = {"file": p["serial.file"]}
    elif serial == "none":
        spec["serial"] = "none"
    elif serial != "pty":
        notes.add("serial", f"a {serial} serial port cannot be expressed (pty, none or a file)")
    _vm_devices(spec, p, notes)
    if config is not None:
        spec.update(_tuning(config, spec))
    if shutdown_timeout is not None and shutdown_timeout != _DEFAULT_SHUTDOWN_TIMEOUT:
        spec["shutdownTimeout"] = format_duration(shutdown_timeout)
    spec["state"] = "running" if active else "stopped"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


def _firmware(p: Projection) -> str | dict[str, Any]:
    """The manifest's ``firmware`` of a UEFI domain: ``uefi``, or a mapping with what the
    definition says of secure boot, its keys, a loader and NVRAM template chosen by path
    (formatdomain "Operating system booting")."""
    out: dict[str, Any] = {"type": "uefi"}
    secure, keys = p.get("firmware.secureBoot"), p.get("firmware.enrolledKeys")
    loader, template = p.get("firmware.loader"), p.get("firmware.nvramTemplate")
    if secure is not None:
        out["secureBoot"] = secure
    if loader is not None:
        out["loader"] = loader
        if template is not None:
            out["nvramTemplate"] = template
    elif keys is not None and (secure or not keys):  # (keys without secure boot: no)
        out["enrolledKeys"] = keys
    if secure is False and not keys and loader is None:
        return "uefi"  # what firmware: uefi renders: secure-boot off, plain OVMF
    return out if len(out) > 1 else "uefi"


# what the schema admits of each device field (export notes the rest; a redefine keeps it)
_DEVICE_VALUES: dict[str, dict[str, tuple[object, ...]]] = {
    "rng": {"model": ("virtio",), "backend": ("/dev/urandom", "/dev/random", "/dev/hwrng")},
    "watchdog": {"model": ("i6300esb", "ib700"),
                 "action": ("reset", "shutdown", "poweroff", "pause", "none", "dump",
                            "inject-nmi")},
    "tpm": {"model": ("tpm-crb", "tpm-tis"), "version": ("2.0", "1.2")},
    "video": {"model": ("virtio", "vga", "qxl", "bochs", "ramfb", "cirrus", "none")},
    "console": {"type": ("pty",), "target": ("virtio",)},
}  # fmt: skip


def _vm_devices(spec: dict[str, Any], p: Projection, notes: _Notes) -> None:
    """The devices managed only when named (xml/domain_devices.py) as the definition has
    them: each a manifest mapping (the projection's JSON), written when the domain has
    one the schema can say; one it cannot (an egd rng, a virtio video with vram) is
    left out, so a redefine keeps it, and ``kept_in_definition`` lists it as kept."""
    fields = domain_xml.FIELDS_BY_PATH
    if p.get("guestAgent") is True:
        spec["guestAgent"] = True
    log = fields["serial.log"].exported(p.get("serial.log"))
    if isinstance(log, dict) and spec.get("serial", "pty") != "none":
        serial = spec.get("serial", "pty")
        mapping = dict(serial) if isinstance(serial, dict) else {"type": serial}
        mapping["log"] = {"file": log["file"], **({"append": True} if log["append"] else {})}
        spec["serial"] = mapping
    for key, allowed in _DEVICE_VALUES.items():
        value = fields[key].exported(p.get(key))
        if not isinstance(value, dict):
            continue
        bad = [k for k, ok in allowed.items() if value.get(k) not in ok]
        if key == "tpm" and value == {"model": "tpm-crb", "version": "1.2"}:
            bad.append("version")
        if key == "video" and "vram" in value and value["model"] not in VIDEO_VRAM_KIB:
            bad.append("vram")  # (libvirt keeps a vram qemu ignores on virtio)
        if bad:
            continue  # left out: the manifest keeps it, and export lists it as kept
        if key == "video":
            if value.get("heads") == 1:
                del value["heads"]
            vram = value.get("vram")
            default = VIDEO_VRAM_KIB.get(str(value["model"]))
            if vram is not None and default is not None and vram == format_size(default * 1024):
                del value["vram"]
        spec[key] = value


def _tuning(config: Element, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``memoryBacking``, ``cputune``, ``numa`` and ``iothreads`` as the domain has them
    (``domain_tuning.read``: only the sections it has something in). A section the model
    would refuse (NUMA cells that do not add up to maxMemory, a pin of a vCPU the VM
    lacks) is left out: a manifest without it keeps it as the domain has it, and the
    comparison of definitions lists it as kept."""
    max_vcpus = int(spec.get("maxVcpus", spec.get("vcpus") or 1))
    max_memory = parse_size(str(spec.get("maxMemory", spec.get("memory"))))
    out: dict[str, Any] = {}
    for key, value in tuning_manifest(domain_tuning.read(config)).items():
        _, problems = tuning_from_manifest({key: value}, max_vcpus, max_memory)
        if not problems:
            out[key] = value
    ids = [t.get("id") for t in config.findall("iothreadids/iothread")]
    if ids and ids != [str(i) for i in range(1, len(ids) + 1)]:
        # I/O thread ids that are not 1 .. n (<iothreadids>): iothreads: n would not
        # hold them (a disk's iothread 3 of ids 1 and 3); left out, they are kept
        out.pop("iothreads", None)
    return out


def _clock(text: object) -> str | dict[str, Any] | None:
    """The manifest's ``clock`` for a canonical clock text (``model.clock_text``); None
    for ``utc``, the default."""
    if not isinstance(text, str) or text == "utc":
        return None
    offset, attrs = clock_parts(text)
    if not attrs:
        return offset
    out: dict[str, Any] = {"offset": offset}
    for key, value in attrs.items():
        out[key] = int(value) if key in ("start", "adjustment") and value != "reset" else value
    return out


def _put(spec: dict[str, Any], key: str, value: object, ok: Any, notes: _Notes) -> None:
    if value is None:
        return
    if isinstance(value, str) and ok(value):
        spec[key] = value
    else:
        notes.add(key, f"{value!r} cannot be expressed; not exported")


def _on_bus(target: str, bus: object, buses: Collection[str]) -> bool:
    """Whether a manifest can hold ``target`` on ``bus`` (one of ``buses``): the target's
    name must be one the model would give on that bus (vdX, sdX, hdX)."""
    return (bus in buses and _TARGET.match(target) is not None
            and target.startswith(_TARGET_PREFIX[str(bus)]))  # fmt: skip


def _disks(p: Projection, notes: _Notes) -> list[dict[str, Any]]:
    out = []
    for key in _entries(p, "disks"):  # keyed by source; notes name the target
        target = str(p.get(f"disks[{key}].target"))
        at = f"disks[{target}]"
        bus = p.get(f"disks[{key}].bus")
        volume, file = p.get(f"disks[{key}].volume"), p.get(f"disks[{key}].file")
        device = p.get(f"disks[{key}].device")
        if volume is None and file is None and device is None:
            notes.silence(at)  # a network disk: not managed, kept as defined
            continue
        if not _on_bus(target, bus, _TARGET_PREFIX):
            notes.add(at, f"a disk on bus {bus} cannot be expressed (virtio vdX, sata/scsi "
                      f"sdX, ide hdX); {_REMOVES} disks")  # fmt: skip
            continue
        if volume is not None and not _NAME.match(str(volume)):
            notes.add(at, f"volume {volume!r} has a name a manifest cannot hold; "
                      f"{_REMOVES} disks")  # fmt: skip
            continue
        disk: dict[str, Any] = ({"volume": volume} if volume is not None else {"file": file}
                                if file is not None else {"device": device})  # fmt: skip
        disk["target"] = target
        if bus != "virtio":
            disk["bus"] = bus
        fmt = p.get(f"disks[{key}].format")
        if volume is None:
            if fmt == "raw" and device is not None:
                pass  # a block disk's default
            elif fmt in ("raw", "qcow2"):
                disk["format"] = fmt
            else:
                notes.add(f"{at}.format", f"image format {show_value('', fmt)} cannot be "
                          "expressed (raw or qcow2)")  # fmt: skip
        _opt(disk, "cache", p.get(f"disks[{key}].cache"))
        if p.get(f"disks[{key}].readonly"):
            disk["readonly"] = True
        serial = p.get(f"disks[{key}].serial")
        if isinstance(serial, str) and _DISK_SERIAL.match(serial):
            disk["serial"] = serial
        _disk_options(disk, p, key, at, notes)
        out.append(disk)
    return out


def _disk_type(config: Element, target: str) -> str | None:
    """``<disk type>`` of the disk or CD-ROM at ``target`` in a parsed definition."""
    for disk in config.findall("devices/disk"):
        element = disk.find("target")
        if element is not None and element.get("dev") == target:
            return disk.get("type")
    return None


def _cdroms(p: Projection, name: str, notes: _Notes,
            config: Element | None = None) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for target in _entries(p, "cdroms"):
        at = f"cdroms[{target}]"
        bus = p.get(f"{at}.bus")
        if p.get(f"{at}.volume") == seed_volume_name(name):
            notes.add("cloudInit", "the VM has a cloud-init seed; its user-data, meta-data and "
                      "network-config cannot be read back from libvirt; not exported")  # fmt: skip
            notes.add(at, "the cloud-init seed's drive; not exported, with cloudInit")
            continue
        if config is not None and _disk_type(config, target) not in _MANAGED_DISK_TYPES:
            notes.silence(at)  # a host CD-ROM drive (block): not managed, kept as defined
            continue
        if not _on_bus(target, bus, ("sata", "scsi", "ide")):
            notes.add(at, f"a CD-ROM on bus {bus} cannot be expressed (sata, scsi, ide); "
                      f"{_REMOVES} CD-ROMs")  # fmt: skip
            continue
        cdrom: dict[str, Any] = {}
        if p.get(f"{at}.file") is not None:
            cdrom["file"] = p[f"{at}.file"]
        cdrom["target"] = target
        cdrom["bus"] = bus
        out.append(cdrom)
    return out


def _interfaces(p: Projection, boot_network: bool, notes: _Notes) -> list[dict[str, Any]]:
    out = []
    for mac in _entries(p, "interfaces"):
        at = f"interfaces[{mac}]"
        network, bridge = p.get(f"{at}.network"), p.get(f"{at}.bridge")
        nic: dict[str, Any]
        if network is not None and _NAME.match(str(network)):
            nic = {"network": network}
        elif bridge is not None and _BRIDGE.match(str(bridge)):
            nic = {"bridge": bridge}
        elif (direct := p.get(f"{at}.direct.dev")) is not None and _BRIDGE.match(str(direct)):
            nic = {"direct": {"dev": direct, "mode": p.get(f"{at}.direct.mode") or "vepa"}}
        elif network is None and bridge is None and direct is None:
            notes.silence(at)  # user, hostdev...: not managed, kept as defined
            continue
        else:
            what = "network" if network is not None else "bridge" if bridge is not None \
                else "host device"
            notes.add(at, f"the name of its {what} "
                      f"cannot be expressed; {_REMOVES} interfaces")  # fmt: skip
            continue
        nic["mac"] = mac
        model = p.get(f"{at}.model")
        if model in ("e1000", "e1000e", "rtl8139"):
            nic["model"] = model
        elif model != "virtio":
            notes.add(f"{at}.model", f"NIC model {show_value('', model)} cannot be expressed "
                      "(virtio, e1000, e1000e, rtl8139)")  # fmt: skip
        rom = p.get(f"{at}.bootRom")
        if rom is None and not boot_network:
            nic["bootRom"] = True  # libvirt's default: the option ROM is loaded
        elif rom is False and boot_network:
            nic["bootRom"] = False
        nic.update(domain_nics.exported(p, at))
        out.append(nic)
    return out


def _graphics(p: Projection, notes: _Notes) -> dict[str, Any] | None:
    kind = p.get("graphics.type")
    if kind is None:
        return None
    if kind not in domain_xml.MANAGED_GRAPHICS_TYPES:
        notes.add("graphics", f"{kind} graphics cannot be expressed (vnc or spice); "
                  f"{_REMOVES} displays")  # fmt: skip
        return None
    graphics: dict[str, Any] = {"type": kind}
    port = p.get("graphics.port")
    if isinstance(port, int) and 5900 <= port <= 65535:
        graphics["port"] = port
    listen = p.get("graphics.listen")
    if listen is None:
        graphics["listen"] = None  # no address: the host's qemu.conf default
    elif isinstance(listen, str) and _IPV4.match(listen):
        graphics["listen"] = listen
    _put(graphics, "keymap", p.get("graphics.keymap"), _KEYMAP.match, notes)
    if p.get("graphics.password") is not None:
        notes.add("graphics.password", "a display password is set; it is not exported: "
                  "write it to a root-only file and set graphics.passwordFile")  # fmt: skip
    return graphics


def _opt(target: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        target[key] = value


def export_vm(record: DomainRecord, ctx: Context) -> Exported:
    notes = _Notes()
    kind = Kind.VIRTUAL_MACHINE
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    config = record.config_root
    # direct NICs, block disks, shares and host devices too
    observed = domain_xml.observe(record.config_root, direct=True, storage=True)
    if observed.get("type") not in ("kvm", "qemu"):
        notes.add("type", f"domain type {observed.get('type')} cannot be expressed (kvm, qemu)")
        return _unexportable(kind, record.name, notes)
    # what the tool keeps of a VM it manages outside libvirt's XML: its inventory record
    entry = ctx.observed.inventory.get(f"{kind.value}/{record.name}") or {}
    timeout = entry.get("shutdownTimeout")
    spec = vm_spec(observed, active=record.active, autostart=record.autostart, name=record.name,
                   notes=notes, cpu=domain_xml.read_cpu(config), config=config,
                   shutdown_timeout=float(timeout) if isinstance(timeout, int | float)
                   and not isinstance(timeout, bool) else None)  # fmt: skip
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, VirtualMachineSpec)
    kwargs: dict[str, Any] = {
        "volume_pools": ctx.volume_pools,
        "volume_formats": ctx.volume_formats,
        "machine_aliases": ctx.observed.machine_aliases,
    }
    try:
        desired = domain_xml.project(m.spec, **kwargs)
        rendered = domain_xml.render(record.name, m.spec, uuid=record.uuid, **kwargs)
    except ValueError as exc:
        notes.add("disks", str(exc))
        return _unexportable(kind, record.name, notes)
    # tuning sections the manifest does not name are kept as they are (see _tuning);
    # compared as a plan compares: what the manifest manages (domain_xml.declared_storage)
    unnamed = domain_tuning.kept_paths(m.spec)
    observed = {**domain_xml.observe(config, direct=True),
                **domain_xml.declared_storage(m.spec, config)}
    _compare({k: v for k, v in desired.items() if k not in unnamed},
             {k: v for k, v in observed.items() if k not in unnamed}, notes)  # fmt: skip
    # whatever the typed fields cannot say goes to the escape hatch (export/hatch.py),
    # so a VM created from the manifest elsewhere gets it too; what is left stays kept
    hatch = entries(record.config_xml, rendered, m.spec, notes)
    if hatch:
        doc["spec"]["xml"] = hatch
        with_hatch = _build(kind, doc, notes)
        if with_hatch is None:
            return _unexportable(kind, record.name, notes)
        assert isinstance(with_hatch.spec, VirtualMachineSpec)
        rendered = domain_xml.render(record.name, with_hatch.spec, uuid=record.uuid, **kwargs)
    kept = kept_in_definition(record.config_xml, rendered, notes)
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))


# --- storage and host devices (xml/domain_storage.py) ------------------------------

_DISK_OPTIONS = {"discard": ("unmap", "ignore"), "detectZeroes": ("off", "on", "unmap"),
                 "io": ("native", "threads", "io_uring")}  # fmt: skip
_MOUNT_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,36}$")


def _disk_options(disk: dict[str, Any], p: Projection, key: str, at: str,
                  notes: _Notes) -> None:  # fmt: skip
    """A disk's optional fields (discard, detectZeroes, io, iothread, shareable,
    bootIndex) as the definition has them; left out at libvirt's default."""
    for name, allowed in _DISK_OPTIONS.items():
        value = p.get(f"disks[{key}].{name}")
        if value in allowed:
            disk[name] = value
        elif value is not None:
            notes.add(f"{at}.{name}", f"{name} {show_value('', value)} cannot be expressed "
                      f"({', '.join(allowed)})")  # fmt: skip
    for name in ("iothread", "bootIndex"):
        value = p.get(f"disks[{key}].{name}")
        if isinstance(value, int) and value >= 1:
            disk[name] = value
    if p.get(f"disks[{key}].shareable"):
        disk["shareable"] = True


def _storage_devices(spec: dict[str, Any], p: Projection, notes: _Notes) -> None:
    """``filesystems`` and ``hostdevs``, named only when the domain has some (an absent
    field keeps the domain's; a named one is the whole set)."""
    shares = []
    for tag in _entries(p, "filesystems"):
        at = f"filesystems[{tag}]"
        driver = p.get(f"{at}.driver")
        if driver not in ("virtiofs", "9p") or not _MOUNT_TAG.match(tag):
            what = f"driver {driver}" if driver not in ("virtiofs", "9p") else "mount tag"
            notes.add(at, f"a share with this {what} cannot be expressed (virtiofs or 9p, "
                      f"tags [A-Za-z0-9_.-]); {_REMOVES} filesystems")  # fmt: skip
            continue
        share: dict[str, Any] = {"driver": driver, "source": p.get(f"{at}.source"),
                                 "target": tag}  # fmt: skip
        if p.get(f"{at}.readonly"):
            share["readonly"] = True
        if p.get(f"{at}.accessMode") != "passthrough":
            share["accessMode"] = p.get(f"{at}.accessMode")
        shares.append(share)
    if shares:
        spec["filesystems"] = shares
    devices = []
    for key in _entries(p, "hostdevs"):
        at = f"hostdevs[{key}]"
        dev: dict[str, Any]
        if key.startswith("pci "):
            dev = {"type": "pci", "address": p.get(f"{at}.address")}
            if p.get(f"{at}.managed") is False:
                dev["managed"] = False
        elif p.get(f"{at}.vendor") is not None:
            dev = {"type": "usb", "vendor": p.get(f"{at}.vendor"),
                   "product": p.get(f"{at}.product")}  # fmt: skip
        else:
            dev = {"type": "usb", "bus": p.get(f"{at}.bus"), "device": p.get(f"{at}.device")}
        devices.append(dev)
    if devices:
        spec["hostdevs"] = devices
