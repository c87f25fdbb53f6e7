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

import dataclasses
import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeAlias

from reconciler import imagefetch
from reconciler.errors import SourcePosition
from reconciler.tuning import Tuning
from reconciler.tuning import from_manifest as tuning_from_manifest
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
class DhcpRange:
    """One ``<range start= end=/>`` of an ``<ip>``'s ``<dhcp>`` (formatnetwork: Addressing)."""

    start: str
    end: str


@dataclass(frozen=True, slots=True)
class Dhcp:
    """``start``/``end``: the first range (the others kept), as before; ``ranges`` (the
    manifest named ``ranges``): the exact set, ``start``/``end`` then its first."""

    start: str
    end: str
    hosts: tuple[DhcpHost, ...] = ()
    ranges: tuple[DhcpRange, ...] | None = None


@dataclass(frozen=True, slots=True)
class Ipv4:
    address: str
    prefix: int
    dhcp: Dhcp | None = None


@dataclass(frozen=True, slots=True)
class Dhcp6Host:
    """A DHCPv6 static lease: identified by its DUID (``id``) or, without one, its
    ``name`` (libvirt refuses a MAC in an IPv6 host)."""

    ip: str
    id: str | None = None
    name: str | None = None

    @property
    def key(self) -> str:
        return self.id or self.name or ""


@dataclass(frozen=True, slots=True)
class Dhcp6:
    start: str
    end: str
    hosts: tuple[Dhcp6Host, ...] = ()
    ranges: tuple[DhcpRange, ...] | None = None


