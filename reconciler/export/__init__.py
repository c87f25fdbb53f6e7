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

from reconciler import rounding
from reconciler.diff import device_of, diff
from reconciler.errors import SourcePosition
from reconciler.model import (
    API_VERSION,
    CPU_HYPERVISOR_DEFAULT,
    CpuSpec,
    Kind,
    Manifest,
    NetworkSpec,
    SpecError,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    build_manifest,
    clock_parts,
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
class Kept:
    """Something the definition has that the manifest does not manage: applying the
    manifest to this object keeps it as defined (a redefine patches the current
    definition); a VM created from the manifest elsewhere would not have it.

    ``path``: where it is in libvirt's XML (``devices/channel[org.qemu.guest_agent.0]``,
    ``clock``); ``label``: what it is, as a user reads it
    (``channel (org.qemu.guest_agent.0)``, ``clock: timer rtc, timer pit``)."""

    path: str
    label: str

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True)
class Exported:
    """One object's manifest document (None: it cannot be exported), its notes (what
    applying the manifest would change, or why it cannot be exported) and what the
    object has that the manifest does not manage and a redefine keeps (``kept``)."""

    kind: Kind
    name: str
    document: dict[str, Any] | None
    notes: tuple[Note, ...] = ()
    pool: str | None = None  # volumes: their pool
    kept: tuple[Kept, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind.value}/{self.name}"


class _Notes:
    """Notes of one object, one per field; a device noted as a whole covers its fields."""

    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}
        self._silent: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if not self.covers(path):
            self._notes[path] = Note(path, message)

    def silence(self, path: str) -> None:
        """No note for ``path`` (a device: nor its fields): the device is not managed
        by the manifest, and listed as kept instead."""
        self._silent.add(path)

    def silenced(self, path: str) -> bool:
        return path in self._silent

    def covers(self, path: str) -> bool:
        if path in self._notes or path in self._silent:
            return True
        dev = device_of(path)
        return dev is not None and (f"{dev[0]}[{dev[1]}]" in self._notes
                                    or f"{dev[0]}[{dev[1]}]" in self._silent)  # fmt: skip

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
            fmt = record.format
            if fmt is not None:
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
    rendered = pool_xml.render(record.name, m.spec)
    kept = kept_in_definition(record.config_xml, rendered, notes, silent=_POOL_SILENT,
                              detail=True)  # fmt: skip
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))


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
    observed = record.config
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
    # compared as the planner compares it: what libvirt makes of the manifest's bytes by
    # either path it may have taken (a qcow2 resize keeps 512-byte multiples; rounding.py)
    have = observed.get("capacity")
    desired["capacity"] = rounding.volume_capacity(
        m.spec.capacity, m.spec.format, have if isinstance(have, int) else None)
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
        notes.add("ipv4", f"the IPv4 <ip> has the address {address}, which is not IPv4")
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


# Never listed as kept: the identity and our record, what libvirt adds to any network
# (the bridge's MAC, stp and delay), and manifest fields in another spelling.
_NETWORK_SILENT = (
    "uuid", "name", "metadata", "mac", "bridge@stp", "bridge@delay", "ip@family",
    "ip@netmask",
)  # fmt: skip
_POOL_SILENT = ("uuid", "name", "capacity", "allocation", "available")
"""Never listed as kept: the identity and the sizes libvirt reports."""


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
    # a redefine patches the current definition: what the manifest cannot say (an IPv6
    # <ip>, dns forwarders, routes, portgroups, other tools' metadata) is kept
    kept = kept_in_definition(record.config_xml, rendered, notes, silent=_NETWORK_SILENT,
                              namespace=network_xml.OWNER_NAMESPACE, detail=True)  # fmt: skip
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))


# --- virtual machines ---------------------------------------------------------------------


