"""Export: live libvirt objects -> manifest documents, so a host built by hand can be adopted.

What arrives: an ``Observed`` snapshot (observe.py, the very snapshot ``plan``
compares with) and the names to export. What leaves: one ``Exported`` per
object, holding a manifest document (``apiVersion``, ``kind``, ``metadata``,
``spec`` with ``adopt: true``) and the *notes*: every field libvirt has that
the document does not say, so the operator knows where the export is lossy.

No second XML parser: a document is built from the projections of the
per-format field tables (``reconciler.xml.*.observe``), the same flat fields
the planner compares. Two checks then find what the manifest format cannot
carry, and each becomes a note instead of being dropped silently:

* **the planner's own comparison**: the document is validated (schema and
  model, as ``validate`` does), projected with the context ``plan`` uses, and
  compared with the observed projection. Any field that differs would show in
  a plan beside the adoption; it is a note (``graphics.listen: libvirt has
  (none), the manifest gives 127.0.0.1``).
* **the XML the tool would define**: the document is rendered (what ``apply``
  defines) and every element and attribute of libvirt's definition missing
  from it, apart from what libvirt adds on its own (addresses, aliases,
  controllers, the emulator...), is a note (``devices/channel[unix]``).

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import yaml

from reconciler.diff import device_of, diff
from reconciler.errors import SourcePosition
from reconciler.model import (
    API_VERSION,
    CpuSpec,
    Kind,
    Manifest,
    NetworkSpec,
    SpecError,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    build_manifest,
    cpu_manifest,
    seed_volume_name,
)
from reconciler.report import show_value
from reconciler.schema import validate_document
from reconciler.snapshot import DomainRecord, NetworkRecord, Observed, PoolRecord, VolumeRecord
from reconciler.units import format_size
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml
from reconciler.xml._fields import Element, Projection, parse

STOCK = frozenset({(Kind.NETWORK, "default"), (Kind.STORAGE_POOL, "default")})
"""libvirt's own objects (the packaged NAT network, virt-install's image pool): left out
of ``--all`` unless asked for, since VMs may name them without a manifest anyway."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_IPV4 = re.compile(r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$")  # fmt: skip
_KEYMAP = re.compile(r"^[a-z]{2}(-[a-z]{2,})?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FEATURE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_DISK_SERIAL = re.compile(r"^[A-Za-z0-9_.+-]{1,36}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}
_TARGET = re.compile(r"^(vd|sd|hd)[a-z]{1,2}$")


@dataclass(frozen=True, slots=True)
class Note:
    """Something libvirt has that the exported manifest does not say."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class Exported:
    """One object's manifest document (None: it cannot be exported) and its notes."""

    kind: Kind
    name: str
    document: dict[str, Any] | None
    notes: tuple[Note, ...] = ()
    pool: str | None = None  # volumes: their pool

    @property
    def key(self) -> str:
        return f"{self.kind.value}/{self.name}"


class _Notes:
    """Notes of one object, one per field; a device noted as a whole covers its fields."""

    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}

    def add(self, path: str, message: str) -> None:
        if not self.covers(path):
            self._notes[path] = Note(path, message)

    def covers(self, path: str) -> bool:
        if path in self._notes:
            return True
        dev = device_of(path)
        return dev is not None and f"{dev[0]}[{dev[1]}]" in self._notes

    def __iter__(self) -> Iterator[Note]:
        return iter(self._notes.values())

    def all(self) -> tuple[Note, ...]:
        return tuple(self._notes.values())


def document(kind: Kind, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind.value, "metadata": {"name": name},
            "spec": dict(spec)}  # fmt: skip


# --- the planner's context, as plan will compute it ------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What projecting a VM or volume needs: where volumes are and their formats, as the
    planner's context computes them (live volumes, then the exported Volume manifests)."""

    observed: Observed
    volume_pools: Mapping[str, str] = field(default_factory=dict)
    volume_formats: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, observed: Observed, volumes: Iterable[Exported] = ()) -> Context:
        pools: dict[str, str] = {}
        formats: dict[str, str] = {}
        for (pool, name), record in observed.volumes.items():
            pools.setdefault(name, pool)
            fmt = volume_xml.observe(record.xml).get("format")
            if isinstance(fmt, str):
                formats.setdefault(name, fmt)
        for v in volumes:
            if v.document is not None:
                pools[v.name] = v.document["spec"]["pool"]
                formats[v.name] = v.document["spec"].get("format", "qcow2")
        return cls(observed, pools, formats)

    def volume_by_path(self, path: str) -> VolumeRecord | None:
        for record in self.observed.volumes.values():
            if record.path == path:
                return record
        return None