@dataclass(frozen=True, slots=True)
class Ipv6:
    """The ``<ip family='ipv6'>`` (formatnetwork: Addressing); ``prefix`` 1-128."""

    address: str
    prefix: int
    dhcp: Dhcp6 | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A static ``<route>`` (formatnetwork: Static Routes), IPv4 or IPv6 by its address."""

    address: str
    prefix: int
    gateway: str
    metric: int | None = None


@dataclass(frozen=True, slots=True)
class DnsForwarder:
    """``<forwarder addr= domain=/>``: queries (for ``domain`` only, if given) go to
    ``addr``; a ``domain`` without ``addr`` is answered locally only."""

    addr: str | None = None
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class DnsSrv:
    service: str
    protocol: str
    domain: str | None = None
    target: str | None = None
    port: int | None = None
    priority: int | None = None
    weight: int | None = None

    @property
    def key(self) -> str:
        """``_service._protocol.domain`` ``target:port``: what tells two records apart."""
        return "/".join((self.service, self.protocol, self.domain or "", self.target or "",
                         "" if self.port is None else str(self.port)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class DnsTxt:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Dns:
    """The ``<dns>`` parts a manifest names (None: not named, kept as they are)."""

    forwarders: tuple[DnsForwarder, ...] | None = None
    srv: tuple[DnsSrv, ...] | None = None
    txt: tuple[DnsTxt, ...] | None = None
    enable: bool | None = None


@dataclass(frozen=True, slots=True)
class Portgroup:
    """A ``<portgroup>`` (formatnetwork: Connectivity, portgroups)."""

    name: str
    default: bool = False
    vlan: tuple[int, ...] = ()
    inbound: Rate | None = None
    outbound: Rate | None = None


@dataclass(frozen=True, slots=True)
class Forward:
    """The device pool of a ``macvtap`` (``mode``: bridge, private, vepa, passthrough;
    ``interfaces``: host NICs) or ``hostdev`` network (``devices``: PCI addresses
    ``0000:01:00.1``, ``managed``)."""

    mode: str | None = None
    interfaces: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    managed: bool | None = None


@dataclass(frozen=True, slots=True)
class Nat:
    """``<forward mode='nat'><nat>``: the public address and port ranges of NAT."""

    address_start: str | None = None
    address_end: str | None = None
    port_start: int | None = None
    port_end: int | None = None


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
    # issue 13: managed only where the manifest names them (``declared``); None: kept
    ipv6: Ipv6 | None = None
    routes: tuple[Route, ...] | None = None
    dns: Dns = Dns()
    portgroups: tuple[Portgroup, ...] | None = None
    forward: Forward | None = None
    nat: Nat | None = None
    declared: frozenset[str] = frozenset()
    """The optional sections the manifest names (``ipv6``, ``routes``, ``dns.txt``...,
    ``ipv4.dhcp.ranges``): only those are managed (made exact)."""
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
    # formatdomain "Hard drives, floppy disks, CDROMs" (domain_storage.py): a host
    # block device as the source (<disk type='block'>), and the <driver>/<boot> knobs
    device: str | None = None
    discard: str | None = None  # unmap | ignore
    detect_zeroes: str | None = None  # off | on | unmap
    io: str | None = None  # native | threads | io_uring
    iothread: int | None = None
    shareable: bool | None = None  # None (as the other options): not named, kept
    boot_index: int | None = None  # <boot order='N'/>


@dataclass(frozen=True, slots=True)
class Cdrom:
    target: str
    bus: str
    file: str | None = None
    # a storage volume as the medium: only the cloud-init seed, made by the planner
    volume: str | None = None
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class Filesystem:
    """A host folder shared with the guest (formatdomain "Filesystems"), known by its
    mount tag (``target``). ``driver``: virtiofs or path (9p)."""

    source: str
    target: str
    driver: str = "virtiofs"
    readonly: bool = False
    access_mode: str = "passthrough"


@dataclass(frozen=True, slots=True)
class Hostdev:
    """A host device given to the guest (formatdomain "Host device assignment"), known
    by what names it on the host: ``pci`` with ``address`` (0000:03:00.0), ``usb`` with
    ``vendor``/``product`` (0x046d) or ``bus``/``device``."""

    type: str
    address: str | None = None
    vendor: str | None = None
    product: str | None = None
    bus: int | None = None
    device: int | None = None
    managed: bool = True


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
    devices: VmDevices = field(default_factory=lambda: VmDevices())
    state: str = "running"
    autostart: bool = False
    shutdown_timeout: float = 120.0
    update_policy: str | None = None  # None: the configured default
    adopt: bool = False
    # None: the manifest does not name the field, and the domain's are kept (domain_storage)
    filesystems: tuple[Filesystem, ...] | None = None
    hostdevs: tuple[Hostdev, ...] | None = None
    # memoryBacking, cputune, numa, iothreads (tuning.py); None in it: not managed
    tuning: Tuning = field(default_factory=Tuning)
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
    if build and kind == "fs" and fmt in (None, "auto"):
        # libvirt runs mkfs -t auto, which fails ("failed to execute mkfs.auto") after
        # the pool is defined
        at: FieldPath = ("spec", "source", "format") if fmt else ("spec", "build")
        problems.append(FieldProblem(at, "building an fs pool makes a filesystem, and needs "
                                     "to know which", "add source.format: ext4"))  # fmt: skip
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
            ranges = _dhcp_ranges(rd, ("spec", "ipv4", "dhcp"), problems)
            dhcp = Dhcp(
                start=ranges[0].start if ranges else rd.get("start", "0.0.0.0"),
                end=ranges[0].end if ranges else rd.get("end", "0.0.0.0"),
                ranges=ranges,
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
    spec = _network_vocabulary(raw, spec, problems)
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


def _dhcp_ranges(
    raw: Mapping[str, Any], where: FieldPath, problems: list[FieldProblem]
) -> tuple[DhcpRange, ...] | None:
    """``ranges`` (the exact set) or None; ``start``/``end`` and ``ranges`` are one or
    the other."""
    has_pair = "start" in raw or "end" in raw
    if "ranges" not in raw:
        if not ("start" in raw and "end" in raw):
            problems.append(FieldProblem(where, "dhcp needs 'start' and 'end', or 'ranges'",
                                         "add e.g. ranges: [{start: ..., end: ...}]"))  # fmt: skip
        return None
    if has_pair:
        problems.append(FieldProblem((*where, "ranges"),
                                     "dhcp has both 'start'/'end' and 'ranges'",
                                     "list the first range in 'ranges' instead"))  # fmt: skip
    ranges = tuple(DhcpRange(_canonical_ip(r["start"]), _canonical_ip(r["end"]))
                   for r in raw["ranges"])  # fmt: skip
    if not ranges:
        problems.append(FieldProblem((*where, "ranges"), "dhcp needs at least one range",
                                     "leave 'dhcp' out for no DHCP service"))  # fmt: skip
    return ranges


def _rate(raw: Mapping[str, Any] | None) -> Rate | None:
    if raw is None:
        return None
    return Rate(raw["average"], raw.get("peak"), raw.get("burst"))


def _network_vocabulary(
    raw: Mapping[str, Any], spec: NetworkSpec, problems: list[FieldProblem]
) -> NetworkSpec:
    """The issue-13 sections of a Network manifest (IPv6, DHCP ranges, routes, DNS
    forwarders/SRV/TXT, portgroups, the macvtap/hostdev device pool, NAT ranges), each
    recorded in ``declared`` when the manifest names it, and checked."""
    declared: set[str] = set()
    if spec.ipv4 is not None and spec.ipv4.dhcp is not None and spec.ipv4.dhcp.ranges is not None:
        declared.add("ipv4.dhcp.ranges")
    ipv6 = None
    if "ipv6" in raw:
        declared.add("ipv6")
        r6 = raw["ipv6"]
        if r6 is not None:
            dhcp6 = None
            if "dhcp" in r6:
                rd = r6["dhcp"]
                ranges = _dhcp_ranges(rd, ("spec", "ipv6", "dhcp"), problems)
                if ranges is not None:
                    declared.add("ipv6.dhcp.ranges")
                hosts = tuple(Dhcp6Host(ip=_canonical_ip(h["ip"]), id=h.get("id"),
                                        name=h.get("name"))
                              for h in rd.get("hosts", ()))  # fmt: skip
                dhcp6 = Dhcp6(start=ranges[0].start if ranges
                              else _canonical_ip(rd.get("start", "::")),
                              end=ranges[0].end if ranges else _canonical_ip(rd.get("end", "::")),
                              hosts=hosts, ranges=ranges)  # fmt: skip
            ipv6 = Ipv6(address=_canonical_ip(r6["address"]), prefix=r6["prefix"], dhcp=dhcp6)
            _check_ipv6(ipv6, problems)
    routes = None
    if "routes" in raw:
        declared.add("routes")
        routes = tuple(Route(_canonical_ip(r["address"]), r["prefix"],
                             _canonical_ip(r["gateway"]), r.get("metric"))
                       for r in raw["routes"])  # fmt: skip
        _check_routes(routes, problems)
    rdns = raw.get("dns") or {}
    dns = Dns(
        forwarders=None if "forwarders" not in rdns else tuple(
            DnsForwarder(None if f.get("addr") is None else _canonical_ip(f["addr"]),
                         f.get("domain")) for f in rdns["forwarders"]),
        srv=None if "srv" not in rdns else tuple(
            DnsSrv(r["service"], r["protocol"], r.get("domain"), r.get("target"), r.get("port"),
                   r.get("priority"), r.get("weight")) for r in rdns["srv"]),
        txt=None if "txt" not in rdns else tuple(
            DnsTxt(t["name"], t["value"]) for t in rdns["txt"]),
        enable=rdns.get("enable"),
    )  # fmt: skip
    declared.update(f"dns.{k}" for k in ("forwarders", "srv", "txt", "enable") if k in rdns)
    for i, fwd in enumerate(dns.forwarders or ()):
        if fwd.addr is None and fwd.domain is None:
            problems.append(FieldProblem(("spec", "dns", "forwarders", i),
                                         "a forwarder needs 'addr', 'domain' or both"))  # fmt: skip
    _unique(("spec", "dns", "srv"), [r.key for r in dns.srv or ()], "SRV record", problems)
    _unique(("spec", "dns", "txt"), [t.name for t in dns.txt or ()], "TXT name", problems)
    portgroups = None
    if "portgroups" in raw:
        declared.add("portgroups")
        portgroups = tuple(
            Portgroup(p["name"], p.get("default", False), tuple(p.get("vlan", ())),
                      _rate((p.get("bandwidth") or {}).get("inbound")),
                      _rate((p.get("bandwidth") or {}).get("outbound")))
            for p in raw["portgroups"])  # fmt: skip
        _unique(("spec", "portgroups"), [p.name for p in portgroups], "portgroup name", problems)
        if sum(p.default for p in portgroups) > 1:
            problems.append(FieldProblem(("spec", "portgroups"), "more than one portgroup "
                                         "has default: true", "mark one default"))  # fmt: skip
        for i, group in enumerate(portgroups):
            if group.vlan and spec.mode != "hostdev":
                problems.append(FieldProblem(
                    ("spec", "portgroups", i, "vlan"),
                    f"libvirt takes a portgroup vlan only on a hostdev network (not {spec.mode})",
                    "tag the VLAN on the host bridge, or use mode: hostdev"))  # fmt: skip
    forward = None
    if "forward" in raw or spec.mode in ("macvtap", "hostdev"):
        rf = raw.get("forward") or {}
        forward = Forward(
            mode=rf.get("mode", "bridge") if spec.mode == "macvtap" else None,
            interfaces=tuple(rf.get("interfaces", ())),
            devices=tuple(d.lower() for d in rf.get("devices", ())),
            managed=rf.get("managed"),
        )
        declared.add("forward")
        _check_forward(spec.mode, rf, forward, problems)
    nat = None
    if "nat" in raw:
        declared.add("nat")
        rn = raw["nat"] or {}
        addresses, ports = rn.get("addresses") or {}, rn.get("ports") or {}
        nat = Nat(addresses.get("start"), addresses.get("end"),
                  ports.get("start"), ports.get("end"))  # fmt: skip
        if spec.mode != "nat" and raw["nat"] is not None:
            problems.append(FieldProblem(("spec", "nat"), f"mode {spec.mode} has no NAT",
                                         "use mode: nat, or leave 'nat' out"))  # fmt: skip
        if (nat.port_start or 0) > (nat.port_end or 65535):
            problems.append(FieldProblem(
                ("spec", "nat", "ports", "end"),
                f"port {nat.port_end} is below start {nat.port_start}"))  # fmt: skip
        if (nat.address_start and nat.address_end and ipaddress.IPv4Address(nat.address_start)
                > ipaddress.IPv4Address(nat.address_end)):  # fmt: skip
            problems.append(FieldProblem(
                ("spec", "nat", "addresses", "end"),
                f"{nat.address_end} is before {nat.address_start}"))  # fmt: skip
    if spec.mode in ("macvtap", "hostdev", "bridge"):
        for name in ("ipv6", "routes", "dns"):
            if name in raw:
                problems.append(FieldProblem(
                    ("spec", name), f"mode {spec.mode} cannot have {name}",
                    "guests on a host device or bridge get addresses from the LAN, not libvirt"))
    if spec.mode in ("macvtap", "hostdev"):
        for name in ("ipv4", "domain", "dnsHosts", "bridge", "mtu"):
            if name in raw:
                problems.append(FieldProblem(
                    ("spec", name), f"mode {spec.mode} cannot have {name}",
                    "a macvtap or hostdev network has no bridge and no addresses of its own"))
    return dataclasses.replace(spec, ipv6=ipv6, routes=routes, dns=dns, portgroups=portgroups,
                               forward=forward, nat=nat, declared=frozenset(declared))  # fmt: skip


def _unique(where: FieldPath, keys: list[str], what: str, problems: list[FieldProblem]) -> None:
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in seen:
            problems.append(FieldProblem((*where, i), f"{what} {key} repeats entry {seen[key]}",
                                         "list each once"))  # fmt: skip
        seen.setdefault(key, i)


def _check_forward(mode: str, raw: Mapping[str, Any], forward: Forward,
                   problems: list[FieldProblem]) -> None:  # fmt: skip
    where: FieldPath = ("spec", "forward")
    if mode not in ("macvtap", "hostdev"):
        problems.append(FieldProblem(where, f"mode {mode} has no device pool ('forward')",
                                     "use mode: macvtap or mode: hostdev"))  # fmt: skip
    elif mode == "macvtap":
        if not forward.interfaces:
            problems.append(FieldProblem(where, "mode macvtap needs forward.interfaces",
                                         "add e.g. forward: {interfaces: [eth1]}"))  # fmt: skip
        for name in ("devices", "managed"):
            if name in raw:
                problems.append(FieldProblem((*where, name), f"'{name}' is for mode hostdev"))
    else:
        if not forward.devices:
            problems.append(FieldProblem(
                where, "mode hostdev needs forward.devices (PCI addresses of SR-IOV functions)",
                "add e.g. forward: {devices: ['0000:03:10.0']}"))  # fmt: skip
        for name in ("mode", "interfaces"):
            if name in raw:
                problems.append(FieldProblem((*where, name), f"'{name}' is for mode macvtap"))
    _unique((*where, "interfaces"), list(forward.interfaces), "interface", problems)
    _unique((*where, "devices"), list(forward.devices), "device", problems)


def _canonical_ip(value: str) -> str:
    """An IP address as libvirt writes it back (lowercase, zeros compressed: RFC 5952),
    so that ``FD00:0bad:0::1`` and libvirt's ``fd00:bad::1`` compare equal; a string
    that is no address is returned as it is (the checks report it)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return value.lower()  # (written ::ffff:a.b.c.d by libvirt, not by Python 3.11)
    return str(address)