def vm_spec(
    projection: Projection, *, active: bool, autostart: bool, name: str,
    notes: _Notes | None = None, cpu: CpuSpec | None = None, config: Element | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A VirtualMachine spec from ``domain_xml.observe`` of the persistent definition.

    Values the schema cannot hold are not exported, with a note; whatever else the
    manifest cannot say is found by comparing projections afterwards. ``cpu``: the
    definition's ``<cpu>`` (``domain_xml.read_cpu``); without it only a CPU mode or
    model name is taken from the projection. ``config``: the parsed definition, to
    tell the CD-ROMs the manifest manages (image files, volumes) from host drives.
    Devices the manifest does not manage (block and network disks, NICs other than
    network and bridge ones) are not exported and have no note: ``export_vm`` lists
    them as kept.
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
        spec["firmware"] = "uefi"
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
    spec["state"] = "running" if active else "stopped"
    spec["autostart"] = autostart
    spec["adopt"] = True
    return spec


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


def _tuple(value: object) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else ()


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
        if volume is None and file is None:
            notes.silence(at)  # a block or network disk: not managed, kept as defined
            continue
        if not _on_bus(target, bus, _TARGET_PREFIX):
            notes.add(at, f"a disk on bus {bus} cannot be expressed (virtio vdX, sata/scsi "
                      f"sdX, ide hdX); {_REMOVES} disks")  # fmt: skip
            continue
        if volume is not None and not _NAME.match(str(volume)):
            notes.add(at, f"volume {volume!r} has a name a manifest cannot hold; "
                      f"{_REMOVES} disks")  # fmt: skip
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
        elif network is None and bridge is None:
            notes.silence(at)  # direct, user, hostdev...: not managed, kept as defined
            continue
        else:
            notes.add(at, f"the name of its {'network' if bridge is None else 'bridge'} "
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


# --- what a redefine keeps: the definition against the rendered manifest --------------

_REMOVES = "applying the manifest removes it: a manifest holds the whole set of a VM's"

_MANAGED_DISK_TYPES = domain_xml.MANAGED_DISK_TYPES
_MANAGED_INTERFACE_TYPES = domain_xml.MANAGED_INTERFACE_TYPES


def _managed_device(device: Element, aside: Collection[Element] = ()) -> bool:
    """Whether a manifest manages ``device``'s kind as a whole set, so that one it does
    not name is removed by applying it: the sets of ``domain_xml`` (``MANAGED_*``):
    disks and CD-ROMs of files and volumes, NICs on networks and bridges, the first VNC
    or SPICE display (the manifest's one ``graphics``), the serial port (pty, file) and
    its console, USB inputs (formatdomain "Hard drives...", "Network interfaces",
    "Graphical framebuffers", "Serial port", "Input devices"). Every other device is
    kept as defined: a floppy (neither a disk nor a CD-ROM), a second display, and
    those a redefine sets aside (``aside``, ``domain_xml.set_aside``: an SDL display, a
    tcp serial port...)."""
    tag, kind = device.tag, device.get("type")
    if any(device is other for other in aside):
        return False
    if tag == "graphics":  # the manifest's graphics fields read the first display only
        parent = device.getparent()
        first = None if parent is None else next(
            (g for g in parent.iterchildren("graphics")
             if g.get("type") in domain_xml.MANAGED_GRAPHICS_TYPES
             and not any(g is other for other in aside)), None)  # fmt: skip
        return device is first
    if tag == "console":  # a virtio or sclp console is not the serial port's
        return domain_xml.serial_console(device)
    if tag == "disk":  # a floppy or lun is in neither set (DISKS, CDROMS)
        return kind in _MANAGED_DISK_TYPES and device.get("device", "disk") in ("disk", "cdrom")
    if tag == "interface":
        return kind in _MANAGED_INTERFACE_TYPES
    if tag == "input":
        return device.get("bus") == "usb"
    return tag in ("graphics", "serial", "console")


# Never listed: the identity and our own record, what libvirt adds to any definition
# (addresses, aliases, the emulator, PS/2 inputs), and what the manifest holds with the
# same meaning in another spelling. Bare paths (tags only), fnmatch patterns.
_KEPT_SILENT = (
    "uuid", "name", "metadata", "*/address", "*/alias", "devices/emulator",
    "os/boot", "os/type@machine", "clock@offset",  # manifest fields: a change is a note
    "memory@unit", "currentMemory@unit", "vcpu@placement", "maxMemory@unit",
    "cpu@check", "cpu@migratable", "cpu@match", "cpu/model@fallback",
    "devices/disk/source@index", "devices/interface/source@portid",
    "devices/interface/target", "devices/interface/target@*",
    "devices/graphics@listen", "devices/graphics@port", "devices/graphics@autoport",
    "devices/graphics@passwd", "devices/serial/target@type", "devices/serial/target/model",
    "devices/serial/target@port",
)  # fmt: skip
_DEFAULT_VIDEO = ("cirrus", "vga")


def _local(tag: object) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1]


def _label(element: Element) -> str:
    """A device or element as a user names it: ``channel (org.qemu.guest_agent.0)``,
    ``controller usb (ich9-ehci1)``, ``disk hda (block /dev/HostVG/guest)``, ``pm``."""
    tag, kind = _local(element.tag), element.get("type")
    if tag == "disk":
        target, source = element.find("target"), element.find("source")
        dev = "" if target is None else f" {target.get('dev')}"
        what = "" if source is None else next(
            (f" {v!s}" for k, v in source.attrib.items() if k in ("file", "dev", "name", "volume")),
            "")  # fmt: skip
        return f"{element.get('device', 'disk')}{dev} ({kind}{what})"
    if tag == "interface":
        mac = element.find("mac")
        return f"interface {kind}" + ("" if mac is None else f" {mac.get('address')}")
    if tag == "ip":  # a network's address: ip ipv6 fd00::1/64
        size = element.get("prefix") or element.get("netmask")
        return f"ip {element.get('family') or 'ipv4'} {element.get('address')}" + (
            f"/{size}" if size else "")  # fmt: skip
    if tag == "route":
        return f"route {element.get('address')}/{element.get('prefix') or element.get('netmask')}"\
            f" via {element.get('gateway')}"  # fmt: skip
    if tag == "channel":
        target = element.find("target")
        name = None if target is None else target.get("name") or target.get("type")
        return f"channel ({name})" if name else f"channel {kind}"
    model = element.get("model")
    model_el = element.find("model")
    if model is None and model_el is not None:
        model = model_el.get("type") or model_el.get("name") or (model_el.text or "").strip()
    text = " ".join((element.text or "").split())  # one line, even for a <description>
    if len(text) > 60:
        text = text[:57] + "..."
    kind = kind or element.get("mode") or element.get("name")
    out = tag if kind is None else f"{tag} {kind}"
    if model is not None:
        out += f" ({model})"
    elif text and len(element) == 0:
        out += f" ({text})"
    return out


def _short(element: Element) -> str:
    """A child element inside a kept list: ``timer rtc``, ``bootmenu``, ``vmport``."""
    qualifier = _qualifier(element)
    return _local(element.tag) if qualifier is None else f"{_local(element.tag)} {qualifier}"


def _inner(live: Element, rendered: Element, bare: str,
           silent: tuple[str, ...] = _KEPT_SILENT) -> list[str]:  # fmt: skip
    """What ``live`` has below it that ``rendered`` lacks or spells differently, short."""
    out: list[str] = []
    for attr_key, value in live.attrib.items():
        attr = str(attr_key)  # lxml may type keys as bytes too
        if rendered.get(attr) != value and not _ignored(f"{bare}@{attr}", silent):
            out.append(f"{attr}={value!s}")
    text = (live.text or "").strip()
    if text and text != (rendered.text or "").strip():
        out.append(" ".join(text.split()))
    taken: list[Element] = []
    for child in live:
        if not isinstance(child.tag, str):
            continue
        child_bare = f"{bare}/{child.tag}"
        if _ignored(child_bare, silent):
            continue
        other = _counterpart(child, live, rendered, taken)
        if other is None:
            out.append(_short(child))
            continue
        taken.append(other)
        out += [f"{_short(child)} {what}" for what in _inner(child, other, child_bare, silent)]
    return out


def _device_key(device: Element) -> str | None:
    """The manifest's key of a disk, CD-ROM or NIC (``disks[vda]``), for its notes."""
    if device.tag == "disk":
        target = device.find("target")
        section = "cdroms" if device.get("device") == "cdrom" else "disks"
        return None if target is None else f"{section}[{target.get('dev')}]"
    if device.tag == "interface":
        mac = device.find("mac")
        return None if mac is None else f"interfaces[{(mac.get('address') or '').lower()}]"
    return None


def _noted(device: Element, notes: _Notes) -> bool:
    key = _device_key(device)
    if key is not None and notes.covers(key) and not notes.silenced(key):
        return True
    return (device.tag == "graphics" and notes.covers("graphics")) or (
        device.tag in ("serial", "console") and notes.covers("serial"))  # fmt: skip


def kept_in_definition(
    config_xml: str, rendered: str, notes: _Notes, *,
    silent: Iterable[str] = _KEPT_SILENT, namespace: str = domain_xml.OWNER_NAMESPACE,
    detail: bool = False,
) -> list[Kept]:  # fmt: skip
    """What the definition ``config_xml`` has that the manifest, rendered as ``rendered``,
    does not say, and that applying the manifest keeps (the redefine patches the current
    definition): every element, attribute and text outside the manifest's fields, found
    by comparing the two trees (elements matched by identity: a disk's target, a NIC's
    MAC, a ``type`` or ``name``, an ``<ip>``'s family), never from a list of names. A
    whole device of a kind the manifest manages (``_managed_device``) that the manifest
    lacks is not kept but removed by applying it: that becomes a note. Fields already
    noted (``notes``) are not listed again. Domains by default; a network or a pool
    with its own ``silent`` bare paths (never listed) and record ``namespace``, and
    ``detail``: an element the manifest lacks altogether is listed with what it holds
    (``dns: forwarder 127.0.0.53, txt example``, not just ``dns``)."""
    silent = tuple(silent)
    live, mine = parse(config_xml), parse(rendered)
    kept: list[Kept] = []
    taken: list[Element] = []
    for element in live:
        if not isinstance(element.tag, str) or _ignored(element.tag, silent):
            continue
        if element.tag == "cpu" and notes.covers("cpu"):
            continue  # a CPU the manifest cannot say is noted as 'cpu' already
        other = _counterpart(element, live, mine, taken)
        if other is not None:
            taken.append(other)
        if element.tag != "devices":
            if other is None:
                inner = _inner(element, mine.makeelement(element.tag, {}), element.tag,
                               silent) if detail and len(element) else []  # fmt: skip
                if inner and _label(element) == element.tag:
                    kept.append(Kept(element.tag, f"{element.tag}: {', '.join(inner)}"))
                elif len(element) or element.attrib or (element.text or "").strip():
                    kept.append(Kept(element.tag, _label(element)))  # (empty: says nothing)
            else:
                inner = _inner(element, other, element.tag, silent)
                if len(element) == 0 and (element.text or "").strip() in inner:
                    kept.append(Kept(element.tag, _label(element)))  # on_crash (restart)
                elif inner:
                    kept.append(Kept(element.tag, f"{_label(element)}: {', '.join(inner)}"))
            continue
        rendered_devices = other if other is not None else mine.makeelement("devices", {})
        aside = domain_xml.set_aside(live)
        done: list[Element] = []
        for device in element:
            bare = f"devices/{device.tag}"
            if not isinstance(device.tag, str) or _ignored(bare, silent) or (
                    device.tag == "input" and device.get("bus") == "ps2"):  # fmt: skip
                continue
            path = f"devices/{_name(device)}"
            counterpart = _counterpart(device, element, rendered_devices, done)
            if counterpart is not None:
                done.append(counterpart)
                inner = _inner(device, counterpart, bare, silent)
                if inner:
                    kept.append(Kept(path, f"{_label(device)}: {', '.join(inner)}"))
            elif _noted(device, notes):
                continue
            elif _managed_device(device, aside):
                notes.add(path, f"{_label(device)} cannot be expressed; {_REMOVES} "
                          f"{device.tag} devices")  # fmt: skip
            else:
                kept.append(Kept(path, _label(device)))
    for element in live.findall("metadata/*"):
        if not str(element.tag).startswith("{" + namespace + "}"):
            kept.append(Kept("metadata", f"metadata {_local(element.tag)}"))
    # A firmware chosen by path (<loader type='pflash'>OVMF_CODE...</loader>) or with
    # secure boot reads as firmware: uefi and is kept by a redefine (listed under os);
    # only a VM created from the manifest would get libvirt's plain OVMF instead.
    return kept


def export_vm(record: DomainRecord, ctx: Context) -> Exported:
    notes = _Notes()
    kind = Kind.VIRTUAL_MACHINE
    if not _check_name(kind, record.name, notes):
        return _unexportable(kind, record.name, notes)
    config = record.config_root
    observed = record.config
    if observed.get("type") not in ("kvm", "qemu"):
        notes.add("type", f"domain type {observed.get('type')} cannot be expressed (kvm, qemu)")
        return _unexportable(kind, record.name, notes)
    spec = vm_spec(observed, active=record.active, autostart=record.autostart, name=record.name,
                   notes=notes, cpu=domain_xml.read_cpu(config), config=config)  # fmt: skip
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
    kept = kept_in_definition(record.config_xml, rendered, notes)
    return Exported(kind, record.name, doc, notes.all(), kept=tuple(kept))


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
    for attr in ("dev", "name", "type", "ip", "id", "addr"):
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
        p = dom.config
        for target in _entries(p, "cdroms"):
            volume = p.get(f"cdroms[{target}].volume")
            if volume == seed_volume_name(dom.name):
                seeds[(str(p.get(f"cdroms[{target}].pool")), str(volume))] = dom.name
    return seeds


def _uses(observed: Observed, ref: Ref) -> list[Ref]:
    out: list[Ref] = []
    if ref.kind is Kind.VIRTUAL_MACHINE:
        dom = observed.domains[ref.name]
        p = dom.config
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
        backing = None if record is None else record.config.get("backingVolume")
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


KEPT_HEADING = "kept as defined, not managed by this manifest"
NOTES_HEADING = "not in this manifest as libvirt has it: applying the manifest changes it"


def kept_lines(kept: Iterable[Kept]) -> list[str]:
    """Labels of ``kept``, each once, in order, a repeated one with its count
    (``controller usb (ich9-uhci1) (x3)``)."""
    counts: dict[str, int] = {}
    for item in kept:
        counts[item.label] = counts.get(item.label, 0) + 1
    return [label if n == 1 else f"{label} (x{n})" for label, n in counts.items()]


def _one_line(text: str) -> str:
    """``text`` fit for one comment line: a line break in it would end the comment."""
    return " ".join(text.split())


def to_yaml(item: Exported, source: str) -> str:
    """One manifest document as YAML text, headed by comments: what the object has that
    the manifest does not manage and applying it keeps, then the notes (what applying
    it would change)."""
    assert item.document is not None
    lines = [f"# Exported by 'reconciler export' from {source}: {item.key}"]
    if item.kept:
        lines.append(f"# {KEPT_HEADING[0].upper()}{KEPT_HEADING[1:]} (applying it "
                     "leaves them as they are; a VM created from it would lack them):")  # fmt: skip
        lines += [f"#   {_one_line(line)}" for line in kept_lines(item.kept)]
    if item.notes:
        lines.append(f"# {NOTES_HEADING[0].upper()}{NOTES_HEADING[1:]} (check each before "
                     "applying):")  # fmt: skip
        lines += [f"#   {_one_line(str(note))}" for note in item.notes]
    body = yaml.dump(_flowed(item.document), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)  # fmt: skip
    return "\n".join(lines) + "\n" + body


_DIRS = {Kind.STORAGE_POOL: "pools", Kind.VOLUME: "volumes", Kind.NETWORK: "networks",
         Kind.VIRTUAL_MACHINE: "vms"}  # fmt: skip


def file_name(item: Exported) -> str:
    """Where an object's manifest goes in the output directory (``vms/web-1.yaml``)."""
    return f"{_DIRS[item.kind]}/{item.name}.yaml"


def to_json(item: Exported, file: str | None = None) -> dict[str, Any]:
    """One object as ``reconciler -o json export`` prints it (docs/adoption.md): its
    document (null: not exported), ``kept`` (what applying keeps as defined, with where
    it is in libvirt's XML) and ``notes`` (what applying would change, or why it could
    not be exported). ``file``: where the manifest was written, if it was."""
    return {
        "kind": item.kind.value,
        "name": item.name,
        "pool": item.pool,
        "exported": item.document is not None,
        "file": file,
        "document": item.document,
        "kept": [{"path": k.path, "what": k.label} for k in item.kept],
        "notes": [{"field": n.field, "message": n.message} for n in item.notes],
    }