# --- checks shared by every kind ---------------------------------------------------


def _build(kind: Kind, doc: dict[str, Any], notes: _Notes) -> Manifest | None:
    """The document as ``validate`` loads it, or None (with a note) if it would not load."""
    problems = validate_document(kind, doc)
    if problems:
        for p in problems:
            notes.add(".".join(str(part) for part in p.path) or "spec", p.message)
        return None
    try:
        return build_manifest(doc, SourcePosition("<export>"))
    except SpecError as exc:
        for fp in exc.problems:
            notes.add(".".join(str(part) for part in fp.path) or "spec", fp.message)
        return None


def _compare(desired: Projection, actual: Projection, notes: _Notes) -> None:
    """Every field a plan would show besides the adoption becomes a note."""
    for change in diff(desired, actual):
        notes.add(
            change.path,
            f"libvirt has {show_value(change.path, change.old)}, "
            f"the manifest gives {show_value(change.path, change.new)}",
        )


def _unexportable(kind: Kind, name: str, notes: _Notes, pool: str | None = None) -> Exported:
    return Exported(kind, name, None, notes.all(), pool)


def _check_name(kind: Kind, name: str, notes: _Notes) -> bool:
    if _NAME.match(name):
        return True
    notes.add("metadata.name", f"{name!r} is not a name a manifest can hold "
              "(1-64 characters [A-Za-z0-9_.-], starting with a letter or digit)")  # fmt: skip
    return False


# --- storage pools -------------------------------------------------------------------


def pool_spec(projection: Projection, *, active: bool, autostart: bool) -> dict[str, Any]:
    """A StoragePool spec from ``pool_xml.observe``."""
    return {
        "type": projection.get("type"),
        "path": projection.get("path"),
        "state": "active" if active else "inactive",
        "autostart": autostart,
        "adopt": True,
    }


def export_pool(record: PoolRecord) -> Exported:
    notes = _Notes()
    kind = Kind.STORAGE_POOL
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    observed = pool_xml.observe(record.config_xml)
    if observed.get("type") != "dir":
        notes.add("type", f"a {observed.get('type')} pool cannot be expressed "
                  "(manifests have directory pools only)")  # fmt: skip
        return _unexportable(kind, record.name, notes)
    spec = pool_spec(observed, active=record.active, autostart=record.autostart)
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, StoragePoolSpec)
    _compare(pool_xml.project(m.spec), observed, notes)
    root = parse(record.config_xml)
    for tag in ("source/host", "source/device", "source/dir", "source/adapter"):
        if root.find(tag) is not None:
            notes.add(tag, "pool sources are not expressible; left out")
    return Exported(kind, record.name, doc, notes.all())


# --- volumes ---------------------------------------------------------------------------


def volume_spec(projection: Projection, pool: str, backing: str | None) -> dict[str, Any]:
    """A Volume spec from ``volume_xml.observe``; ``backing``: the backing volume's name."""
    spec: dict[str, Any] = {"pool": pool, "format": projection.get("format")}
    capacity = projection.get("capacity")
    spec["capacity"] = format_size(int(capacity)) if isinstance(capacity, int) else capacity
    if backing is not None:
        spec["backingVolume"] = backing
    spec["reclaimPolicy"] = "retain"
    spec["adopt"] = True
    return spec


def export_volume(record: VolumeRecord, ctx: Context) -> Exported:
    notes = _Notes()
    kind = Kind.VOLUME
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes, record.pool)
    observed = volume_xml.observe(record.xml)
    if observed.get("format") not in ("qcow2", "raw"):
        notes.add("format", f"a {observed.get('format')} volume cannot be expressed "
                  "(manifests have qcow2 and raw volumes)")  # fmt: skip
        return _unexportable(kind, record.name, notes, record.pool)
    backing_path = observed.get("backingVolume")
    backing = None
    if isinstance(backing_path, str):
        base = ctx.volume_by_path(backing_path)
        if base is None or base.pool != record.pool:
            where = "no volume" if base is None else f"volume {base.pool}/{base.name}"
            why = f"a manifest names a backing volume in the same pool ({record.pool})"
            notes.add("backingVolume", f"the backing file {backing_path} is {where}; {why}")
            return _unexportable(kind, record.name, notes, record.pool)
        backing = base.name
    doc = document(kind, record.name, volume_spec(observed, record.pool, backing))
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes, record.pool)
    assert isinstance(m.spec, VolumeSpec)
    backing_format = None if backing is None else ctx.volume_formats.get(backing)
    desired = volume_xml.project(m.spec, backing_path=str(backing_path) if backing else None,
                                 backing_format=backing_format)  # fmt: skip
    _compare(desired, observed, notes)
    return Exported(kind, record.name, doc, notes.all(), record.pool)