def _not_addresses(named: Iterable[tuple[FieldPath, str]], version: int | None,
                   problems: list[FieldProblem]) -> bool:
    """Whether any of ``named`` (field path, value) is not an IP address (of IP
    ``version`` when given), each such added to ``problems``. The schema's IPv6 pattern
    lets through strings such as ``10.1.2.3`` or ``1:2``, which ``ipaddress`` refuses."""
    bad = False
    for where, value in named:
        try:
            found: int | None = ipaddress.ip_address(value).version
        except ValueError:
            found = None
        if found is None or (version is not None and found != version):
            what = f"an IPv{version}" if version is not None else "an IPv4 or IPv6"
            example = "fd00:100::1" if version == 6 else "10.0.0.1 or fd00:100::1"
            problems.append(FieldProblem(where, f"{value} is not {what} address",
                                         f"write one such as {example}"))  # fmt: skip
            bad = True
    return bad


def _check_ipv6(ipv6: Ipv6, problems: list[FieldProblem]) -> None:
    where: FieldPath = ("spec", "ipv6", "dhcp")
    named: list[tuple[FieldPath, str]] = [(("spec", "ipv6", "address"), ipv6.address)]
    if ipv6.dhcp is not None:
        if ipv6.dhcp.ranges is not None:
            for i, r in enumerate(ipv6.dhcp.ranges):
                named += [((*where, "ranges", i, "start"), r.start),
                          ((*where, "ranges", i, "end"), r.end)]  # fmt: skip
        else:
            named += [((*where, "start"), ipv6.dhcp.start), ((*where, "end"), ipv6.dhcp.end)]
        named += [((*where, "hosts", i, "ip"), h.ip) for i, h in enumerate(ipv6.dhcp.hosts)]
    if _not_addresses(named, 6, problems):
        return
    net = ipaddress.IPv6Interface(f"{ipv6.address}/{ipv6.prefix}").network
    if ipv6.dhcp is None:
        return
    if ipv6.prefix != 64:
        # dnsmasq hands out DHCPv6 (and RA) only on a /64
        problems.append(FieldProblem(("spec", "ipv6", "prefix"), "DHCPv6 needs prefix 64",
                                     "use prefix: 64"))  # fmt: skip
    for i, r in enumerate(ipv6.dhcp.ranges or (DhcpRange(ipv6.dhcp.start, ipv6.dhcp.end),)):
        at = (*where, "ranges", i) if ipv6.dhcp.ranges is not None else where
        for value, name in ((r.start, "start"), (r.end, "end")):
            if ipaddress.IPv6Address(value) not in net:
                problems.append(FieldProblem((*at, name), f"{value} is outside the network {net}"))
        if ipaddress.IPv6Address(r.start) > ipaddress.IPv6Address(r.end):
            problems.append(FieldProblem((*at, "end"), f"range end {r.end} is before its start"))
    for i, host in enumerate(ipv6.dhcp.hosts):
        if ipaddress.IPv6Address(host.ip) not in net:
            problems.append(FieldProblem((*where, "hosts", i, "ip"),
                                         f"{host.ip} is outside the network {net}"))  # fmt: skip
        if host.id is None and host.name is None:
            problems.append(FieldProblem(
                (*where, "hosts", i), "a DHCPv6 host needs 'id' (its DUID) or 'name'",
                "libvirt takes no MAC in IPv6"))  # fmt: skip
    _unique((*where, "hosts"), [h.key for h in ipv6.dhcp.hosts], "host", problems)
    # two clients leased one address: dnsmasq hands it to whichever asks first
    _unique((*where, "hosts"), [h.ip for h in ipv6.dhcp.hosts], "host address", problems)


