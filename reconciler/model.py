"""Typed, immutable specs of the four manifest kinds, built from validated documents.

Input: one document that already passed its JSON Schema (schema.py), as plain
dicts. Output: a frozen ``Manifest`` whose spec has units parsed (bytes,
seconds) and every default resolved, so that later layers (render, diff,
plan) never look at raw YAML or guess defaults. Rules that JSON Schema cannot
say well (memory <= maxMemory, a DHCP range inside its subnet, unique disk
targets) are checked here and reported as ``FieldProblem``s with the field
path, which manifests.py turns into file:line:col messages.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

from reconciler import imagefetch
from reconciler.errors import SourcePosition
from reconciler.units import parse_duration, parse_size, too_large, too_long

FieldPath: TypeAlias = tuple[str | int, ...]


class Kind(StrEnum):
    """Manifest kinds, in the order they are brought up."""

    STORAGE_POOL = "StoragePool"
    VOLUME = "Volume"
    NETWORK = "Network"
    VIRTUAL_MACHINE = "VirtualMachine"


API_VERSION = "reconciler/v1"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A semantic problem in one document, located by field path."""

    path: FieldPath
    message: str
    hint: str = ""


class SpecError(Exception):
    """A document is schema-valid but not meaningful; carries every problem found."""

    def __init__(self, problems: list[FieldProblem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


# --- StoragePool / Volume ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class XmlEdit:
    """One entry of a VM's ``xml`` list, the escape hatch (``xml/edits.py`` applies it):
    an ``xpath`` relative to ``<domain>`` and exactly one of ``value`` (set the
    attribute or text it names), ``add`` (an XML element, as text, added under it) and
    ``delete`` (remove what it names). Outside the typed contract: typed fields win."""

    xpath: str
    value: str | None = None
    add: str | None = None
    delete: bool = False


@dataclass(frozen=True, slots=True)
class PoolSource:
    """A pool's ``<source>`` (formatstorage "Source elements"); each field None (or
    empty) when the manifest does not name it, so libvirt's value is kept.

    ``devices``: block devices (``<device path=>``: a logical pool's physical volumes,
    an fs or disk pool's one device); ``name``: the volume group (logical) or ZFS
    pool; ``host``/``port``: the NFS or iSCSI server; ``dir``: the NFS export;
    ``format``: the filesystem, partition table or ``lvm2``; ``iqn``: the iSCSI
    target (``<device path=>`` of an iscsi pool); ``initiator``: our initiator IQN."""

    devices: tuple[str, ...] = ()
    name: str | None = None
    host: str | None = None
    port: int | None = None
    dir: str | None = None
    format: str | None = None
    iqn: str | None = None
    initiator: str | None = None


@dataclass(frozen=True, slots=True)
class StoragePoolSpec:
    """``path``: the target path (None: not named, libvirt's kept; a dir, fs or netfs
    pool always names it). ``build``: build the pool when it is created (a logical,
    fs, disk or zfs pool: vgcreate, mkfs, a partition table; never over data)."""

    path: str | None
    type: str = "dir"
    state: str = "active"
    autostart: bool = False
    adopt: bool = False
    source: PoolSource = PoolSource()
    build: bool = False
    xml: tuple[XmlEdit, ...] = ()  # the escape hatch (xml/edits.py)


@dataclass(frozen=True, slots=True)
class VolumeSpec:
    pool: str
    capacity: int
    format: str = "qcow2"
    backing_volume: str | None = None
    source: str | None = None  # a host file (``source: /path``)
    reclaim_policy: str = "retain"
    adopt: bool = False
    # ``source: {url: https://..., sha256: HEX}``: an image fetched into the state
    # directory's cache and streamed into the volume through libvirt (imagefetch.py)
    source_url: str | None = None
    source_sha256: str | None = None

    @property
    def content(self) -> str | None:
        """What the volume's initial content comes from: the file, or the URL."""
        return self.source or self.source_url


# --- Network ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DhcpHost:
    mac: str
    ip: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Dhcp:
    start: str
    end: str
    hosts: tuple[DhcpHost, ...] = ()


@dataclass(frozen=True, slots=True)
class Ipv4:
    address: str
    prefix: int
    dhcp: Dhcp | None = None


@dataclass(frozen=True, slots=True)
class DnsHost:
    ip: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    mode: str = "nat"
    bridge: str | None = None
    mtu: int | None = None
    domain: str | None = None
    ipv4: Ipv4 | None = None
    dns_hosts: tuple[DnsHost, ...] = ()
    state: str = "active"
    autostart: bool = False
    adopt: bool = False
    xml: tuple[XmlEdit, ...] = ()  # the escape hatch (xml/edits.py)


# --- VirtualMachine ---------------------------------------------------------


def plain_path(path: str) -> str:
    """``path`` spelled once: repeated slashes and ``.`` components dropped, purely
    (no file system access), so ``/x/files//./f.qcow2`` is ``/x/files/f.qcow2``. A
    ``..`` is kept (through a symlink it does not mean the parent; the allowed-path
    check refuses it anyway); a relative path stays relative."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    plain = "/".join(parts)
    return "/" + plain if path.startswith("/") else plain or path


@dataclass(frozen=True, slots=True)
class Disk:
    """One disk. Its identity is its source (``volume``, else ``file``), never its
    place in the list. ``target_declared`` False: the manifest named no target, and
    ``target`` is the one assigned when the VM is created; an existing domain keeps
    the target its disk has (planner, ``domain_xml.settle_targets``)."""

    target: str
    bus: str = "virtio"
    volume: str | None = None
    file: str | None = None
    format: str | None = None
    cache: str | None = None
    readonly: bool = False
    serial: str | None = None
    target_declared: bool = True


@dataclass(frozen=True, slots=True)
class Cdrom:
    target: str
    bus: str
    file: str | None = None
    # a storage volume as the medium: only the cloud-init seed, made by the planner
    volume: str | None = None
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class Interface:
    """A NIC (formatdomain "Network interfaces"), on a ``network``, a host ``bridge``
    or ``direct`` (macvtap on a host device). The fields of issue 13 (``direct_mode``
    aside) are in ``declared`` only when the manifest names them: one it does not
    name is kept as the domain has it (``xml.domain_nics``)."""

    mac: str
    network: str | None = None
    bridge: str | None = None
    model: str = "virtio"
    boot_rom: bool = False  # PXE option ROM: by default only when boot lists network
    direct: str | None = None  # host device of a macvtap NIC (<source dev>)
    direct_mode: str = "vepa"  # bridge | vepa | private | passthrough (libvirt's default)
    vlan: Vlan | None = None
    portgroup: str | None = None
    bandwidth: Bandwidth | None = None  # None (declared): no limits
    link: str = "up"  # up | down
    mtu: int | None = None
    declared: frozenset[str] = frozenset()  # vlan, portgroup, bandwidth, link, mtu


NIC_DIRECT_MODES = ("bridge", "vepa", "private", "passthrough")
"""``<source mode>`` of a direct NIC (formatdomain "Direct attachment to physical
interface"); libvirt's default is vepa."""
NIC_OPTIONAL_FIELDS = ("vlan", "portgroup", "bandwidth", "link", "mtu")
"""Manifest fields of a NIC that are kept as the domain has them when not named."""


@dataclass(frozen=True, slots=True)
class VlanTag:
    id: int
    native_mode: str | None = None  # tagged | untagged (trunk only)


@dataclass(frozen=True, slots=True)
class Vlan:
    """``<vlan>`` of a NIC (formatdomain "Setting VLAN tag"): several tags make a
    trunk, as libvirt reads them (``trunk`` is then True)."""

    tags: tuple[VlanTag, ...]
    trunk: bool = False

    def describe(self) -> str:
        """The one-line form plans show and ``xml.domain_nics`` compares: ``42``,
        ``42/untagged,43 trunk``."""
        tags = ",".join(f"{t.id}/{t.native_mode}" if t.native_mode else str(t.id)
                        for t in self.tags)  # fmt: skip
        return tags + (" trunk" if self.trunk else "")


@dataclass(frozen=True, slots=True)
class Rate:
    """One direction of ``<bandwidth>``: average and peak in KiB/s, burst in KiB
    (libvirt's units, formatdomain "Quality of service")."""

    average: int
    peak: int | None = None
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class Bandwidth:
    inbound: Rate | None = None
    outbound: Rate | None = None


_RATE_UNIT = re.compile(r"^(.*)/s$")


def nic_quantity(value: object, rate: bool) -> int:
    """A bandwidth value in libvirt's unit (KiB/s for a rate, KiB for a burst): an
    integer is that unit already; a string has a unit, ``1MiB/s`` for a rate or
    ``64KiB`` for a burst (sizes as ``units.parse_size``). ValueError for another
    text, or one that is not a whole number of KiB above 0."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        kib = value
    else:
        text = str(value).strip()
        if rate:
            match = _RATE_UNIT.match(text)
            if match is None:
                raise ValueError(f"{text!r} is not a rate (expected e.g. 1000KiB/s or 8MB/s)")
            text = match.group(1)
        size = parse_size(text)
        if size % 1024:
            raise ValueError(f"{value!r} is not a whole number of KiB (libvirt's unit)")
        kib = size // 1024
    if kib < 1 or kib > 2**32 - 1:
        raise ValueError(f"{value!r} is out of range (1 to 4294967295 KiB, or KiB/s)")
    return kib


def _nic_extras(n: Mapping[str, Any], i: int, problems: list[FieldProblem]) -> dict[str, Any]:
    """The issue-13 fields of manifest NIC ``n`` (``interfaces[i]``) as ``Interface``
    keyword arguments, with ``declared``; problems go to ``problems``. Refused here,
    as libvirt 9.0 refuses them only at define or start: a VLAN on a plain Linux
    bridge ("vlan tag not supported for this connection type"), a VLAN on a direct
    NIC not in passthrough mode ("vlan can only be set for SR-IOV VFs"), an MTU on a
    direct NIC ("setting MTU on interface type direct is not supported yet")."""
    at: FieldPath = ("spec", "interfaces", i)
    out: dict[str, Any] = {}
    declared = frozenset(k for k in NIC_OPTIONAL_FIELDS if k in n)
    out["declared"] = declared
    direct = n.get("direct")
    if isinstance(direct, Mapping):
        out["direct"] = direct.get("dev")
        out["direct_mode"] = direct.get("mode", "vepa")
    vlan = n.get("vlan")
    if vlan is not None:
        raw_tags: list[Any] = [{"id": vlan}] if isinstance(vlan, int) \
            else list(vlan.get("tags", ()))
        tags = tuple(VlanTag(int(t["id"]), t.get("nativeMode")) for t in raw_tags
                     if isinstance(t, Mapping))
        trunk = bool(vlan.get("trunk", False)) if isinstance(vlan, Mapping) else False
        if len(tags) > 1 and isinstance(vlan, Mapping) and vlan.get("trunk") is False:
            problems.append(FieldProblem((*at, "vlan", "trunk"),
                "several VLAN tags are a trunk", "set trunk: true, or list one tag"))  # fmt: skip
        trunk = trunk or len(tags) > 1  # libvirt reads several tags as a trunk
        if any(t.native_mode for t in tags) and not trunk:
            problems.append(FieldProblem((*at, "vlan"),
                "nativeMode is for a trunk's native VLAN", "set trunk: true"))  # fmt: skip
        if sum(1 for t in tags if t.native_mode) > 1:
            problems.append(FieldProblem((*at, "vlan"),
                "only one tag of a trunk can be native", "keep nativeMode on one tag"))  # fmt: skip
        if "bridge" in n:
            problems.append(FieldProblem((*at, "vlan"),
                "a plain Linux bridge cannot carry a VLAN tag (libvirt refuses to start the "
                "VM: 'vlan tag not supported for this connection type')",
                "use a Network (an openvswitch bridge or a portgroup with the VLAN), or a "
                "direct NIC in passthrough mode on an SR-IOV VF"))  # fmt: skip
        if isinstance(direct, Mapping) and out.get("direct_mode") != "passthrough":
            problems.append(FieldProblem((*at, "vlan"),
                "a direct NIC carries a VLAN tag only in passthrough mode on an SR-IOV VF "
                "(libvirt: 'vlan can only be set for SR-IOV VFs')",
                "set direct.mode: passthrough on a VF, or put the VLAN on a Network"))  # fmt: skip
        out["vlan"] = Vlan(tags, trunk)
    if n.get("portgroup") is not None:
        if "network" not in n:
            problems.append(FieldProblem((*at, "portgroup"),
                "a portgroup is one of a Network's", "use portgroup on a network NIC"))  # fmt: skip
        out["portgroup"] = n["portgroup"]
    bandwidth = n.get("bandwidth")
    if bandwidth is not None:
        rates: dict[str, Rate | None] = {}
        for direction in ("inbound", "outbound"):
            raw = bandwidth.get(direction)
            if raw is None:
                rates[direction] = None
                continue
            values: dict[str, int | None] = {}
            for name in ("average", "peak", "burst"):
                if raw.get(name) is None:
                    values[name] = None
                    continue
                try:
                    values[name] = nic_quantity(raw[name], rate=name != "burst")
                except ValueError as exc:
                    problems.append(FieldProblem((*at, "bandwidth", direction, name), str(exc),
                        "write KiB as a number, or with a unit: 1000KiB/s, 64KiB"))  # fmt: skip
                    values[name] = 1
            average = values["average"]
            if average is None:
                problems.append(FieldProblem((*at, "bandwidth", direction, "average"),
                    "libvirt needs an average rate in each direction it limits",
                    "add average (KiB/s)"))  # fmt: skip
                average = 1
            rates[direction] = Rate(average, values["peak"], values["burst"])
        out["bandwidth"] = Bandwidth(rates["inbound"], rates["outbound"])
    if "link" in n:
        out["link"] = n["link"]
    if n.get("mtu") is not None:
        if isinstance(direct, Mapping):
            problems.append(FieldProblem((*at, "mtu"),
                "libvirt 9.0 cannot set the MTU of a direct NIC ('setting MTU on interface "
                "type direct is not supported yet')", "set it on the host device"))  # fmt: skip
        out["mtu"] = n["mtu"]
    return out


@dataclass(frozen=True, slots=True)
class Graphics:
    type: str = "vnc"
    port: int | None = None  # None: auto
    listen: str | None = "127.0.0.1"  # None: no address, qemu.conf's (vnc|spice)_listen
    keymap: str | None = None
    password_file: str | None = None


CPU_MODES = ("host-model", "host-passthrough", "maximum", "custom")
CPU_HYPERVISOR_DEFAULT = "hypervisor-default"
"""``cpu: hypervisor-default``: no ``<cpu>`` element at all, the CPU QEMU gives when the
definition names none (qemu64 under TCG, the machine's default model under KVM);
an adopted domain without ``<cpu>`` keeps having none."""
CLOCK_OFFSETS = ("utc", "localtime", "timezone", "variable", "absolute")
"""``<clock offset>`` (formatdomain "Time keeping")."""
_CLOCK_ATTRS = ("adjustment", "basis", "start", "timezone")
# as the schema says them, matched whole (a schema pattern's $ admits a final newline)
_CPU_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CPU_FEATURE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
CPU_FEATURE_POLICIES = ("require", "optional", "disable", "forbid", "force")


@dataclass(frozen=True, slots=True)
class CpuTopology:
    """``<cpu><topology>``: sockets x dies x cores x threads, equal to maxVcpus
    (libvirt formatdomain, "CPU model and topology")."""

    sockets: int = 1
    dies: int = 1
    cores: int = 1
    threads: int = 1

    @property
    def vcpus(self) -> int:
        return self.sockets * self.dies * self.cores * self.threads


@dataclass(frozen=True, slots=True)
class CpuSpec:
    """A domain's ``<cpu>`` (libvirt formatdomain, "CPU model and topology").

    ``mode``: host-model | host-passthrough | maximum | custom (then ``model`` names
    a CPU model such as ``Skylake-Server``). ``features``: (name, policy) pairs,
    sorted by name, policy one of ``CPU_FEATURE_POLICIES``. ``migratable``: None
    leaves libvirt's default (on), only meaningful for host-passthrough and maximum.
    """

    mode: str = "host-model"
    model: str | None = None
    features: tuple[tuple[str, str], ...] = ()
    topology: CpuTopology | None = None
    migratable: bool | None = None

    def describe(self) -> str:
        """The canonical one-line form that plans show and ownership records keep:
        ``host-model``, ``Skylake-Server``, or e.g. ``host-passthrough, arch-capabilities=disable,
        topology 1s/1d/2c/1t, migratable off``. Equal meanings give equal text: features
        are sorted, a missing ``dies`` is 1, and migratable on (the default) is not said."""
        parts = [self.model if self.mode == "custom" and self.model else self.mode]
        parts += [f"{name}={policy}" for name, policy in self.features]
        if self.topology is not None:
            t = self.topology
            parts.append(f"topology {t.sockets}s/{t.dies}d/{t.cores}c/{t.threads}t")
        if self.migratable is False:
            parts.append("migratable off")
        return ", ".join(parts)


def _topology_hint(t: CpuTopology, vcpus: int) -> str:
    """A topology close to ``t`` whose product is ``vcpus``: cores adjusted when the
    other counts divide it, else everything in cores."""
    rest = t.sockets * t.dies * t.threads
    if vcpus % rest == 0:
        return f"cores: {vcpus // rest}"
    return f"sockets: 1, dies: 1, cores: {vcpus}, threads: 1"


def clock_text(offset: str, **attrs: object) -> str:
    """A clock's canonical text: its offset, then its attributes sorted (``absolute
    start=1234``, ``variable adjustment=3600 basis=utc``); ``utc`` alone."""
    return " ".join([offset, *(f"{k}={attrs[k]}" for k in sorted(attrs) if attrs[k] is not None)])


def clock_parts(text: str) -> tuple[str, dict[str, str]]:
    """The inverse of ``clock_text``: (offset, attributes)."""
    offset, *rest = text.split(" ")
    return offset, dict(item.split("=", 1) for item in rest)


def clock_from_manifest(value: object) -> tuple[str, list[FieldProblem]]:
    """A ``clock`` as a manifest writes it (``utc``, ``localtime``, or a mapping with
    ``offset`` and libvirt's attributes for it: ``absolute`` needs ``start`` (seconds
    since the epoch), ``timezone`` needs ``timezone``, ``variable`` takes ``adjustment``
    (seconds) and ``basis``; ``utc``/``localtime`` take ``adjustment: reset``)
    -> (canonical text, problems). formatdomain "Time keeping"."""
    where: FieldPath = ("spec", "clock")
    if isinstance(value, str):
        return value, []
    assert isinstance(value, Mapping)
    offset = str(value.get("offset", "utc"))
    attrs = {k: value.get(k) for k in _CLOCK_ATTRS}
    allowed = {"absolute": {"start"}, "timezone": {"timezone"},
               "variable": {"adjustment", "basis"}, "utc": {"adjustment"},
               "localtime": {"adjustment"}}.get(offset, set())  # fmt: skip
    problems = [
        FieldProblem((*where, k), f"{k} does not go with offset {offset}",
                     f"libvirt takes {', '.join(sorted(allowed)) or 'nothing more'} with it")
        for k, v in attrs.items() if v is not None and k not in allowed
    ]  # fmt: skip
    need = {"absolute": "start", "timezone": "timezone"}.get(offset)
    if need is not None and attrs[need] is None:
        problems.append(FieldProblem((*where, need), f"offset {offset} needs {need}"))
    if offset in ("utc", "localtime") and attrs["adjustment"] not in (None, "reset"):
        problems.append(FieldProblem((*where, "adjustment"),
                                     f"offset {offset} takes only adjustment: reset",
                                     "use offset: variable for a fixed adjustment"))  # fmt: skip
    return clock_text(offset, **attrs), problems


def cpu_from_manifest(value: object) -> CpuSpec:
    """A ``cpu`` as a manifest writes it (a mode or model name, or a mapping that passed
    the schema) -> ``CpuSpec``. Raises ``SpecError`` (paths under ``("spec", "cpu")``)
    for combinations libvirt refuses."""
    where: FieldPath = ("spec", "cpu")
    if isinstance(value, str):
        if value == "custom":
            raise SpecError([FieldProblem(where, "custom needs a model",
                                          "write the model's name, e.g. cpu: EPYC")])  # fmt: skip
        if value in CPU_MODES:
            return CpuSpec(mode=value)
        if _CPU_MODEL_NAME.fullmatch(value) is None:
            raise SpecError([FieldProblem(where, f"{value!r} is not a CPU model name",
                                          "e.g. EPYC or Skylake-Server")])  # fmt: skip
        return CpuSpec(mode="custom", model=value)
    assert isinstance(value, Mapping)
    problems: list[FieldProblem] = []
    model = value.get("model")
    mode = value.get("mode", "custom" if model is not None else "host-model")
    if mode == "custom" and model is None:
        problems.append(
            FieldProblem((*where, "mode"), "mode custom needs a model",
                         "add e.g. model: Skylake-Server, or use mode: host-model")
        )  # fmt: skip
    if mode != "custom" and model is not None:
        problems.append(
            FieldProblem((*where, "model"), f"a model goes with mode custom, not {mode}",
                         "remove mode (a model implies custom), or remove model")
        )  # fmt: skip
    migratable = value.get("migratable")
    if migratable is not None and mode not in ("host-passthrough", "maximum"):
        problems.append(
            FieldProblem((*where, "migratable"),
                         f"migratable applies to host-passthrough and maximum, not {mode}",
                         "remove migratable")
        )  # fmt: skip
    if model is not None and _CPU_MODEL_NAME.fullmatch(str(model)) is None:
        problems.append(FieldProblem((*where, "model"), f"{model!r} is not a CPU model name",
                                     "e.g. EPYC or Skylake-Server"))  # fmt: skip
    topology = None
    if "topology" in value:
        t = value["topology"]
        topology = CpuTopology(  # int(): JSON Schema's integer admits 2.0
            sockets=int(t.get("sockets", 1)), dies=int(t.get("dies", 1)),
            cores=int(t.get("cores", 1)), threads=int(t.get("threads", 1)),
        )  # fmt: skip
    features = tuple(sorted((str(k), str(v)) for k, v in value.get("features", {}).items()))
    for name, _ in features:
        if _CPU_FEATURE_NAME.fullmatch(name) is None:
            problems.append(FieldProblem((*where, "features", name),
                                         f"{name!r} is not a CPU feature name",
                                         "e.g. arch-capabilities or sse4.2"))  # fmt: skip
    if problems:
        raise SpecError(problems)
    return CpuSpec(mode=mode, model=model, features=features, topology=topology,
                   migratable=migratable)  # fmt: skip


def cpu_manifest(cpu: CpuSpec) -> str | dict[str, Any]:
    """The inverse of ``cpu_from_manifest``: the shortest manifest form of ``cpu``
    (a string when the mode or model alone says it), for ``export``."""
    name = cpu.model if cpu.mode == "custom" and cpu.model else cpu.mode
    if not cpu.features and cpu.topology is None and cpu.migratable is not False:
        return str(name)
    out: dict[str, Any] = {"model": cpu.model} if cpu.mode == "custom" else {"mode": cpu.mode}
    if cpu.features:
        out["features"] = dict(cpu.features)
    if cpu.topology is not None:
        t = cpu.topology
        out["topology"] = {"sockets": t.sockets, "dies": t.dies, "cores": t.cores,
                           "threads": t.threads}  # fmt: skip
    if cpu.migratable is False:  # on is libvirt's default
        out["migratable"] = False
    return out


@dataclass(frozen=True, slots=True)
class CloudInit:
    """A NoCloud seed (cloudinit.py), stored in volume ``<vm>-cidata`` and attached as a
    CD-ROM at ``target`` on ``bus``. ``pool`` None: the pool of the first volume disk."""

    user_data: str | None = None
    meta_data: Mapping[str, Any] = field(default_factory=dict)
    network_config: Mapping[str, Any] | None = None
    pool: str | None = None
    target: str = "hdd"
    bus: str = "ide"


@dataclass(frozen=True, slots=True)
class VirtualMachineSpec:
    memory: int
    max_memory: int
    vcpus: int
    max_vcpus: int
    type: str = "kvm"
    machine: str = "pc"
    firmware: str = "bios"
    cpu: CpuSpec | None = None  # None: no <cpu>, the hypervisor's default
    clock: str = "utc"  # canonical: "utc", "absolute start=1234" (clock_text)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: tuple[Disk, ...] = ()
    cdroms: tuple[Cdrom, ...] = ()
    boot: tuple[str, ...] = ("disk",)
    interfaces: tuple[Interface, ...] = ()
    graphics: Graphics | None = None
    inputs: tuple[str, ...] = ()
    serial: str = "pty"  # pty | none | file
    serial_file: str | None = None
    cloud_init: CloudInit | None = None
    state: str = "running"
    autostart: bool = False
    shutdown_timeout: float = 120.0
    update_policy: str | None = None  # None: the configured default
    adopt: bool = False
    xml: tuple[XmlEdit, ...] = ()  # the escape hatch (xml/edits.py), applied in order


class Locator(Protocol):
    """Finds where a field is written: (line, column), 1-based, or None."""

    def position(self, path: FieldPath, *, key: bool = False) -> tuple[int, int] | None: ...


Spec: TypeAlias = StoragePoolSpec | VolumeSpec | NetworkSpec | VirtualMachineSpec


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """One validated document: what it declares and where it was written."""

    kind: Kind
    metadata: Metadata
    spec: Spec
    source: SourcePosition
    document: Mapping[str, Any] = field(compare=False, repr=False)
    locator: Locator | None = field(default=None, compare=False, repr=False)
    # dotted spec paths whose value came from the host's vmDefaults (hostdefaults.py)
    host_defaults: tuple[str, ...] = ()
    host_defaults_origin: str = ""  # the configuration file they came from

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> tuple[Kind, str]:
        return (self.kind, self.metadata.name)

    def position(self, path: FieldPath) -> SourcePosition:
        """Where ``path`` (or its nearest written ancestor) is in the file."""
        key = False
        while path and self.locator is not None:
            found = self.locator.position(path, key=key)
            if found is not None:
                return SourcePosition(self.source.path, *found)
            path, key = path[:-1], True
        return self.source


# --- building ---------------------------------------------------------------


def derived_mac(vm_name: str, index: int) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range for interface ``index``."""
    digest = hashlib.sha256(f"{vm_name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def seed_volume_name(vm_name: str) -> str:
    """The volume holding a VM's cloud-init seed (cloudinit.py): ``<vm>-cidata``."""
    return f"{vm_name}-cidata"


def is_q35(machine: str) -> bool:
    return "q35" in machine


_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}
_IDE_TARGETS = ("hda", "hdb", "hdc", "hdd")


def target_names(bus: str) -> tuple[str, ...]:
    """The device names a disk on ``bus`` can have, in the order they are given out."""
    return _IDE_TARGETS if bus == "ide" else _target_names(_TARGET_PREFIX[bus])


def target_fits(target: str, bus: str) -> bool:
    """Whether ``target`` names a device on ``bus`` (``vdb`` on virtio)."""
    return target.startswith(_TARGET_PREFIX.get(bus, "?"))


@functools.cache
def _target_names(prefix: str) -> tuple[str, ...]:
    """Device names in libvirt's order: vda..vdz, vdaa..vdzz."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return tuple(prefix + a for a in letters) + tuple(
        prefix + a + b for a in letters for b in letters
    )


def xml_edits(raw: Mapping[str, Any]) -> tuple[XmlEdit, ...]:
    """A spec's ``xml`` entries (the escape hatch), as the schema admits them."""
    return tuple(
        XmlEdit(xpath=e["xpath"], value=e.get("value"), add=e.get("add"),
                delete=bool(e.get("delete", False)))
        for e in raw.get("xml", ())
    )  # fmt: skip


def build_manifest(
    document: Mapping[str, Any],
    source: SourcePosition,
    locator: Locator | None = None,
) -> Manifest:
    """Turn one schema-valid document into a ``Manifest``, or raise ``SpecError``."""
    kind = Kind(document["kind"])
    meta = document["metadata"]
    metadata = Metadata(
        name=meta["name"],
        labels=dict(meta.get("labels", {})),
        hosts=tuple(meta.get("hosts", ())),
    )
    problems: list[FieldProblem] = []
    raw = document["spec"]
    spec: Spec
    if kind is Kind.STORAGE_POOL:
        spec = _build_pool(raw, problems)
    elif kind is Kind.VOLUME:
        spec = _build_volume(raw, problems)
    elif kind is Kind.NETWORK:
        spec = _build_network(raw, problems)
    else:
        spec = _build_vm(metadata.name, raw, problems)
    if problems:
        raise SpecError(problems)
    return Manifest(
        kind=kind,
        metadata=metadata,
        spec=spec,
        source=source,
        document=document,
        locator=locator,
    )


def _within_libvirt(
    raw: Mapping[str, Any], fields: tuple[str, ...], problems: list[FieldProblem]
) -> None:
    """A problem for each size field of ``raw`` too large for libvirt (``units.MAX_SIZE``):
    refused here, at its line, rather than by libvirt at apply."""
    for name in fields:
        if name in raw and (why := too_large(parse_size(raw[name]))) is not None:
            problems.append(FieldProblem(("spec", name), f"{raw[name]} {why}",
                                         "give a smaller size"))  # fmt: skip


POOL_TYPES = ("dir", "fs", "netfs", "logical", "disk", "iscsi", "zfs")
"""The pool types a manifest can name (formatstorage "Storage pool XML")."""

POOL_PATH_TYPES = frozenset({"dir", "fs", "netfs"})
"""Pool types whose target path is a folder libvirt makes or mounts on: named, always."""

POOL_BUILT_TYPES = frozenset({"logical", "fs", "disk", "zfs"})
"""Pool types whose build writes on a device (vgcreate, mkfs, a partition table, zpool
create): built only when the manifest says ``build: true``, and never over data."""

# spec.source fields each type has, and the formats libvirt 9.0 offers for it
# (`virsh pool-capabilities`, <poolOptions><enum name='sourceFormatType'>)
_POOL_SOURCE: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "dir": (frozenset(), ()),
    "fs": (frozenset({"device", "format"}),
           ("auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat",
            "hfs+", "xfs", "ocfs2", "vmfs")),
    "netfs": (frozenset({"host", "dir", "format"}), ("auto", "nfs", "glusterfs", "cifs")),
    "logical": (frozenset({"devices", "name", "format"}), ("lvm2",)),
    "disk": (frozenset({"device", "format"}),
             ("dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2")),
    "iscsi": (frozenset({"host", "port", "iqn", "initiator"}), ()),
    "zfs": (frozenset({"name", "devices"}), ()),
}
_POOL_SOURCE_NEEDED = {"fs": ("device",), "disk": ("device",), "netfs": ("host", "dir"),
                       "iscsi": ("host", "iqn")}  # fmt: skip


def _build_pool(raw: Mapping[str, Any], problems: list[FieldProblem]) -> StoragePoolSpec:
    """A StoragePoolSpec from a schema-valid ``spec``; each field that does not fit the
    pool's ``type`` a problem at its path (formatstorage: which source elements each
    pool type reads)."""
    kind = raw.get("type", "dir")
    rs: Mapping[str, Any] = raw.get("source", {})
    allowed, formats = _POOL_SOURCE.get(kind, (frozenset(), ()))
    if "devices" in allowed:
        allowed = allowed | {"device"}  # one physical volume or disk, written alone
    for key in rs:
        if key not in allowed:
            can = ", ".join(sorted(allowed)) or "no source"
            problems.append(FieldProblem(("spec", "source", key),
                                         f"a {kind} pool has no source.{key}",
                                         f"a {kind} pool takes {can}"))  # fmt: skip
    for key in _POOL_SOURCE_NEEDED.get(kind, ()):
        if key not in rs:
            problems.append(FieldProblem(("spec", "source"),
                                         f"a {kind} pool needs source.{key}",
                                         f"add source.{key}"))  # fmt: skip
    fmt = rs.get("format")
    if fmt is not None and formats and fmt not in formats:
        problems.append(FieldProblem(("spec", "source", "format"),
                                     f"format {fmt} is not a {kind} pool format",
                                     "one of " + ", ".join(formats)))  # fmt: skip
    devices = tuple(rs["devices"]) if "devices" in rs else ()
    if "device" in rs:
        devices = (rs["device"],)
    path = raw.get("path")
    if path is None and kind in POOL_PATH_TYPES:
        problems.append(FieldProblem(("spec",), f"a {kind} pool needs a path",
                                     "add path: the folder it keeps its volumes in"))  # fmt: skip
    build = bool(raw.get("build", False))
    if build and kind == "iscsi":
        problems.append(FieldProblem(("spec", "build"),
                                     "an iscsi pool is not built (its LUNs are made on "
                                     "the target)", "drop build"))  # fmt: skip
    if build and kind in ("logical", "zfs") and not devices:
        problems.append(FieldProblem(("spec", "build"),
                                     f"building a {kind} pool needs the devices to build "
                                     "it on", "add source.devices"))  # fmt: skip
    return StoragePoolSpec(
        path=None if path is None else (path.rstrip("/") or "/"),
        type=kind,
        state=raw.get("state", "active"),
        autostart=raw.get("autostart", False),
        adopt=raw.get("adopt", False),
        source=PoolSource(
            devices=devices,
            name=rs.get("name"),
            host=rs.get("host"),
            port=rs.get("port"),
            dir=None if rs.get("dir") is None else (rs["dir"].rstrip("/") or "/"),
            format=fmt,
            iqn=rs.get("iqn"),
            initiator=rs.get("initiator"),
        ),
        build=build,
        xml=xml_edits(raw),
    )


def _build_volume(raw: Mapping[str, Any], problems: list[FieldProblem]) -> VolumeSpec:
    source = raw.get("source")
    remote = source if isinstance(source, Mapping) else None
    spec = VolumeSpec(
        pool=raw["pool"],
        capacity=parse_size(raw["capacity"]),
        format=raw.get("format", "qcow2"),
        backing_volume=raw.get("backingVolume"),
        source=None if remote is not None else source,
        reclaim_policy=raw.get("reclaimPolicy", "retain"),
        adopt=raw.get("adopt", False),
        source_url=None if remote is None else remote["url"],
        source_sha256=None if remote is None else str(remote["sha256"]).lower(),
    )
    if remote is not None:
        _url_source_problems(spec, problems)
    if spec.capacity <= 0:
        problems.append(FieldProblem(("spec", "capacity"), "capacity must be more than 0"))
    _within_libvirt(raw, ("capacity",), problems)
    if spec.backing_volume and spec.format != "qcow2":
        problems.append(
            FieldProblem(
                ("spec", "format"),
                f"a {spec.format} volume cannot have a backingVolume",
                "use format: qcow2 for copy-on-write clones",
            )
        )
    return spec


def _url_source_problems(spec: VolumeSpec, problems: list[FieldProblem]) -> None:
    """``source: {url, sha256}``: an http(s) URL (imagefetch.url_problem), and a whole
    image: libvirt's upload fills a whole volume, so it cannot be stored as differences
    from a backingVolume."""
    problem = imagefetch.url_problem(str(spec.source_url))
    if problem is not None:
        problems.append(FieldProblem(("spec", "source", "url"), problem,
                                     "give an http:// or https:// URL"))  # fmt: skip
    if spec.backing_volume:
        problems.append(FieldProblem(
            ("spec", "backingVolume"),
            "a volume from a URL holds the whole image and cannot have a backingVolume",
            "make the URL's image its own Volume and name that one as backingVolume of "
            "this volume (without source)"))  # fmt: skip


def _build_network(raw: Mapping[str, Any], problems: list[FieldProblem]) -> NetworkSpec:
    ipv4 = None
    if "ipv4" in raw:
        r4 = raw["ipv4"]
        dhcp = None
        if "dhcp" in r4:
            rd = r4["dhcp"]
            dhcp = Dhcp(
                start=rd["start"],
                end=rd["end"],
                hosts=tuple(
                    DhcpHost(mac=h["mac"].lower(), ip=h["ip"], name=h.get("name"))
                    for h in rd.get("hosts", ())
                ),
            )
        ipv4 = Ipv4(address=r4["address"], prefix=r4["prefix"], dhcp=dhcp)
    spec = NetworkSpec(
        mode=raw.get("mode", "nat"),
        bridge=raw.get("bridge"),
        mtu=raw.get("mtu"),
        domain=raw.get("domain"),
        ipv4=ipv4,
        dns_hosts=tuple(
            DnsHost(ip=h["ip"], names=tuple(h["names"])) for h in raw.get("dnsHosts", ())
        ),
        state=raw.get("state", "active"),
        autostart=raw.get("autostart", False),
        adopt=raw.get("adopt", False),
        xml=xml_edits(raw),
    )
    if spec.mode == "bridge":
        if spec.bridge is None:
            problems.append(
                FieldProblem(
                    ("spec",),
                    "mode bridge needs 'bridge', the existing host bridge",
                    "add e.g. bridge: br0",
                )
            )
        for name in ("ipv4", "domain", "dnsHosts"):
            if name in raw:
                problems.append(
                    FieldProblem(
                        ("spec", name),
                        f"mode bridge cannot have {name}",
                        "addresses on a host bridge come from the LAN, not from libvirt",
                    )
                )
    elif spec.mode in ("nat", "route") and spec.ipv4 is None:
        problems.append(
            FieldProblem(
                ("spec",),
                f"mode {spec.mode} needs 'ipv4' (address and prefix)",
                "add e.g. ipv4: {address: 10.100.0.1, prefix: 24}",
            )
        )
    if spec.ipv4 is not None:
        _check_ipv4(spec.ipv4, spec.dns_hosts, problems)
    return spec


def _check_ipv4(ipv4: Ipv4, dns_hosts: tuple[DnsHost, ...], problems: list[FieldProblem]) -> None:
    iface = ipaddress.IPv4Interface(f"{ipv4.address}/{ipv4.prefix}")
    net = iface.network
    if iface.ip in (net.network_address, net.broadcast_address):
        which = "network" if iface.ip == net.network_address else "broadcast"
        problems.append(
            FieldProblem(
                ("spec", "ipv4", "address"),
                f"{ipv4.address} is the {which} address of {net}",
                "use a host address such as " + str(next(net.hosts())),
            )
        )

    def inside(value: str, where: FieldPath) -> None:
        if ipaddress.IPv4Address(value) not in net:
            problems.append(FieldProblem(where, f"{value} is outside the network {net}"))

    if ipv4.dhcp is not None:
        inside(ipv4.dhcp.start, ("spec", "ipv4", "dhcp", "start"))
        inside(ipv4.dhcp.end, ("spec", "ipv4", "dhcp", "end"))
        if ipaddress.IPv4Address(ipv4.dhcp.start) > ipaddress.IPv4Address(ipv4.dhcp.end):
            problems.append(
                FieldProblem(
                    ("spec", "ipv4", "dhcp", "end"),
                    f"range end {ipv4.dhcp.end} is before its start {ipv4.dhcp.start}",
                )
            )
        seen_macs: dict[str, int] = {}
        seen_ips: dict[str, int] = {}
        for i, host in enumerate(ipv4.dhcp.hosts):
            where: FieldPath = ("spec", "ipv4", "dhcp", "hosts", i)
            inside(host.ip, (*where, "ip"))
            if host.mac in seen_macs:
                problems.append(
                    FieldProblem(
                        (*where, "mac"),
                        f"MAC {host.mac} already has a lease at hosts[{seen_macs[host.mac]}]",
                    )
                )
            if host.ip in seen_ips:
                problems.append(
                    FieldProblem(
                        (*where, "ip"), f"IP {host.ip} already leased at hosts[{seen_ips[host.ip]}]"
                    )
                )
            seen_macs.setdefault(host.mac, i)
            seen_ips.setdefault(host.ip, i)
    seen_dns: dict[str, int] = {}
    for i, dns in enumerate(dns_hosts):
        inside(dns.ip, ("spec", "dnsHosts", i, "ip"))
        # libvirt's net-update finds a DNS host by IP: two entries of one IP are a
        # "multiple matching DNS HOST records" error at every later update
        if dns.ip in seen_dns:
            problems.append(
                FieldProblem(
                    ("spec", "dnsHosts", i, "ip"),
                    f"IP {dns.ip} already has an entry at dnsHosts[{seen_dns[dns.ip]}]",
                    "list all names under one entry",
                )
            )
        seen_dns.setdefault(dns.ip, i)


def _build_vm(
    name: str, raw: Mapping[str, Any], problems: list[FieldProblem]
) -> VirtualMachineSpec:
    vm_type = raw.get("type", "kvm")
    machine = raw.get("machine", "pc")
    memory = parse_size(raw["memory"])
    max_memory = parse_size(raw["maxMemory"]) if "maxMemory" in raw else memory
    if memory < 1024**2:
        problems.append(FieldProblem(("spec", "memory"), "memory must be at least 1MiB"))
    _within_libvirt(raw, ("memory", "maxMemory"), problems)
    timeout = raw.get("shutdownTimeout", "120s")
    if (why := too_long(parse_duration(timeout))) is not None:
        problems.append(FieldProblem(("spec", "shutdownTimeout"), f"{timeout} {why}",
                                     "give 24h or less (the VM is then forced off)"))  # fmt: skip
    if max_memory < memory:
        problems.append(
            FieldProblem(
                ("spec", "maxMemory"),
                f"maxMemory ({raw.get('maxMemory')}) is less than memory ({raw['memory']})",
                "raise maxMemory or lower memory",
            )
        )
    vcpus = int(raw.get("vcpus", 1))  # int(): JSON Schema's integer admits 2.0
    max_vcpus = int(raw.get("maxVcpus", vcpus))
    if max_vcpus < vcpus:
        problems.append(
            FieldProblem(
                ("spec", "maxVcpus"), f"maxVcpus ({max_vcpus}) is less than vcpus ({vcpus})"
            )
        )
    cpu: CpuSpec | None = None
    if raw.get("cpu") == CPU_HYPERVISOR_DEFAULT:
        cpu = None
    elif "cpu" in raw:
        try:
            cpu = cpu_from_manifest(raw["cpu"])
        except SpecError as exc:
            problems += exc.problems
    elif vm_type == "kvm":
        cpu = CpuSpec()
    if cpu is not None and vm_type == "qemu" and cpu.mode == "host-passthrough":
        problems.append(
            FieldProblem(
                ("spec", "cpu", "mode") if isinstance(raw.get("cpu"), Mapping) else ("spec", "cpu"),
                "host-passthrough needs type kvm",
                "use host-model, maximum or a named model",
            )
        )
    if cpu is not None and cpu.topology is not None and cpu.topology.vcpus != max_vcpus:
        t = cpu.topology
        problems.append(
            FieldProblem(
                ("spec", "cpu", "topology"),
                f"topology gives {t.sockets}x{t.dies}x{t.cores}x{t.threads} = {t.vcpus} vCPUs,"
                f" but maxVcpus is {max_vcpus}",
                "sockets x dies x cores x threads must equal maxVcpus (or vcpus when maxVcpus"
                f" is not set), e.g. {_topology_hint(t, max_vcpus)}",
            )
        )
    for key in ("initrd", "cmdline"):
        if key in raw and "kernel" not in raw:
            problems.append(FieldProblem(("spec", key), f"{key} needs kernel (direct kernel boot)"))

    used: set[str] = set()
    for section in ("disks", "cdroms"):
        for i, item in enumerate(raw.get(section, ())):
            target = item.get("target")
            if target is None:
                continue
            if target in used:
                problems.append(
                    FieldProblem(("spec", section, i, "target"), f"target {target} is used twice")
                )
            used.add(target)
    q35 = is_q35(machine)

    def next_target(bus: str, where: FieldPath) -> str:
        prefix = _TARGET_PREFIX[bus]
        candidates = _IDE_TARGETS if bus == "ide" else _target_names(prefix)
        for candidate in candidates:
            if candidate not in used:
                used.add(candidate)
                return candidate
        problems.append(FieldProblem(where, f"no free {bus} device name left"))
        return prefix + "?"

    def check_bus(bus: str, where: FieldPath) -> None:
        if bus == "ide" and q35:
            problems.append(
                FieldProblem(where, f"machine {machine} has no IDE bus", "use bus: sata")
            )

    def check_target_bus(target: str | None, bus: str, where: FieldPath) -> None:
        if target is not None and not target.startswith(_TARGET_PREFIX[bus]):
            problems.append(
                FieldProblem(
                    where,
                    f"target {target} does not fit bus {bus}",
                    f"{bus} devices are named {_TARGET_PREFIX[bus]}a, {_TARGET_PREFIX[bus]}b, ...;"
                    " or remove target: to let reconciler choose",
                )
            )

    disks = []
    images: dict[str, int] = {}
    for i, d in enumerate(raw.get("disks", ())):
        if isinstance(d.get("file"), str):  # one image, one spelling: its identity
            d = {**d, "file": plain_path(d["file"])}
        image = d.get("volume") or d.get("file")
        if image is not None:
            if image in images:
                what = "volume" if "volume" in d else "file"
                problems.append(
                    FieldProblem(
                        ("spec", "disks", i, what),
                        f"{what} {image} is already disks[{images[image]}]: a disk is known"
                        " by its image, and two writers of one image corrupt it",
                        "list each image once",
                    )
                )
            images.setdefault(image, i)
        bus = d.get("bus", "virtio")
        check_bus(bus, ("spec", "disks", i, "bus"))
        check_target_bus(d.get("target"), bus, ("spec", "disks", i, "target"))
        if "volume" in d and "format" in d:
            problems.append(
                FieldProblem(
                    ("spec", "disks", i, "format"),
                    "a volume disk takes its format from the Volume",
                    "remove format here, or set it on the Volume manifest",
                )
            )
        disks.append(
            Disk(
                target=d.get("target") or next_target(bus, ("spec", "disks", i)),
                bus=bus,
                volume=d.get("volume"),
                file=d.get("file"),
                format=d.get("format", "raw" if "file" in d else None),
                cache=d.get("cache"),
                readonly=d.get("readonly", False),
                serial=d.get("serial"),
                target_declared="target" in d,
            )
        )
    cdroms = []
    for i, c in enumerate(raw.get("cdroms", ())):
        bus = c.get("bus", "sata" if q35 else "ide")
        check_bus(bus, ("spec", "cdroms", i, "bus"))
        check_target_bus(c.get("target"), bus, ("spec", "cdroms", i, "target"))
        cdroms.append(
            Cdrom(
                target=c.get("target") or next_target(bus, ("spec", "cdroms", i)),
                bus=bus,
                file=plain_path(c["file"]) if isinstance(c.get("file"), str) else None,
            )
        )

    interfaces = []
    seen_macs: dict[str, int] = {}
    for i, n in enumerate(raw.get("interfaces", ())):
        mac = n.get("mac", derived_mac(name, i)).lower()
        if int(mac[:2], 16) & 1:
            problems.append(
                FieldProblem(
                    ("spec", "interfaces", i, "mac"),
                    f"{mac} is a multicast address",
                    "the first byte must be even, e.g. 52:54:00:...",
                )
            )
        if mac in seen_macs:
            problems.append(
                FieldProblem(
                    ("spec", "interfaces", i, "mac"),
                    f"MAC {mac} is already used by interfaces[{seen_macs[mac]}]",
                )
            )
        seen_macs.setdefault(mac, i)
        interfaces.append(
            Interface(
                mac=mac,
                network=n.get("network"),
                bridge=n.get("bridge"),
                model=n.get("model", "virtio"),
                boot_rom=n.get("bootRom", "network" in raw.get("boot", ())),
                **_nic_extras(n, i, problems),
            )
        )

    # Device classes, as libvirt's <boot dev>: a class may be met by a device the
    # manifest does not manage (a host CD-ROM drive kept on adoption), and firmware
    # skips a class with no device. [] is no <boot dev> (devices carry <boot order>).
    boot = tuple(raw.get("boot", ("disk",)))
    clock, clock_problems = clock_from_manifest(raw.get("clock", "utc"))
    problems += clock_problems

    graphics = None
    if "graphics" in raw:
        g = raw["graphics"]
        port = g.get("port", "auto")
        graphics = Graphics(
            type=g.get("type", "vnc"),
            port=None if port == "auto" else port,
            listen=g.get("listen", "127.0.0.1"),  # null: no address (qemu.conf's)
            keymap=g.get("keymap"),
            password_file=g.get("passwordFile"),
        )
        if graphics.type == "none":
            graphics = None

    serial_raw = raw.get("serial", "pty")
    serial, serial_file = (
        ("file", serial_raw["file"]) if isinstance(serial_raw, Mapping) else (serial_raw, None)
    )
    cloud_init = None
    if "cloudInit" in raw:
        ci = raw["cloudInit"]
        if "pool" not in ci and not any(d.volume for d in disks):
            problems.append(
                FieldProblem(
                    ("spec", "cloudInit"),
                    "cloudInit needs a storage pool for its seed volume, and this VM has no "
                    "volume disk to take it from",
                    "add cloudInit.pool: <a StoragePool>",
                )
            )
        # The seed comes last, so that it never takes a name a manifest's device had.
        # On IDE it takes the last free slot (hdd, as installers do): adding a CD-ROM
        # then does not move it.
        bus = "sata" if q35 else "ide"
        where: FieldPath = ("spec", "cloudInit")
        if bus == "ide" and "hdd" not in used:
            used.add("hdd")
            target = "hdd"
        else:
            target = next_target(bus, where)
        cloud_init = CloudInit(
            user_data=ci.get("userData"),
            meta_data=dict(ci.get("metaData", {})),
            network_config=ci.get("networkConfig"),
            pool=ci.get("pool"),
            target=target,
            bus=bus,
        )

    return VirtualMachineSpec(
        memory=memory,
        max_memory=max_memory,
        vcpus=vcpus,
        max_vcpus=max_vcpus,
        type=vm_type,
        machine=machine,
        firmware=raw.get("firmware", "bios"),
        cpu=cpu,
        clock=clock,
        kernel=raw.get("kernel"),
        initrd=raw.get("initrd"),
        cmdline=raw.get("cmdline"),
        disks=tuple(disks),
        cdroms=tuple(cdroms),
        boot=boot,
        interfaces=tuple(interfaces),
        graphics=graphics,
        inputs=tuple(raw.get("inputs", ())),
        serial=serial,
        serial_file=serial_file,
        cloud_init=cloud_init,
        state=raw.get("state", "running"),
        autostart=raw.get("autostart", False),
        shutdown_timeout=parse_duration(raw.get("shutdownTimeout", "120s")),
        update_policy=raw.get("updatePolicy"),
        adopt=raw.get("adopt", False),
        xml=xml_edits(raw),
    )