# --- networks ----------------------------------------------------------------------------


def _entries(projection: Projection, section: str) -> list[str]:
    """Identities of a section's devices, in the order libvirt lists them."""
    keys: list[str] = []
    for path, value in projection.items():
        dev = device_of(path)
        if dev is not None and dev[0] == section and value is not None and dev[1] not in keys:
            keys.append(dev[1])
    return keys


def network_spec(projection: Projection, *, active: bool, autostart: bool,
                 notes: _Notes | None = None) -> dict[str, Any]:  # fmt: skip
    """A Network spec from ``network_xml.observe(..., bridge_declared=True)``."""
    notes = notes if notes is not None else _Notes()
    p = projection
    spec: dict[str, Any] = {"mode": p.get("mode")}
    if p.get("bridge") is not None:
        spec["bridge"] = p["bridge"]
    for key in ("mtu", "domain"):
        if p.get(key) is not None:
            spec[key] = p[key]
    address = p.get("ipv4.address")
    if isinstance(address, str) and not _IPV4.match(address):
        notes.add("ipv4", f"the first address {address} is not IPv4; IPv6 is not expressible")
    elif address is not None:
        ipv4: dict[str, Any] = {"address": address, "prefix": p.get("ipv4.prefix")}
        if p.get("ipv4.dhcp.start") is not None:
            hosts = []
            for mac in _entries(p, "ipv4.dhcp.hosts"):
                host = {"mac": mac, "ip": p.get(f"ipv4.dhcp.hosts[{mac}].ip")}
                if p.get(f"ipv4.dhcp.hosts[{mac}].name") is not None:
                    host["name"] = p[f"ipv4.dhcp.hosts[{mac}].name"]
                hosts.append(host)
            dhcp: dict[str, Any] = {"start": p["ipv4.dhcp.start"], "end": p.get("ipv4.dhcp.end")}
            if hosts:
                dhcp["hosts"] = hosts
            ipv4["dhcp"] = dhcp
        spec["ipv4"] = ipv4
    dns = [{"ip": ip, "names": list(_tuple(p.get(f"dnsHosts[{ip}].names")))}
           for ip in _entries(p, "dnsHosts")]  # fmt: skip
    if dns:
        spec["dnsHosts"] = dns
    spec["state"] = "active" if active else "inactive"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


_NETWORK_IGNORED = (
    "uuid", "mac", "bridge@stp", "bridge@delay", "forward/nat", "forward/nat/*",
    "ip@family", "ip@netmask", "dns/host@ip",
)  # fmt: skip


def export_network(record: NetworkRecord) -> Exported:
    notes = _Notes()
    kind = Kind.NETWORK
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    observed = network_xml.observe(record.config_xml, bridge_declared=True)
    if observed.get("mode") not in ("nat", "route", "isolated", "bridge"):
        notes.add("mode", f"forward mode {observed.get('mode')} cannot be expressed "
                  "(nat, route, isolated or bridge)")  # fmt: skip
        return _unexportable(kind, record.name, notes)
    spec = network_spec(observed, active=record.active, autostart=record.autostart, notes=notes)
    doc = document(kind, record.name, spec)
    m = _build(kind, doc, notes)
    if m is None:
        return _unexportable(kind, record.name, notes)
    assert isinstance(m.spec, NetworkSpec)
    _compare(network_xml.project(m.spec), observed, notes)
    rendered = network_xml.render(record.name, m.spec)
    for path, what in structural_losses(record.config_xml, rendered, _NETWORK_IGNORED):
        notes.add(path, what)
    return Exported(kind, record.name, doc, notes.all())


# --- virtual machines ---------------------------------------------------------------------


def _size(value: object) -> str | None:
    return format_size(int(value)) if isinstance(value, int) else None