def _check_routes(routes: tuple[Route, ...], problems: list[FieldProblem]) -> None:
    for i, route in enumerate(routes):
        where: FieldPath = ("spec", "routes", i)
        if _not_addresses([((*where, "address"), route.address),
                           ((*where, "gateway"), route.gateway)], None, problems):  # fmt: skip
            continue
        address, gateway = ipaddress.ip_address(route.address), ipaddress.ip_address(route.gateway)
        if address.version != gateway.version:
            problems.append(FieldProblem((*where, "gateway"), f"gateway {route.gateway} is not "
                                         f"IPv{address.version} like {route.address}"))  # fmt: skip
        if route.prefix > address.max_prefixlen:
            problems.append(FieldProblem((*where, "prefix"), f"prefix {route.prefix} is longer "
                                         f"than an IPv{address.version} address"))  # fmt: skip
    _unique(("spec", "routes"), [f"{r.address}/{r.prefix}" for r in routes], "route", problems)


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
        dhcp_at: FieldPath = ("spec", "ipv4", "dhcp")
        for i, r in enumerate(ipv4.dhcp.ranges or (DhcpRange(ipv4.dhcp.start, ipv4.dhcp.end),)):
            at = dhcp_at if ipv4.dhcp.ranges is None else (*dhcp_at, "ranges", i)
            inside(r.start, (*at, "start"))
            inside(r.end, (*at, "end"))
            if ipaddress.IPv4Address(r.start) > ipaddress.IPv4Address(r.end):
                problems.append(FieldProblem(
                    (*at, "end"), f"range end {r.end} is before its start {r.start}"))
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
        if isinstance(d.get("device"), str):
            d = {**d, "device": plain_path(d["device"])}
        image = d.get("volume") or d.get("file") or d.get("device")
        if image is not None:
            if image in images:
                what = next(k for k in ("volume", "file", "device") if k in d)
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
                format=d.get("format", "raw" if "file" in d or "device" in d else None),
                cache=d.get("cache"),
                readonly=d.get("readonly", False),
                serial=d.get("serial"),
                target_declared="target" in d,
                **_disk_storage(d, ("spec", "disks", i), problems),
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
    boot = _boot_with_indexes(raw, boot, problems)
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
        (serial_raw.get("type", "file" if "file" in serial_raw else "pty"), serial_raw.get("file"))
        if isinstance(serial_raw, Mapping) else (serial_raw, None)
    )  # fmt: skip
    if serial != "file" and serial_file is not None:
        problems.append(FieldProblem(("spec", "serial", "file"),
                                     f"a {serial} serial port has no file",
                                     "write type: file, or remove file"))  # fmt: skip
    elif serial == "file" and serial_file is None:
        problems.append(FieldProblem(("spec", "serial", "type"), "a file serial port needs file",
                                     "write file: /path/to/log"))  # fmt: skip
    devices = devices_from_manifest(raw, machine, serial, problems)
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

    tuning, tuning_problems = tuning_from_manifest(raw, max_vcpus, max_memory)
    problems += [FieldProblem(*problem) for problem in tuning_problems]
    _storage_needs_tuning(raw, tuning, problems)

    return VirtualMachineSpec(
        memory=memory,
        max_memory=max_memory,
        vcpus=vcpus,
        max_vcpus=max_vcpus,
        type=vm_type,
        machine=machine,
        firmware=firmware_type(raw.get("firmware", "bios")),
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
        devices=devices,
        state=raw.get("state", "running"),
        autostart=raw.get("autostart", False),
        shutdown_timeout=parse_duration(raw.get("shutdownTimeout", "120s")),
        update_policy=raw.get("updatePolicy"),
        adopt=raw.get("adopt", False),
        filesystems=_filesystems(raw, problems),
        hostdevs=_hostdevs(raw, problems),
        tuning=tuning,
        xml=xml_edits(raw),
    )


# --- VirtualMachine devices managed only when named (issue 13) ------------------------

NONE = "none"
"""A device field the manifest names as ``null``: the domain has no such device."""

RNG_BACKENDS = ("/dev/urandom", "/dev/random", "/dev/hwrng")
WATCHDOG_ACTIONS = ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi")
VIDEO_VRAM_KIB = {"vga": 16384, "cirrus": 16384, "bochs": 16384, "qxl": 65536}
"""The ``vram`` (KiB) libvirt 9.0 writes for a video model that has one, when the
definition names none (measured: ``virsh define`` then ``dumpxml --inactive``)."""
VIDEO_MODELS = ("virtio", "vga", "qxl", "bochs", "ramfb", "cirrus", "none")
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True, slots=True)
class Rng:
    """formatdomain "Random number generator device": ``<rng model>`` with a
    ``random`` backend (a host device) and an optional rate limit."""

    model: str = "virtio"
    backend: str = "/dev/urandom"
    rate_bytes: int | None = None  # bytes per period
    rate_period: int | None = None  # milliseconds

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "backend": self.backend}
        if self.rate_bytes is not None:
            out["rate"] = {"bytes": self.rate_bytes, "period": self.rate_period or 1000}
        return out


@dataclass(frozen=True, slots=True)
class Watchdog:
    """formatdomain "Watchdog devices": ``<watchdog model action>``."""

    model: str = "i6300esb"
    action: str = "reset"

    def manifest(self) -> dict[str, Any]:
        return {"model": self.model, "action": self.action}