def vm_spec(
    projection: Projection, *, active: bool, autostart: bool, name: str,
    notes: _Notes | None = None, cpu: CpuSpec | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A VirtualMachine spec from ``domain_xml.observe`` of the persistent definition.

    Values the schema cannot hold are left out with a note; whatever else the
    manifest cannot say is found by comparing projections afterwards. ``cpu``: the
    definition's ``<cpu>`` (``domain_xml.read_cpu``); without it only a CPU mode or
    model name is taken from the projection.
    """
    notes = notes if notes is not None else _Notes()
    p = projection
    spec: dict[str, Any] = {}
    if p.get("type") != "kvm":
        spec["type"] = p.get("type")
    spec["memory"] = _size(p.get("memory"))
    if p.get("maxMemory") != p.get("memory"):
        spec["maxMemory"] = _size(p.get("maxMemory"))
    spec["vcpus"] = p.get("vcpus")
    if p.get("maxVcpus") != p.get("vcpus"):
        spec["maxVcpus"] = p.get("maxVcpus")
    _put(spec, "machine", p.get("machine"), _MODEL_NAME.match, notes)
    if p.get("firmware") == "uefi":
        spec["firmware"] = "uefi"
    if cpu is not None and (cpu.model is None or _MODEL_NAME.match(cpu.model)) and all(
        _FEATURE_NAME.match(name) for name, _ in cpu.features
    ):
        spec["cpu"] = cpu_manifest(cpu)
    else:
        _put(spec, "cpu", p.get("cpu"), _MODEL_NAME.match, notes)
    if p.get("clock") != "utc":
        _put(spec, "clock", p.get("clock"), ("localtime",).__contains__, notes)
    for key in ("kernel", "initrd", "cmdline"):
        if p.get(key) is not None:
            spec[key] = p[key]
    disks = _disks(p, notes)
    if disks:
        spec["disks"] = disks
    cdroms = _cdroms(p, name, notes)
    if cdroms:
        spec["cdroms"] = cdroms
    boot = [dev for dev in _tuple(p.get("boot")) if dev in ("cdrom", "disk", "network")]
    if "cdrom" in boot and not cdroms:
        boot.remove("cdrom")
    if boot and boot != ["disk"]:
        spec["boot"] = boot
    interfaces = _interfaces(p, "network" in boot, notes)
    if interfaces:
        spec["interfaces"] = interfaces
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
    spec["state"] = "running" if active else "stopped"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


def _tuple(value: object) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else ()


def _put(spec: dict[str, Any], key: str, value: object, ok: Any, notes: _Notes) -> None:
    if value is None:
        return
    if isinstance(value, str) and ok(value):
        spec[key] = value
    else:
        notes.add(key, f"{value!r} cannot be expressed; left out")


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
        if volume is None and file is None:
            notes.add(at, "only image files and pool volumes are expressible "
                      "(not block devices or network disks); left out")  # fmt: skip
            continue
        if not _on_bus(target, bus, _TARGET_PREFIX):
            notes.add(at, f"a disk on bus {bus} cannot be expressed "
                      "(virtio vdX, sata/scsi sdX, ide hdX); left out")  # fmt: skip
            continue
        if volume is not None and not _NAME.match(str(volume)):
            notes.add(at, f"volume {volume!r} has a name a manifest cannot hold; left out")
            continue
        disk: dict[str, Any] = {"volume": volume} if volume is not None else {"file": file}
        disk["target"] = target
        if bus != "virtio":
            disk["bus"] = bus
        fmt = p.get(f"disks[{key}].format")
        if file is not None:
            if fmt in ("raw", "qcow2"):
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
        out.append(disk)
    return out


def _cdroms(p: Projection, name: str, notes: _Notes) -> list[dict[str, Any]]:
    out = []
    for target in _entries(p, "cdroms"):
        at = f"cdroms[{target}]"
        bus = p.get(f"{at}.bus")
        if p.get(f"{at}.volume") == seed_volume_name(name):
            notes.add("cloudInit", "the VM has a cloud-init seed; its user-data, meta-data and "
                      "network-config cannot be read back from libvirt; left out")  # fmt: skip
            notes.add(at, "the cloud-init seed's drive; left out with cloudInit")
            continue
        if not _on_bus(target, bus, ("sata", "scsi", "ide")):
            notes.add(at, f"a CD-ROM on bus {bus} cannot be expressed (sata, scsi, ide); left out")
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
        else:
            notes.add(at, "only interfaces on a libvirt network or a host bridge are "
                      "expressible; left out")  # fmt: skip
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
        out.append(nic)
    return out


def _graphics(p: Projection, notes: _Notes) -> dict[str, Any] | None:
    kind = p.get("graphics.type")
    if kind is None:
        return None
    if kind not in ("vnc", "spice"):
        notes.add("graphics", f"{kind} graphics cannot be expressed (vnc or spice); left out")
        return None
    graphics: dict[str, Any] = {"type": kind}
    port = p.get("graphics.port")
    if isinstance(port, int) and 5900 <= port <= 65535:
        graphics["port"] = port
    listen = p.get("graphics.listen")
    if isinstance(listen, str) and _IPV4.match(listen):
        graphics["listen"] = listen
    _put(graphics, "keymap", p.get("graphics.keymap"), _KEYMAP.match, notes)
    if p.get("graphics.password") is not None:
        notes.add("graphics.password", "a display password is set; it is not exported: "
                  "write it to a root-only file and set graphics.passwordFile")  # fmt: skip
    return graphics


def _opt(target: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        target[key] = value


# What libvirt adds to any definition on its own, and what the tool's own rendering
# spells differently with the same meaning: never a loss. Bare paths (tags only).
_DOMAIN_IGNORED = (
    "uuid", "metadata", "resource", "resource/*", "seclabel", "seclabel/*", "*/address", "*/alias",
    "vcpu@placement", "memory@unit", "currentMemory@unit",
    "cpu@check", "cpu@migratable", "cpu@match", "cpu/model@fallback",
    "os/loader", "os/loader@*", "os/nvram", "os/nvram@*",
    "devices/emulator", "devices/controller", "devices/controller/*", "devices/controller@*",
    "devices/console", "devices/console/*", "devices/console@*",
    "devices/audio", "devices/audio@*", "devices/memballoon/*",
    "devices/serial/target@type", "devices/serial/target/model", "devices/serial/target@port",
    "devices/graphics@listen", "devices/graphics@port", "devices/graphics@autoport",
    "devices/graphics@passwd", "devices/disk/source@index", "devices/interface/target",
    "devices/interface/source@portid", "devices/interface/target@*",
)  # fmt: skip
_DEFAULT_VIDEO = ("cirrus", "vga")


# A redefinition patches the domain's definition (domain_xml.patch): what a manifest
# cannot say stays in this domain; a VM created from the manifest elsewhere lacks it.
_KEPT = "; kept by a redefine of this domain, left out of a VM created from the manifest"


def _vm_losses(config_xml: str, rendered: str, notes: _Notes) -> None:
    root = parse(config_xml)
    for path, what in structural_losses(config_xml, rendered, _DOMAIN_IGNORED):
        if path.startswith("devices/video") or (path.startswith("cpu") and notes.covers("cpu")):
            continue  # video: below; a CPU the manifest cannot say is noted as 'cpu' already
        device = re.match(r"^devices/(disk|interface)\[([^\]#]+)\]", path)
        if device is not None:
            sections = ("disks", "cdroms") if device.group(1) == "disk" else ("interfaces",)
            if any(notes.covers(f"{section}[{device.group(2)}]") for section in sections):
                continue  # noted by its manifest name already
        notes.add(path, what.replace("; left out", _KEPT))
    for i, video in enumerate(root.findall("devices/video")):
        model = video.find("model")
        kind = None if model is None else model.get("type")
        if i > 0 or kind not in (*_DEFAULT_VIDEO, None):
            notes.add(f"devices/video[{kind}]", "video model is not expressible; kept by a "
                      "redefine of this domain, libvirt's default when a VM is created from "
                      "the manifest")  # fmt: skip
    loader = root.find("os/loader")
    if loader is not None and (loader.get("secure") == "yes" or (
            (loader.text or "").strip() and root.find("os[@firmware='efi']") is None)):  # fmt: skip
        notes.add("os/loader", f"firmware {(loader.text or '').strip() or 'with secure boot'} "
                  "is not expressible; firmware: uefi is OVMF as libvirt selects it, "
                  "without secure boot")  # fmt: skip
    for element in root.findall("metadata/*"):
        if not element.tag.startswith("{" + domain_xml.OWNER_NAMESPACE + "}"):
            notes.add("metadata", f"foreign metadata {element.tag!s}{_KEPT}")


def export_vm(record: DomainRecord, ctx: Context) -> Exported:
    notes = _Notes()
    kind = Kind.VIRTUAL_MACHINE
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    config = parse(record.config_xml)
    observed = domain_xml.observe(config)
    if observed.get("type") not in ("kvm", "qemu"):
        notes.add("type", f"domain type {observed.get('type')} cannot be expressed (kvm, qemu)")
        return _unexportable(kind, record.name, notes)
    spec = vm_spec(observed, active=record.active, autostart=record.autostart,
                   name=record.name, notes=notes, cpu=domain_xml.read_cpu(config))  # fmt: skip
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
    _compare(desired, observed, notes)
    _vm_losses(record.config_xml, rendered, notes)
    return Exported(kind, record.name, doc, notes.all())


# --- structure: what the XML has that the rendered manifest does not ---------------


def _qualifier(element: Element) -> str | None:
    if element.tag == "disk":
        target = element.find("target")
        return None if target is None else target.get("dev")
    if element.tag == "interface":
        mac = element.find("mac")
        return None if mac is None else (mac.get("address") or "").lower()
    if element.tag == "input":
        return f"{element.get('type')}:{element.get('bus')}"
    if element.tag == "ip":
        return element.get("family") or "ipv4"
    if element.tag == "host" and element.get("mac"):
        return (element.get("mac") or "").lower()
    for attr in ("dev", "name", "type", "ip", "id"):
        if element.get(attr) is not None:
            return element.get(attr)
    return None


def _ignored(bare: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(bare, pattern) for pattern in patterns)


def _name(element: Element) -> str:
    qualifier = _qualifier(element)
    return str(element.tag) if qualifier is None else f"{element.tag!s}[{qualifier}]"


def _counterpart(child: Element, live: Element, rendered: Element,
                 taken: list[Element]) -> Element | None:  # fmt: skip
    """The element of ``rendered`` that stands for ``child`` of ``live``: the only one of
    its tag on both sides, or else the first one not yet taken with the same identity."""
    same = [c for c in rendered if c.tag == child.tag]
    if len(same) == 1 and sum(1 for c in live if c.tag == child.tag) == 1:
        return same[0] if not any(same[0] is t for t in taken) else None
    for candidate in same:
        if not any(candidate is t for t in taken) and _qualifier(candidate) == _qualifier(child):
            return candidate
    return None


def structural_losses(live_xml: str, rendered_xml: str,
                      ignored: Iterable[str]) -> list[tuple[str, str]]:  # fmt: skip
    """(path, what) of each element, attribute and text of ``live_xml`` that
    ``rendered_xml`` lacks or spells differently, except ``ignored`` bare paths
    (``devices/controller``, ``cpu@check``). A missing element is reported once,
    not with everything below it. Elements are matched by tag and identity (a
    disk's target, a NIC's MAC, a ``type`` or ``name``), never by position."""
    patterns = tuple(ignored)
    losses: list[tuple[str, str]] = []

    def walk(live: Element, rendered: Element, path: str, bare: str) -> None:
        taken: list[Element] = []  # the elements themselves: lxml proxies' ids are not stable
        for child in live:
            if not isinstance(child.tag, str) or child.tag.startswith("{"):
                continue  # comments; namespaced metadata is the caller's business
            tag = str(child.tag)
            child_path = f"{path}/{_name(child)}" if path else _name(child)
            child_bare = f"{bare}/{tag}" if bare else tag
            if _ignored(child_bare, patterns) or (child.tag == "input"
                                                   and child.get("bus") == "ps2"):  # fmt: skip
                continue
            other = _counterpart(child, live, rendered, taken)
            if other is None:
                losses.append((child_path, _describe(child) + " is not expressible; left out"))
                continue
            taken.append(other)
            for attr_key, value in child.attrib.items():
                attr = str(attr_key)
                if other.get(attr) == value or _ignored(f"{child_bare}@{attr}", patterns):
                    continue
                losses.append((f"{child_path}@{attr}",
                               f"{attr}={value!r} is not expressible; left out"))  # fmt: skip
            text = (child.text or "").strip()
            if text and text != (other.text or "").strip():
                losses.append((child_path, f"{text!r} is not expressible; left out"))
            walk(child, other, child_path, child_bare)

    walk(parse(live_xml), parse(rendered_xml), "", "")
    return losses


def _describe(element: Element) -> str:
    attrs = " ".join(f"{k!s}={v!r}" for k, v in element.attrib.items())
    return f"<{element.tag!s}{' ' + attrs if attrs else ''}>"


# --- selection -----------------------------------------------------------------------


_KIND_NAMES = {
    "virtualmachine": Kind.VIRTUAL_MACHINE, "vm": Kind.VIRTUAL_MACHINE,
    "domain": Kind.VIRTUAL_MACHINE, "network": Kind.NETWORK, "net": Kind.NETWORK,
    "storagepool": Kind.STORAGE_POOL, "pool": Kind.STORAGE_POOL,
    "volume": Kind.VOLUME, "vol": Kind.VOLUME,
}  # fmt: skip


class SelectionError(ValueError):
    """A name that matches nothing, or a malformed KIND/NAME."""


@dataclass(frozen=True, slots=True)
class Ref:
    """One object of the snapshot: kind, name, and the pool of a volume."""

    kind: Kind
    name: str
    pool: str | None = None


def _all_refs(observed: Observed) -> list[Ref]:
    refs = [Ref(Kind.STORAGE_POOL, name) for name in observed.pools]
    refs += [Ref(Kind.VOLUME, name, pool) for (pool, name) in observed.volumes]
    refs += [Ref(Kind.NETWORK, name) for name in observed.networks]
    refs += [Ref(Kind.VIRTUAL_MACHINE, name) for name in observed.domains]
    return refs


def resolve(observed: Observed, names: Iterable[str]) -> list[Ref]:
    """The objects ``names`` select: ``NAME`` (any kind with that name), ``KIND/NAME``,
    or ``Volume/POOL/NAME``. Raises ``SelectionError`` for one that matches nothing."""
    found: list[Ref] = []
    refs = _all_refs(observed)
    for text in names:
        kind: Kind | None = None
        name, pool = text, None
        if "/" in text:
            head, _, rest = text.partition("/")
            kind = _KIND_NAMES.get(head.lower())
            if kind is None:
                raise SelectionError(
                    f"{text}: unknown kind {head!r} (expected VirtualMachine, Network, "
                    "StoragePool or Volume)"
                )
            name = rest
            if kind is Kind.VOLUME and "/" in rest:
                pool, _, name = rest.partition("/")
        matches = [r for r in refs if r.name == name and kind in (None, r.kind)
                   and pool in (None, r.pool)]  # fmt: skip
        if not matches:
            what = "object" if kind is None else kind.value
            raise SelectionError(f"{text}: no {what} of that name in libvirt")
        found += [r for r in matches if r not in found]
    return found


def select(
    observed: Observed,
    names: Iterable[str] = (),
    *,
    everything: bool = False,
    dependencies: bool = False,
    stock: bool = False,
) -> tuple[list[Ref], list[str]]:
    """The objects to export, pools first and VMs last, and notes on what was skipped.

    ``everything``: all objects except libvirt's stock ones (``stock`` adds them)
    and the cloud-init seeds of VMs. ``dependencies``: also what the chosen
    objects use (a VM's volumes and networks, a volume's pool and backing volume).
    """
    skipped: list[str] = []
    chosen: list[Ref] = resolve(observed, names)
    if everything:
        seeds = _seed_volumes(observed)
        for ref in _all_refs(observed):
            if ref in chosen:
                continue
            if (ref.kind, ref.name) in STOCK and not stock:
                skipped.append(f"{ref.kind.value}/{ref.name}: libvirt's stock object, "
                               "not exported (name it, or pass --include-stock)")  # fmt: skip
                continue
            if ref.kind is Kind.VOLUME and (ref.pool, ref.name) in seeds:
                skipped.append(f"Volume/{ref.name}: the cloud-init seed of VirtualMachine/"
                               f"{seeds[(ref.pool, ref.name)]}, which owns it")  # fmt: skip
                continue
            chosen.append(ref)
    if dependencies:
        queue = list(chosen)
        while queue:
            ref = queue.pop()
            for dep in _uses(observed, ref):
                if dep in chosen:
                    continue
                if (dep.kind, dep.name) in STOCK and not stock:
                    skipped.append(f"{dep.kind.value}/{dep.name}: libvirt's stock object, used "
                                   f"by {ref.kind.value}/{ref.name}; not exported "
                                   "(name it, or pass --include-stock)")  # fmt: skip
                    continue
                chosen.append(dep)
                queue.append(dep)
    order = {Kind.STORAGE_POOL: 0, Kind.VOLUME: 1, Kind.NETWORK: 2, Kind.VIRTUAL_MACHINE: 3}
    chosen.sort(key=lambda r: (order[r.kind], r.pool or "", r.name))
    return chosen, skipped


def _seed_volumes(observed: Observed) -> dict[tuple[str | None, str], str]:
    """(pool, volume) of each VM's cloud-init seed drive -> the VM."""
    seeds: dict[tuple[str | None, str], str] = {}
    for dom in observed.domains.values():
        p = domain_xml.observe(dom.config_xml)
        for target in _entries(p, "cdroms"):
            volume = p.get(f"cdroms[{target}].volume")
            if volume == seed_volume_name(dom.name):
                seeds[(str(p.get(f"cdroms[{target}].pool")), str(volume))] = dom.name
    return seeds


def _uses(observed: Observed, ref: Ref) -> list[Ref]:
    out: list[Ref] = []
    if ref.kind is Kind.VIRTUAL_MACHINE:
        dom = observed.domains[ref.name]
        p = domain_xml.observe(dom.config_xml)
        for key in _entries(p, "disks"):
            pool, volume = p.get(f"disks[{key}].pool"), p.get(f"disks[{key}].volume")
            if isinstance(pool, str) and isinstance(volume, str) \
                    and (pool, volume) in observed.volumes:  # fmt: skip
                out.append(Ref(Kind.VOLUME, volume, pool))
        for mac in _entries(p, "interfaces"):
            net = p.get(f"interfaces[{mac}].network")
            if isinstance(net, str) and net in observed.networks:
                out.append(Ref(Kind.NETWORK, net))
    elif ref.kind is Kind.VOLUME and ref.pool is not None:
        if ref.pool in observed.pools:
            out.append(Ref(Kind.STORAGE_POOL, ref.pool))
        record = observed.volumes.get((ref.pool, ref.name))
        backing = None if record is None else volume_xml.observe(record.xml).get("backingVolume")
        for base in observed.volumes.values():
            if base.path == backing:
                out.append(Ref(Kind.VOLUME, base.name, base.pool))
    return out


def export(observed: Observed, refs: Iterable[Ref]) -> list[Exported]:
    """One ``Exported`` per ref (in the order given): volumes first, for the VMs' context."""
    refs = list(dict.fromkeys(refs))
    volumes: dict[Ref, Exported] = {}
    base_ctx = Context.make(observed)
    names: dict[str, str] = {}
    for ref in refs:
        if ref.kind is Kind.VOLUME and ref.pool is not None:
            exported = export_volume(observed.volumes[(ref.pool, ref.name)], base_ctx)
            if exported.document is not None and ref.name in names:
                note = Note("metadata.name", "a volume of this name is exported from pool "
                            f"{names[ref.name]}; Volume names are unique in manifests")  # fmt: skip
                exported = Exported(Kind.VOLUME, ref.name, None, (*exported.notes, note), ref.pool)
            elif exported.document is not None:
                names[ref.name] = ref.pool
            volumes[ref] = exported
    ctx = Context.make(observed, volumes.values())
    out = []
    for ref in refs:
        if ref.kind is Kind.STORAGE_POOL:
            out.append(export_pool(observed.pools[ref.name]))
        elif ref.kind is Kind.VOLUME:
            out.append(volumes[ref])
        elif ref.kind is Kind.NETWORK:
            out.append(export_network(observed.networks[ref.name]))
        else:
            out.append(export_vm(observed.domains[ref.name], ctx))
    return out


# --- YAML ------------------------------------------------------------------------------


class _Flow(list[Any]):
    """A list written inline (``boot: [cdrom, disk]``)."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # lists indented under their key


_Dumper.add_representer(
    _Flow, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


class _Quoted(str):
    """A string written in quotes: MAC addresses, as the schema asks."""


_Dumper.add_representer(
    _Quoted, lambda d, data: d.represent_scalar("tag:yaml.org,2002:str", str(data), style="'")
)
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def _flowed(value: Any) -> Any:
    if isinstance(value, str) and _MAC.match(value):
        return _Quoted(value)
    if isinstance(value, dict):
        return {k: _flowed(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return _Flow(value)
        return [_flowed(v) for v in value]
    return value


def to_yaml(item: Exported, source: str) -> str:
    """One manifest document as YAML text, headed by comments naming its notes."""
    assert item.document is not None
    lines = [f"# Exported by 'reconciler export' from {source}: {item.key}"]
    if item.notes:
        lines.append("# Not expressible in this manifest (lost when reconciler defines the "
                     "object from it):")  # fmt: skip
        lines += [f"#   {note}" for note in item.notes]
    body = yaml.dump(_flowed(item.document), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)  # fmt: skip
    return "\n".join(lines) + "\n" + body


_DIRS = {Kind.STORAGE_POOL: "pools", Kind.VOLUME: "volumes", Kind.NETWORK: "networks",
         Kind.VIRTUAL_MACHINE: "vms"}  # fmt: skip


def file_name(item: Exported) -> str:
    """Where an object's manifest goes in the output directory (``vms/web-1.yaml``)."""
    return f"{_DIRS[item.kind]}/{item.name}.yaml"