@dataclass(frozen=True, slots=True)
class Tpm:
    """formatdomain "TPM device": ``<tpm model>`` with an emulator (swtpm) backend."""

    model: str = "tpm-crb"
    version: str = "2.0"

    def manifest(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version}


@dataclass(frozen=True, slots=True)
class Video:
    """formatdomain "Video devices": the primary ``<video><model type vram heads>``.
    ``vram`` in bytes (libvirt keeps KiB), None for a model without one."""

    model: str = "virtio"
    vram: int | None = None
    heads: int | None = 1

    def manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.vram is not None:
            out["vram"] = self.vram
        if self.heads is not None:
            out["heads"] = self.heads
        return out


@dataclass(frozen=True, slots=True)
class Console:
    """formatdomain "Console": a console other than the serial port's (``virtio``)."""

    type: str = "pty"
    target: str = "virtio"

    def manifest(self) -> dict[str, Any]:
        return {"type": self.type, "target": self.target}


@dataclass(frozen=True, slots=True)
class SerialLog:
    """formatdomain "Serial port", ``<log file append>``: the port's output, also
    written to a host file (by virtlogd) while it stays a pty or file."""

    file: str
    append: bool = False

    def manifest(self) -> dict[str, Any]:
        return {"file": self.file, "append": self.append}


@dataclass(frozen=True, slots=True)
class VmDevices:
    """The devices and firmware settings a manifest manages only when it names them:
    None for a field it leaves out (the domain keeps what it has), ``NONE`` for one it
    names as null (the domain has none), else the device. Firmware (formatdomain
    "Operating system booting", "BIOS bootloader"): ``secure_boot``/``enrolled_keys``
    are libvirt's firmware autoselection features (or the loader's ``secure``),
    ``loader``/``nvram_template`` a firmware chosen by path."""

    guest_agent: bool | None = None
    rng: Rng | str | None = None
    watchdog: Watchdog | str | None = None
    tpm: Tpm | str | None = None
    video: Video | None = None
    console: Console | str | None = None
    serial_log: SerialLog | str | None = None
    secure_boot: bool | None = None
    enrolled_keys: bool | None = None
    loader: str | None = None
    nvram_template: str | None = None


def firmware_type(raw: object) -> str:
    """``firmware`` (``bios``, ``uefi`` or a mapping) -> its type, bios or uefi."""
    if isinstance(raw, Mapping):
        return str(raw.get("type", "uefi"))
    return str(raw or "bios")


def devices_from_manifest(
    raw: Mapping[str, Any], machine: str, serial: str, problems: list[FieldProblem]
) -> VmDevices:
    """The ``VmDevices`` of a VM spec ``raw`` (schema-valid), adding to ``problems``
    what the schema cannot say: secure boot without q35 or UEFI, an NVRAM template
    without its loader (libvirt 9.0 refuses one with autoselection), a CRB TPM 1.2,
    vram for a model without it. ``serial``: the port's type (pty, file, none)."""
    out: dict[str, Any] = {}
    if "guestAgent" in raw:
        out["guest_agent"] = bool(raw["guestAgent"])
    if "rng" in raw:
        r = raw["rng"]
        rate = (r or {}).get("rate")
        out["rng"] = NONE if r is None else Rng(
            model=r.get("model", "virtio"), backend=r.get("backend", "/dev/urandom"),
            rate_bytes=None if rate is None else int(rate["bytes"]),
            rate_period=None if rate is None else int(rate.get("period", 1000)))  # fmt: skip
    if "watchdog" in raw:
        w = raw["watchdog"]
        out["watchdog"] = NONE if w is None else Watchdog(
            model=w.get("model", "i6300esb"), action=w.get("action", "reset"))  # fmt: skip
    if "tpm" in raw:
        t = raw["tpm"]
        tpm = NONE if t is None else Tpm(model=t.get("model", "tpm-crb"),
                                         version=str(t.get("version", "2.0")))  # fmt: skip
        if isinstance(tpm, Tpm) and tpm.model == "tpm-crb" and tpm.version != "2.0":
            problems.append(FieldProblem(("spec", "tpm", "version"),
                                         "a tpm-crb TPM is TPM 2.0 only",
                                         "write version: \"2.0\", or model: tpm-tis"))  # fmt: skip
        out["tpm"] = tpm
    if "video" in raw:
        v = raw["video"]
        model = v.get("model", "virtio")
        vram = None
        if "vram" in v:
            if model not in VIDEO_VRAM_KIB:
                problems.append(FieldProblem(("spec", "video", "vram"),
                                             f"video model {model} has no vram",
                                             "remove vram, or use model vga, qxl, bochs or "
                                             "cirrus"))  # fmt: skip
            else:
                vram = parse_size(str(v["vram"]))
                if vram < 1024 or vram % 1024:
                    problems.append(FieldProblem(("spec", "video", "vram"),
                                                 f"{v['vram']} is not a whole number of KiB",
                                                 "e.g. 16MiB"))  # fmt: skip
                else:
                    # libvirt rounds vram up to a power of two KiB (1000KiB is kept as
                    # 1MiB): compare as libvirt rounds, or the apply never settles
                    vram = (1 << (vram // 1024 - 1).bit_length()) * 1024
                    if model == "vga" and vram < 1024**2:
                        problems.append(FieldProblem(("spec", "video", "vram"),
                                                     f"libvirt refuses a vga vram of"
                                                     f" {v['vram']} (at least 1MiB)",
                                                     "e.g. 16MiB"))  # fmt: skip
        elif model in VIDEO_VRAM_KIB:
            vram = VIDEO_VRAM_KIB[model] * 1024
        heads = None if model == "none" else int(v.get("heads", 1))
        out["video"] = Video(model=model, vram=vram, heads=heads)
    if "console" in raw:
        c = raw["console"]
        out["console"] = NONE if c is None else Console(type=c.get("type", "pty"),
                                                        target=c.get("target", "virtio"))
    serial_raw = raw.get("serial")
    if isinstance(serial_raw, Mapping) and "log" in serial_raw:
        log = serial_raw["log"]  # (a mapping is a pty or file port: never none)
        out["serial_log"] = NONE if log is None else SerialLog(
            file=str(log["file"]), append=bool(log.get("append", False)))  # fmt: skip
    fw = raw.get("firmware")
    if isinstance(fw, Mapping):
        where: FieldPath = ("spec", "firmware")
        kind = firmware_type(fw)
        for key in ("secureBoot", "enrolledKeys", "loader", "nvramTemplate"):
            if key in fw and kind == "bios":
                problems.append(FieldProblem((*where, key), f"{key} is a UEFI setting",
                                             "write type: uefi, or remove it"))  # fmt: skip
        secure = fw.get("secureBoot")
        if secure and kind == "uefi" and not is_q35(machine):
            problems.append(FieldProblem((*where, "secureBoot"),
                                         f"secure boot needs machine q35 (SMM), not {machine}",
                                         "write machine: q35"))  # fmt: skip
        if "nvramTemplate" in fw and "loader" not in fw:
            problems.append(FieldProblem((*where, "nvramTemplate"),
                                         "libvirt picks the NVRAM template itself when it "
                                         "picks the firmware, and refuses one named beside it",
                                         "name the loader too (e.g. /usr/share/OVMF/"
                                         "OVMF_CODE_4M.ms.fd), or remove it"))  # fmt: skip
        enrolled = fw.get("enrolledKeys")
        if "enrolledKeys" in fw and "loader" in fw:
            problems.append(FieldProblem((*where, "enrolledKeys"),
                                         "enrolledKeys chooses a firmware libvirt picks; with "
                                         "loader the NVRAM template holds the keys",
                                         "remove enrolledKeys"))  # fmt: skip
        if enrolled and not secure:
            problems.append(FieldProblem((*where, "enrolledKeys"),
                                         "enrolled keys come with secure boot",
                                         "write secureBoot: true, or remove enrolledKeys"))
        if secure is not None:
            out["secure_boot"] = bool(secure)
        if enrolled is not None:
            out["enrolled_keys"] = bool(enrolled)
        for key, name in (("loader", "loader"), ("nvramTemplate", "nvram_template")):
            if key in fw:
                out[name] = plain_path(str(fw[key]))
    return VmDevices(**out)


# --- storage and host devices (formatdomain "Hard drives, floppy disks, CDROMs",
# "Filesystems", "Host device assignment"; rendered by xml/domain_storage.py) ---------

_NATIVE_IO_CACHES = ("none", "directsync")


def _disk_storage(d: Mapping[str, Any], where: FieldPath,
                  problems: list[FieldProblem]) -> dict[str, Any]:  # fmt: skip
    """The ``Disk`` keywords of a disk's block device source and its <driver>/<boot>
    options. io native needs the host page cache bypassed (QEMU refuses to start
    ``aio=native`` without ``cache.direct``)."""
    if d.get("io") == "native" and d.get("cache") not in _NATIVE_IO_CACHES:
        problems.append(FieldProblem(
            (*where, "io"), "io native needs cache none or directsync (QEMU refuses "
            "aio=native on the host page cache)",
            "add cache: none, or use io: threads"))  # fmt: skip
    if "iothread" in d and d.get("bus", "virtio") != "virtio":
        problems.append(FieldProblem(
            (*where, "iothread"), f"an IOThread serves virtio disks only, this one is on "
            f"bus {d.get('bus')} (libvirt refuses it)",
            "remove iothread, or use bus: virtio"))  # fmt: skip
    return {
        "device": d.get("device"),
        "discard": d.get("discard"),
        "detect_zeroes": d.get("detectZeroes"),
        "io": d.get("io"),
        "iothread": int(d["iothread"]) if "iothread" in d else None,
        "shareable": d.get("shareable"),
        "boot_index": int(d["bootIndex"]) if "bootIndex" in d else None,
    }


def _storage_needs_tuning(raw: Mapping[str, Any], tuning: Tuning,
                          problems: list[FieldProblem]) -> None:  # fmt: skip
    """A virtiofs share needs the guest's memory shared (libvirt 9.0 refuses to define
    it otherwise: "'virtiofs' requires shared memory"), so ``memoryBacking.shared``;
    a disk's ``iothread`` is one of the VM's ``iothreads`` when the manifest names them
    (libvirt: "Disk iothread '2' not defined in iothreadid"; not named: the domain's
    are kept, and libvirt checks)."""
    backing = tuning.memory_backing
    for i, f in enumerate(raw.get("filesystems") or ()):
        if f.get("driver", "virtiofs") == "virtiofs" and not (backing and backing.shared):
            problems.append(FieldProblem(
                ("spec", "filesystems", i, "driver"),
                "a virtiofs share needs the guest's memory shared with virtiofsd",
                "add memoryBacking: {shared: true} to the VM (or use driver: 9p)"))  # fmt: skip
            break
    threads = tuning.iothreads
    for i, d in enumerate(raw.get("disks", ())):
        if "iothread" in d and threads is not None and int(d["iothread"]) > threads:
            have = "none" if not threads else f"1 to {threads}"
            problems.append(FieldProblem(
                ("spec", "disks", i, "iothread"),
                f"iothread {d['iothread']} is not one of the VM's I/O threads ({have}, "
                f"iothreads: {threads})", "raise iothreads, or name one the VM has"))  # fmt: skip


def _boot_with_indexes(raw: Mapping[str, Any], boot: tuple[str, ...],
                       problems: list[FieldProblem]) -> tuple[str, ...]:  # fmt: skip
    """``boot`` as the disks' ``bootIndex`` leaves it: per-device boot order excludes
    ``<os><boot dev>`` (libvirt refuses both), so with a bootIndex ``boot`` defaults to
    ``[]`` and a non-empty one is an error. Two disks with one index are an error too."""
    seen: dict[int, int] = {}
    for i, d in enumerate(raw.get("disks", ())):
        if "bootIndex" not in d:
            continue
        index = int(d["bootIndex"])
        if index in seen:
            problems.append(FieldProblem(
                ("spec", "disks", i, "bootIndex"),
                f"bootIndex {index} is already disks[{seen[index]}]'s",
                "give each disk its own bootIndex"))  # fmt: skip
        seen.setdefault(index, i)
    if not seen:
        return boot
    if raw.get("boot"):
        problems.append(FieldProblem(
            ("spec", "boot"), "boot lists device classes, and disks carry bootIndex: libvirt "
            "refuses <os><boot> beside per-device <boot order>",
            "remove boot (or write boot: []) and order the disks by bootIndex"))  # fmt: skip
    return ()


def _filesystems(raw: Mapping[str, Any],
                 problems: list[FieldProblem]) -> tuple[Filesystem, ...] | None:  # fmt: skip
    """``filesystems``; None when the manifest does not name the field (the domain's
    are kept). libvirt 9.0 refuses a read-only virtiofs share (``virtiofs does not yet
    support read-only mode``); virtiofs shares only passthrough access."""
    if "filesystems" not in raw:
        return None
    out: list[Filesystem] = []
    tags: dict[str, int] = {}
    for i, f in enumerate(raw["filesystems"]):
        where: FieldPath = ("spec", "filesystems", i)
        driver = f.get("driver", "virtiofs")
        fs = Filesystem(source=plain_path(f["source"]), target=f["target"], driver=driver,
                        readonly=f.get("readonly", False),
                        access_mode=f.get("accessMode", "passthrough"))  # fmt: skip
        if fs.target in tags:
            problems.append(FieldProblem((*where, "target"),
                                         f"target {fs.target} is already filesystems"
                                         f"[{tags[fs.target]}]'s", "give each share its own "
                                         "mount tag"))  # fmt: skip
        tags.setdefault(fs.target, i)
        if driver == "virtiofs" and fs.readonly:
            problems.append(FieldProblem((*where, "readonly"),
                                         "libvirt 9.0 refuses a read-only virtiofs share",
                                         "use driver: 9p for a read-only share, or mount it "
                                         "read-only in the guest"))  # fmt: skip
        if driver == "virtiofs" and fs.access_mode != "passthrough":
            problems.append(FieldProblem((*where, "accessMode"),
                                         "virtiofs shares only with accessMode passthrough",
                                         "remove accessMode, or use driver: 9p"))  # fmt: skip
        out.append(fs)
    return tuple(out)


def hostdev_key(dev: Hostdev) -> str:
    """A host device's identity in projections and plans: ``pci 0000:03:00.0``,
    ``usb 046d:c52b`` (vendor:product), ``usb 1.4`` (bus.device)."""
    if dev.type == "pci":
        return f"pci {dev.address}"
    if dev.vendor is not None:
        return f"usb {str(dev.vendor)[2:]}:{str(dev.product)[2:]}"
    return f"usb {dev.bus}.{dev.device}"


def _hostdevs(raw: Mapping[str, Any],
              problems: list[FieldProblem]) -> tuple[Hostdev, ...] | None:  # fmt: skip
    """``hostdevs``; None when the manifest does not name the field (the domain's are
    kept). A PCI address is normalised to libvirt's spelling (lower case)."""
    if "hostdevs" not in raw:
        return None
    out: list[Hostdev] = []
    keys: dict[str, int] = {}
    for i, h in enumerate(raw["hostdevs"]):
        kind = h["type"]
        dev = Hostdev(
            type=kind,
            address=str(h["address"]).lower() if kind == "pci" and "address" in h else None,
            vendor=str(h["vendor"]).lower() if "vendor" in h else None,
            product=str(h["product"]).lower() if "product" in h else None,
            bus=int(h["bus"]) if "bus" in h else None,
            device=int(h["device"]) if "device" in h else None,
            managed=h.get("managed", kind == "pci"),
        )
        key = hostdev_key(dev)
        if key in keys:
            problems.append(FieldProblem(("spec", "hostdevs", i),
                                         f"{key} is already hostdevs[{keys[key]}]",
                                         "list each host device once"))  # fmt: skip
        keys.setdefault(key, i)
        out.append(dev)
    return tuple(out)
