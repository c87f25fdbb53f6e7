"""The one module that imports libvirt: connections, calls, and error wrapping.

Everything above this module sees plain Python values and reconciler's own
errors: ``ConnectionLost`` when libvirtd cannot be reached (a retry may help),
``Refused`` when libvirt rejected a request (it will not help). Read-only
helpers here feed observe.py, and ``Hypervisor.host_facts`` feeds preflight.py
(what the host offers, cached per connection); mutating calls are made only by
executor.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import pwd
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import libvirt

from reconciler import images
from reconciler.errors import ConnectionLost, DefinitionChanged, HypervisorError, Refused
from reconciler.preflight import (
    CpuQuestion,
    DirFacts,
    FactsWanted,
    HostAddress,
    HostFacts,
    MachineCaps,
    PathFacts,
    QemuUser,
    cpu_compare_xml,
    pool_types_of,
)
from reconciler.references import KnownObjects
from reconciler.snapshot import DomainRecord as DomainRecord
from reconciler.snapshot import NetworkRecord as NetworkRecord
from reconciler.snapshot import PoolRecord as PoolRecord
from reconciler.snapshot import VolumeRecord as VolumeRecord
from reconciler.tuning import parse_cpuset
from reconciler.xml import volume as vol_xml
from reconciler.xml.domain_storage import node_device_keys

DEFAULT_URI = "qemu:///system"
VOLUME_EXISTS = libvirt.VIR_ERR_STORAGE_VOL_EXIST  # the code of "storage volume ... exists"
# What libvirt's pool refresh may call a file that images.py reads as a format: an
# ISO 9660 image is raw data to qemu-img, and libvirt converts from it as raw.
_SAME_FORMAT = {"raw": {"raw", "iso"}}
_UNKNOWN = object()  # a host fact that could not be read

_CONNECTION_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
}


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence, None)


_VANISHED = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
}


BLANK_SPAN = 1024 * 1024  # bytes at each end of a device that must read as zeros


def _not_blank(path: str) -> str | None:
    """Why the block device ``path`` (of this machine) is not blank, or None: a byte
    other than zero in its first or last ``BLANK_SPAN`` bytes (partition tables, LVM
    labels, filesystem superblocks, image headers and a GPT's backup all live there).
    libvirt's ``VIR_STORAGE_POOL_BUILD_NO_OVERWRITE`` refuses only the signatures
    blkid knows: a qcow2 image or random data on the device passed it and was written
    over. A path that cannot be read is left to libvirt (which reports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        for offset in sorted({0, max(size - BLANK_SPAN, 0)}):
            data = os.pread(fd, BLANK_SPAN, offset)
            if data.count(0) != len(data):
                first = offset + next(i for i, b in enumerate(data) if b)
                return f"{path} is not blank (a byte other than zero at offset {first})"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


@contextmanager
def _vanished_ok() -> Iterator[None]:
    """Skip an object removed by someone else between listing it and reading it."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _VANISHED:
            raise


def wrap(exc: libvirt.libvirtError, doing: str) -> HypervisorError:
    """Our error for a libvirt error raised while ``doing`` something."""
    code = exc.get_error_code() or 0
    message = f"{doing}: {exc.get_error_message() or exc}"
    if code in _CONNECTION_CODES:
        return ConnectionLost(message, code=code)
    return Refused(message, code=code)


@contextmanager
def calling(doing: str) -> Iterator[None]:
    """Run libvirt calls, re-raising their errors as ours."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise wrap(exc, doing) from exc


def connect(uri: str = DEFAULT_URI, *, readonly: bool = False) -> Any:
    """Open a libvirt connection, or raise ``ConnectionLost``."""
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise ConnectionLost(
            f"cannot connect to libvirt at {uri}: {exc.get_error_message() or exc}",
            code=exc.get_error_code() or 0,
        ) from exc


def known_objects(conn: Any) -> KnownObjects:
    """Names of the networks, pools and volumes that exist in libvirt."""
    with calling("listing libvirt objects"):
        networks = frozenset(n.name() for n in conn.listAllNetworks())
        pools = conn.listAllStoragePools()
        volumes: set[tuple[str, str]] = set()
        for pool in pools:
            if pool.isActive():
                volumes.update((pool.name(), v.name()) for v in pool.listAllVolumes())
        return KnownObjects(
            networks=networks,
            pools=frozenset(p.name() for p in pools),
            volumes=frozenset(volumes),
            consulted=True,
        )


# --- host facts: parsing, and the local machine's own -----------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What preflight needs of ``virConnectGetCapabilities`` (libvirt's formatcaps.html)."""

    # (arch, virt type) -> machine types and aliases of hvm guests
    machines: dict[tuple[str, str], frozenset[str]]
    memory: int  # bytes, the sum of the NUMA cells' memory (0: not stated)
    dac_label: str | None  # the DAC <baselabel> QEMU runs with, e.g. "+64055:+64055"
    host_cpu_model: str | None = None  # <host><cpu><model>, e.g. Broadwell
    cpus: frozenset[int] | None = None  # the host's CPU numbers (<topology><cells>)
    page_sizes: frozenset[int] | None = None  # memory page sizes offered, bytes (<pages>)


CPU_MAP_FEATURES = "/usr/share/libvirt/cpu_map/x86_features.xml"


def _local_cpu_feature_names() -> frozenset[str]:
    """Every x86 CPU feature name libvirt knows, from its cpu_map on this machine (for
    'did you mean' hints only; empty when it cannot be read)."""
    try:
        root = ET.parse(CPU_MAP_FEATURES).getroot()
    except (OSError, ET.ParseError):
        return frozenset()
    return frozenset(str(f.get("name")) for f in root.iter("feature") if f.get("name"))


def parse_capabilities(text: str) -> Capabilities:
    """Machine types per (arch, virt type): an arch's ``<machine>``s, plus those listed
    under one ``<domain type>`` only; the host memory; QEMU's DAC label."""
    root = ET.fromstring(text)
    machines: dict[tuple[str, str], frozenset[str]] = {}
    for guest in root.findall("guest"):
        if guest.findtext("os_type") != "hvm":
            continue
        for arch in guest.findall("arch"):
            name = arch.get("name", "")
            common = {m.text.strip() for m in arch.findall("machine") if m.text}
            for domain in arch.findall("domain"):
                own = {m.text.strip() for m in domain.findall("machine") if m.text}
                key = (name, domain.get("type", ""))
                machines[key] = machines.get(key, frozenset()) | common | own
    memory = 0
    for cell in root.findall("host/topology/cells/cell/memory"):
        factor = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}.get(cell.get("unit", "KiB"), 1)
        memory += int(cell.text or 0) * factor
    label = None
    for model in root.findall("host/secmodel"):
        if model.findtext("model") == "dac":
            labels = {b.get("type"): b.text for b in model.findall("baselabel")}
            label = labels.get("kvm") or labels.get("qemu")
    host_model = (root.findtext("host/cpu/model") or "").strip() or None
    cpus = frozenset(int(str(c.get("id"))) for c in
                     root.findall("host/topology/cells/cell/cpus/cpu") if c.get("id"))  # fmt: skip
    pages = frozenset(int(str(p.get("size"))) * 1024 for p in root.findall("host/cpu/pages")
                      if p.get("size") and p.get("unit", "KiB") == "KiB")  # fmt: skip
    return Capabilities(machines, memory, label, host_model, cpus or None, pages or None)


def parse_domain_capabilities(text: str, machine: str) -> MachineCaps:
    """``<vcpu max>``, firmware and loaders of a domain capabilities document."""
    root = ET.fromstring(text)
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.get("max", "0")) if vcpu is not None and vcpu.get("max") else None
    firmware = frozenset(
        v.text.strip() for v in root.findall("os/enum[@name='firmware']/value") if v.text
    )
    loaders = (
        tuple(v.text.strip() for v in root.findall("os/loader/value") if v.text)
        if root.find("os/loader[@supported='yes']") is not None
        else ()
    )
    return MachineCaps(
        machine=root.findtext("machine") or machine,
        max_vcpus=max_vcpus,
        firmware=firmware,
        loaders=loaders,
        xml=text,
    )


def _le_address(value: int) -> str:
    """An IPv4 address as /proc/net/route writes it (host byte order, little-endian)."""
    return socket.inet_ntoa(struct.pack("<I", value))


def _qemu_user(label: str | None) -> QemuUser | None:
    """The user of a DAC label ``+uid:+gid``, with its supplementary groups (libvirt gives
    QEMU those too)."""
    if not label or ":" not in label:
        return None
    user, _, group = label.partition(":")
    try:
        uid, gid = int(user.lstrip("+")), int(group.lstrip("+"))
    except ValueError:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = frozenset(os.getgrouplist(name, gid))
    except KeyError:
        name, groups = "", frozenset({gid})
    return QemuUser(uid, gid, groups | {gid}, name)


def _path_facts(paths: AbstractSet[str]) -> dict[str, PathFacts]:
    """Each path's existence, the directories above it (each stat'ed once) and the
    image format its header announces."""
    chains: dict[str, tuple[DirFacts, ...] | None] = {}  # None: it does not exist

    def chain(directory: str) -> tuple[DirFacts, ...] | None:
        """``directory`` and those above it, ``/`` first (iteratively: a path may be deep)."""
        todo = []
        node = directory
        while node not in chains:
            todo.append(node)
            parent = os.path.dirname(node)
            if parent == node:
                break
            node = parent
        for current in reversed(todo):
            parent = os.path.dirname(current)
            above = chains.get(parent, ()) if parent != current else ()
            found = None
            if above is not None:
                with contextlib.suppress(OSError):
                    st = os.stat(current)
                    found = (*above, DirFacts(current, st.st_mode, st.st_uid, st.st_gid))
            chains[current] = found
        return chains[directory]

    return {
        path: PathFacts(os.path.exists(path), chain(os.path.dirname(os.path.normpath(path))) or (),
                        image_format=images.read_format(path))
        for path in paths
    }


def _local_bridges() -> dict[str, Any]:
    """Host network interfaces and bridges, from /sys/class/net (a bridge has ``bridge/``)."""
    base = "/sys/class/net"
    try:
        names = os.listdir(base)
    except OSError:
        return {}
    bridges = frozenset(n for n in names if os.path.isdir(os.path.join(base, n, "bridge")))
    return {"bridges": bridges, "interfaces": frozenset(names)}


# --- compare-and-define -------------------------------------------------------------

# What libvirt changes in a persistent definition on its own, with nobody defining it:
# a storage pool's sizes (formatstorage: refreshed from the file system), a running
# network's count of connected guests (formatnetwork; not shown with INACTIVE on
# libvirt 9.0, dropped in case another version shows it).
_VOLATILE_ELEMENTS = {"pool": ("capacity", "allocation", "available")}
_VOLATILE_ATTRIBUTES = {"network": ("connections",)}


def _name_of(definition: str) -> str:
    """The ``<name>`` of a libvirt definition (domain, network, pool)."""
    return ET.fromstring(definition).findtext("name") or ""


def _comparable(definition: str) -> str:
    """``definition`` without what libvirt changes on its own (``_VOLATILE_*``)."""
    root = ET.fromstring(definition)
    for tag in _VOLATILE_ELEMENTS.get(root.tag, ()):
        for child in root.findall(tag):
            root.remove(child)
    for attribute in _VOLATILE_ATTRIBUTES.get(root.tag, ()):
        root.attrib.pop(attribute, None)
    return ET.tostring(root, encoding="unicode")


def same_definition(planned: str, now: str) -> bool:
    """Whether the persistent definition read ``now`` is still the one ``planned`` from:
    equal text, or equal apart from what libvirt changes on its own (``_VOLATILE_*``)."""
    return planned == now or _comparable(planned) == _comparable(now)


def _check_unchanged(noun: str, name: str, planned: str, now: str | None) -> None:
    """Raise ``DefinitionChanged`` unless ``now`` (None: undefined) is ``planned``."""
    if now is not None and same_definition(planned, now):
        return
    how = "was undefined" if now is None else "changed"
    raise DefinitionChanged(
        f"{noun} {name}'s definition {how} since it was planned (by someone else): "
        "nothing changed; plan again"
    )


# --- the connection as a narrow interface ------------------------------------


class Hypervisor:
    """One libvirt connection. Reads return plain records; writes raise our errors."""

    def __init__(self, conn: Any, uri: str) -> None:
        self._conn = conn
        self.uri = uri
        # host facts that last as long as the connection (see host_facts)
        self._host: HostFacts | None = None
        self._machine_caps: dict[tuple[str, str, str], MachineCaps | str] = {}
        self._cpu_models: dict[str, frozenset[str] | None] = {}  # arch -> model names
        self._pool_types: frozenset[str] | str | None = None  # a str: why it is unknown
        self._cpu_feature_known: dict[str, bool] = {}  # feature name -> libvirt knows it
        self._cpu_verdicts: dict[CpuQuestion, str | None] = {}

    @classmethod
    def open(cls, uri: str = DEFAULT_URI, *, readonly: bool = False) -> Hypervisor:
        return cls(connect(uri, readonly=readonly), uri)

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def remote(self) -> bool:
        """Whether the URI names another host (``qemu+ssh://kvm-2/system``): then nothing
        of this machine's disk is read or written for that host's objects."""
        return bool(urlsplit(self.uri).netloc)

    def host_name(self) -> str:
        """The name manifests' ``metadata.hosts`` are matched against by default: the
        connected host's own (``virConnectGetHostname``) for a remote URI, this
        machine's for a local one."""
        if not self.remote:
            return socket.gethostname()
        with calling("reading the host's name"):
            return str(self._conn.getHostname())

    def alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    # -- reads ------------------------------------------------------------------

    def capabilities(self) -> str:
        with calling("reading host capabilities"):
            return str(self._conn.getCapabilities())

    def known_objects(self) -> KnownObjects:
        return known_objects(self._conn)

    # -- host facts (preflight.py checks manifests against them) ---------------------

    def host_facts(self, wanted: FactsWanted) -> HostFacts:
        """What this host offers, for ``preflight.check``: read-only.

        Cached per connection, read once: the guest types and machine types
        (capabilities XML, ``<guest>``; libvirt's formatcaps.html), the host's memory
        (``virNodeGetInfo``; bytes), QEMU's user (the DAC ``<secmodel><baselabel>``),
        and the domain capabilities of each (arch, machine, virt type) asked for
        (``virConnectGetDomainCapabilities``; formatdomaincaps.html: ``<vcpu max>``,
        ``<os><enum name='firmware'>``, ``<loader>``). These only change with a QEMU
        or libvirt upgrade, which restarts libvirtd and so gives a new connection.

        Read on every call, since they change while a daemon runs and are cheap: the
        files in ``wanted.paths`` (a stat each, and one per directory above them), the
        host's bridges (``/sys/class/net``) and, when wanted, its IPv4 subnets. Those
        are local facts: for a remote URI they are not read from this machine's disk;
        bridges come from libvirt's ``listAllInterfaces`` when it lists any.

        A fact that cannot be read is ``None`` and named in ``HostFacts.unknown``;
        ``ConnectionLost`` propagates (the pass fails as any other read would).
        """
        host = self._host
        if host is None:
            host = self._host = self._static_facts()
        unknown = list(host.unknown)
        caps: dict[tuple[str, str, str], MachineCaps] = {}
        for key in sorted(wanted.guests):
            arch, machine, virt_type = key
            known = (host.machines or {}).get((arch, virt_type))
            if known is None or machine not in known:
                continue  # preflight reports the machine or the type itself
            found = self._machine_caps.get(key)
            if found is None:
                found = self._machine_caps[key] = self._read_machine_caps(*key)
            if isinstance(found, str):
                unknown.append(found)
            else:
                caps[key] = found
        facts = replace(host, machine_caps=caps, unknown=tuple(unknown))
        if wanted.cpu_questions or wanted.cpu_features:
            facts = self._cpu_facts(facts, wanted)
        if wanted.host_devices:
            facts = replace(facts, host_devices=self._host_devices())
        if wanted.pool_types:
            facts = self._pool_facts(facts)
        if wanted.free_pages and facts.page_sizes:
            facts = replace(facts, free_pages=self._free_pages(facts.page_sizes))
        if host.local:
            return replace(
                facts,
                paths=_path_facts(wanted.paths),
                **_local_bridges() if wanted.bridges else {},
                **self._local_addresses(facts) if wanted.addresses else {},
            )
        if wanted.bridges:
            facts = replace(facts, bridges=self._libvirt_bridges())
        return facts

    def _free_pages(self, sizes: frozenset[int]) -> dict[int, int] | None:
        """Free pages of each huge page size (bytes) over all NUMA cells
        (virNodeGetFreePages); None when libvirt cannot say."""
        huge = sorted(size for size in sizes if size > 4096)
        if not huge:
            return None
        try:
            with calling("reading free huge pages"):
                cells = int(self._conn.getInfo()[4]) or 1
                found = self._conn.getFreePages([size // 1024 for size in huge], 0, cells)
        except Refused:
            return None
        out = dict.fromkeys(huge, 0)
        for per_cell in (found or {}).values():
            for kib, count in per_cell.items():
                if int(kib) * 1024 in out:
                    out[int(kib) * 1024] += int(count)
        return out

    def _pool_facts(self, facts: HostFacts) -> HostFacts:
        """The pool types this libvirt has a storage backend for, read once per
        connection (``virConnectGetStoragePoolCapabilities``; formatstoragecaps.html):
        a backend comes with a package, and libvirtd loads it when it starts."""
        if self._pool_types is None:
            try:
                with calling("reading storage pool capabilities"):
                    caps = str(self._conn.getStoragePoolCapabilities(0))
                self._pool_types = pool_types_of(caps)
            except Refused as exc:
                self._pool_types = f"storage pool types not checked: {exc}"
        if isinstance(self._pool_types, str):
            return replace(facts, unknown=(*facts.unknown, self._pool_types))
        return replace(facts, pool_types=self._pool_types)

    def _static_facts(self) -> HostFacts:
        local = not urlsplit(self.uri).netloc
        unknown: list[str] = []
        machines = None
        qemu_user = None
        memory = None
        try:
            with calling("reading host capabilities"):
                caps = parse_capabilities(str(self._conn.getCapabilities()))
            machines = caps.machines
            memory = caps.memory or None
            host_cpu = caps.host_cpu_model
            cpus, page_sizes = caps.cpus, caps.page_sizes
            qemu_user = _qemu_user(caps.dac_label) if local else None
        except Refused as exc:
            host_cpu = None
            cpus = page_sizes = None
            unknown.append(f"machine types and KVM not checked: {exc}")
        # The NUMA cells of capabilities may cover only part of the memory (seen on a
        # nested host: one 6.5 GiB cell of 24 GiB); /proc/meminfo's MemTotal, as
        # virNodeGetMemoryStats reports it, is the whole. The larger one is taken: a
        # false refusal is worse than a VM that fails to start.
        try:
            with calling("reading node memory"):
                stats = self._conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            memory = max(memory or 0, int(stats.get("total", 0)) * 1024) or None
        except Refused:
            pass
        if memory is None:
            try:
                with calling("reading node info"):
                    memory = int(self._conn.getInfo()[1]) * 1024**2  # MiB
            except Refused as exc:
                unknown.append(f"memory not checked: {exc}")
        return HostFacts(uri=self.uri, local=local, memory=memory, machines=machines,
                         host_cpu_model=host_cpu, cpus=cpus, page_sizes=page_sizes,
                         qemu_user=qemu_user, unknown=tuple(unknown))  # fmt: skip

    def _cpu_facts(self, facts: HostFacts, wanted: FactsWanted) -> HostFacts:
        """What libvirt says of the CPUs the manifests ask for, each asked once per
        connection: the model names it knows for the arch (``virConnectGetCPUModelNames``),
        whether it knows a feature name, and whether this host can run a model or a set of
        required features (``virConnectCompareHypervisorCPU`` with ``FAIL_INCOMPATIBLE``:
        its message lists what the host lacks; formatdomaincaps.html#cpu-configuration)."""
        arch = "x86_64"
        unknown = list(facts.unknown)
        if arch not in self._cpu_models:
            try:
                with calling(f"listing CPU models of {arch}"):
                    self._cpu_models[arch] = frozenset(self._conn.getCPUModelNames(arch, 0))
            except Refused as exc:
                self._cpu_models[arch] = None
                unknown.append(f"CPU model names not checked: {exc}")
        for name in sorted(wanted.cpu_features - set(self._cpu_feature_known)):
            probe = CpuQuestion(arch, "", "", "qemu64", ())
            xml = cpu_compare_xml(probe, None)
            assert xml is not None
            xml = xml.replace("</cpu>", "") + f"<feature policy='optional' name='{name}'/></cpu>"
            try:
                self._conn.compareHypervisorCPU(None, arch, None, None, xml, 0)
                self._cpu_feature_known[name] = True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _CONNECTION_CODES:
                    raise wrap(exc, "checking CPU feature names") from exc
                self._cpu_feature_known[name] = "Unknown CPU feature" not in str(exc)
        verdicts: dict[CpuQuestion, str | None] = {}
        for question in sorted(wanted.cpu_questions, key=repr):
            if question not in self._cpu_verdicts:
                found = self._compare_cpu(question, facts)
                if found is _UNKNOWN:
                    continue
                self._cpu_verdicts[question] = found if isinstance(found, str) else None
            verdicts[question] = self._cpu_verdicts[question]
        names: frozenset[str] = frozenset()
        if facts.local and any(not self._cpu_feature_known.get(n, True)
                               for n in wanted.cpu_features):  # fmt: skip
            names = _local_cpu_feature_names()
        return replace(
            facts,
            cpu_models=self._cpu_models.get(arch),
            cpu_feature_names=names,
            cpu_features_unknown=frozenset(
                n for n in wanted.cpu_features if not self._cpu_feature_known.get(n, True)),
            cpu_verdicts=verdicts,
            unknown=tuple(unknown),
        )  # fmt: skip

    def _compare_cpu(self, question: CpuQuestion, facts: HostFacts) -> str | object | None:
        """None: the host runs it; a str: what libvirt says it lacks; ``_UNKNOWN``: no
        comparison could be made.

        Compared with the host CPU of capabilities (``virConnectCompareCPU``), the
        check libvirt makes when it starts a ``check='partial'`` domain: on nested hosts
        the hypervisor's own view (``virConnectCompareHypervisorCPU``, the domain
        capabilities' host-model) can lack features KVM gives guests all the same, and
        would refuse models that start (seen: Nehalem). A required feature is compared
        on top of the host's own model. TCG (``type: qemu``) emulates its CPU: only
        names are checked there."""
        if question.virt_type != "kvm":
            return _UNKNOWN
        xml = cpu_compare_xml(question, facts.host_cpu_model)
        if xml is None:
            return _UNKNOWN
        try:
            self._conn.compareCPU(xml, libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _CONNECTION_CODES:
                raise wrap(exc, "comparing CPUs") from exc
            if exc.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE:
                return exc.get_error_message() or str(exc)
            return _UNKNOWN  # an unknown model or feature: check_cpu says so by name
        return None

    def _read_machine_caps(self, arch: str, machine: str, virt_type: str) -> MachineCaps | str:
        """The domain capabilities of one guest, or a line saying why they are unknown."""
        try:
            with calling(f"reading domain capabilities of {machine} ({arch}, {virt_type})"):
                text = str(self._conn.getDomainCapabilities(None, arch, machine, virt_type, 0))
        except Refused as exc:
            return f"vCPU limit and firmware not checked: {exc}"
        return parse_domain_capabilities(text, machine)

    def _host_devices(self) -> frozenset[str] | None:
        """The ``hostdevs`` keys of the host's PCI and USB devices, as libvirt's node
        devices list them (local or remote); None when it cannot list them."""
        flags = (libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV
                 | libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_USB_DEV)  # fmt: skip
        try:
            with calling("listing host devices"):
                listed = [str(d.XMLDesc(0)) for d in self._conn.listAllDevices(flags)]
        except Refused:
            return None
        return frozenset(k for text in listed for k in node_device_keys(text))

    def _libvirt_bridges(self) -> frozenset[str] | None:
        """Bridges as libvirt's interface driver lists them; None when it lists none (it
        may not list bridges at all) or cannot list."""
        try:
            with calling("listing host interfaces"):
                listed = [str(i.XMLDesc(0)) for i in self._conn.listAllInterfaces(0)]
        except Refused:
            return None
        bridges = set()
        for text in listed:
            root = ET.fromstring(text)
            if root.get("type") == "bridge" and root.get("name"):
                bridges.add(str(root.get("name")))
        return frozenset(bridges) or None

    def _local_addresses(self, facts: HostFacts) -> dict[str, Any]:
        """The IPv4 subnets on the host's interfaces: its directly connected routes, read
        from ``/proc/net/route`` (main table) as libvirt's network driver reads them to
        refuse a colliding network at start (``networkCheckRouteCollision``).

        Why not elsewhere: libvirt's interface driver reports no addresses (Debian's udev
        backend), ``ip -j -4 addr`` needs an AF_NETLINK socket that the systemd unit's
        ``RestrictAddressFamilies`` denies the daemon, and ``/proc/net/fib_trie`` names
        no interfaces."""
        try:
            with open("/proc/net/route", encoding="ascii") as table:
                rows = [line.split() for line in table.readlines()[1:]]
            found = []
            for row in rows:
                iface, dest, flags, mask = row[0], int(row[1], 16), int(row[3], 16), int(row[7], 16)
                if flags & 0x2 or not mask:  # RTF_GATEWAY: not on the link; default route
                    continue
                network = ipaddress.IPv4Network(
                    (_le_address(dest), bin(mask).count("1")), strict=False
                )
                found.append(HostAddress(iface, str(network)))
        except (OSError, ValueError, IndexError) as exc:
            line = f"host interface subnets not checked: cannot read /proc/net/route: {exc}"
            return {"unknown": (*facts.unknown, line)}
        return {"addresses": tuple(found)}

    def domains(self) -> list[DomainRecord]:
        """Every domain with its definitions, in few calls: four listings, then each
        definition, a few calls in flight at once (libvirtd answers them on its worker
        pool). A transient one (running, its definition undefined) is listed too: its
        definition is the running one."""
        return self._read_domains(None)

    def domains_named(self, names: AbstractSet[str]) -> list[DomainRecord]:
        """The domains among ``names``, read as ``domains`` reads them; a name not defined
        is left out (the check after an apply reads only what it touched)."""
        return self._read_domains(names)

    def _read_domains(self, names: AbstractSet[str] | None) -> list[DomainRecord]:
        with calling("listing domains"):
            listed = self._conn.listAllDomains(0)
            if names is not None:
                listed = [d for d in listed if d.name() in names]
            if not listed:
                return []
            transient = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
            }
            autostart = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
            }
            running = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            }

            def read(dom: Any) -> DomainRecord | None:
                uuid = dom.UUIDString()
                active = uuid in running
                try:
                    config = dom.XMLDesc(
                        libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
                    )
                    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if active else None
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return None  # undefined while we listed
                    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and active:
                        live = None  # stopped while we listed
                        active = False
                    else:
                        raise
                return DomainRecord(dom.name(), uuid, active, uuid in autostart, config, live,
                                    persistent=uuid not in transient)  # fmt: skip

            if len(listed) < 8:
                return [r for r in map(read, listed) if r is not None]
            with ThreadPoolExecutor(max_workers=4) as pool:
                return [r for r in pool.map(read, listed) if r is not None]

    def domain_active(self, name: str) -> bool:
        with calling(f"reading state of domain {name}"):
            return bool(self._conn.lookupByName(name).isActive())

    def networks(self) -> list[NetworkRecord]:
        with calling("listing networks"):
            records = []
            for net in self._conn.listAllNetworks(0):
                with _vanished_ok():
                    active = bool(net.isActive())
                    config = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
                    try:
                        live = net.XMLDesc(0) if active else None
                        ports = (
                            frozenset(p.UUIDString() for p in net.listAllPorts(0))
                            if active
                            else None
                        )
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                            raise
                        # stopped while we listed ("network ... is not active"), as
                        # a domain's read tolerates it: inactive, not a failed pass
                        active, live, ports = False, None, None
                    records.append(
                        NetworkRecord(
                            net.name(),
                            net.UUIDString(),
                            active,
                            bool(net.autostart()),
                            config,
                            live,
                            persistent=bool(net.isPersistent()),
                            ports=ports,
                        )
                    )
            return records

    def pools(self) -> list[PoolRecord]:
        with calling("listing storage pools"):
            records = []
            for pool in self._conn.listAllStoragePools(0):
                with _vanished_ok():
                    records.append(
                        PoolRecord(
                            pool.name(),
                            pool.UUIDString(),
                            bool(pool.isActive()),
                            bool(pool.autostart()),
                            pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE),
                            persistent=bool(pool.isPersistent()),
                        )
                    )
            return records

    def volumes(self, pool_name: str, *, refresh: bool = True) -> list[VolumeRecord]:
        """The volumes of an active pool. ``refresh``: have libvirt read the pool again
        first (``virStoragePoolRefresh``: finds files changed behind its back, but
        stops a pool whose folder is gone, so only for pools the tool owns)."""
        with calling(f"listing volumes of pool {pool_name}"):
            records: list[VolumeRecord] = []
            try:
                pool = self._conn.storagePoolLookupByName(pool_name)
                if not pool.isActive():
                    return []
                if refresh:
                    pool.refresh(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (
                    libvirt.VIR_ERR_NO_STORAGE_POOL,
                    libvirt.VIR_ERR_OPERATION_INVALID,  # stopped meanwhile
                ):
                    return records
                # A volume being uploaded, cloned or wiped (by anyone) makes refresh
                # fail with "asynchronous jobs running": libvirt's list is current anyway.
                if exc.get_error_code() != libvirt.VIR_ERR_INTERNAL_ERROR:
                    if exc.get_error_code() in _CONNECTION_CODES and self.alive():
                        # the pool itself is broken (its folder removed behind libvirt's
                        # back: "cannot open directory", a system error), not the
                        # connection: libvirt stops such a pool; nothing to list, and
                        # one broken pool must not fail every other object's pass
                        return records
                    raise
            try:
                listed = pool.listAllVolumes()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (
                    libvirt.VIR_ERR_NO_STORAGE_POOL,  # undefined between lookup and listing
                    libvirt.VIR_ERR_OPERATION_INVALID,  # stopped meanwhile
                ):
                    return records
                raise
            for vol in listed:
                try:
                    records.append(VolumeRecord(pool_name, vol.name(), vol.path(), vol.XMLDesc(0)))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                        return []  # the pool stopped meanwhile ("is not active"): as above
                    if exc.get_error_code() not in _VANISHED:
                        raise
            return records

    # -- domains ----------------------------------------------------------------

    def define_domain(self, xml: str, *, current: str | None = None) -> None:
        """Define ``xml`` (formatdomain): a new domain, or a new persistent definition.

        ``current``: the persistent definition the plan patched, as ``domains`` read it
        (``VIR_DOMAIN_XML_INACTIVE | SECURE``). When given, the definition is read again
        right before defining, and if it is no longer that one (someone defined or
        undefined the domain since the plan), nothing is defined: ``DefinitionChanged``.
        Otherwise ``Refused`` (libvirt rejected the XML) or ``ConnectionLost``."""
        with calling("defining domain"):
            if current is not None:
                name = _name_of(current)

                def now() -> str | None:
                    with _vanished_ok():
                        return str(self._conn.lookupByName(name).XMLDesc(
                            libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
                    return None

                _check_unchanged("VM", name, current, now())
            self._conn.defineXML(xml)

    def start_throwaway_domain(self, xml: str) -> None:
        """Start a transient domain that libvirt destroys when this connection closes
        (``virDomainCreateXML`` with ``VIR_DOMAIN_START_AUTODESTROY``): nothing is left
        behind even if this process is killed. For probes only."""
        with calling("starting a throwaway domain"):
            self._conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)

    def start_domain(self, name: str) -> None:
        with calling(f"starting domain {name}"):
            self._conn.lookupByName(name).create()

    def shutdown_domain(self, name: str) -> None:
        """Ask the guest to power off (ACPI power button)."""
        with calling(f"shutting down domain {name}"):
            self._conn.lookupByName(name).shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy_domain(self, name: str) -> None:
        """Force off."""
        with calling(f"forcing off domain {name}"):
            dom = self._conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()

    def undefine_domain(self, name: str) -> None:
        with calling(f"undefining domain {name}"):
            self._conn.lookupByName(name).undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )

    def set_domain_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of domain {name}"):
            self._conn.lookupByName(name).setAutostart(int(on))

    def set_domain_memory(self, name: str, kib: int) -> None:
        """Balloon the running domain to ``kib`` (its config is redefined separately)."""
        with calling(f"setting memory of domain {name}"):
            self._conn.lookupByName(name).setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def set_domain_vcpus(self, name: str, count: int) -> None:
        with calling(f"setting vcpus of domain {name}"):
            self._conn.lookupByName(name).setVcpusFlags(count, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def pin_domain_cpus(
        self, name: str, cpuset: str, *, vcpu: int | None = None, iothread: int | None = None
    ) -> None:
        """Pin the running domain's vCPU ``vcpu``, or I/O thread ``iothread``, or else its
        emulator threads to the host CPUs ``cpuset`` (libvirt's syntax, ``0-1``):
        virDomainPinVcpuFlags / virDomainPinIOThread / virDomainPinEmulator with
        AFFECT_LIVE (formatdomain "CPU Tuning"). ValueError for a set that is not one;
        Refused when libvirt refuses (a CPU the host lacks, no such thread)."""
        wanted = parse_cpuset(cpuset)
        what = ("emulator" if vcpu is None and iothread is None
                else f"vCPU {vcpu}" if vcpu is not None else f"I/O thread {iothread}")  # fmt: skip
        with calling(f"pinning {what} of domain {name} to CPUs {cpuset}"):
            count = int(self._conn.getCPUMap()[0])
            cpumap = tuple(i in wanted for i in range(max(count, max(wanted) + 1)))
            domain = self._conn.lookupByName(name)
            if vcpu is not None:
                domain.pinVcpuFlags(vcpu, cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            elif iothread is not None:
                domain.pinIOThread(iothread, cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            else:
                domain.pinEmulator(cpumap, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def domain_live_xml(self, name: str) -> str | None:
        """The running definition (with secrets), or None when the domain is not running."""
        with calling(f"reading domain {name}"), _vanished_ok():
            dom = self._conn.lookupByName(name)
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)) if dom.isActive() else None
        return None

    def set_domain_live_metadata(self, name: str, key: str, uri: str, xml: str) -> None:
        """Replace the running definition's metadata element of namespace ``uri``."""
        with calling(f"setting metadata of domain {name}"):
            self._conn.lookupByName(name).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, key, uri, libvirt.VIR_DOMAIN_AFFECT_LIVE
            )

    def update_domain_device(self, name: str, xml: str) -> None:
        with calling(f"updating a device of domain {name}"):
            self._conn.lookupByName(name).updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def attach_domain_device(self, name: str, xml: str) -> None:
        with calling(f"attaching a device to domain {name}"):
            self._conn.lookupByName(name).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def detach_domain_device(self, name: str, xml: str) -> None:
        with calling(f"detaching a device from domain {name}"):
            self._conn.lookupByName(name).detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    # -- networks ---------------------------------------------------------------

    def define_network(self, xml: str, *, current: str | None = None) -> None:
        """Define ``xml`` (formatnetwork). ``current``: the persistent definition the plan
        changed (``VIR_NETWORK_XML_INACTIVE``, as ``networks`` read it): read again first,
        and nothing is defined if it is no longer that one (``DefinitionChanged``, as
        ``define_domain``)."""
        with calling("defining network"):
            if current is not None:
                name = _name_of(current)

                def now() -> str | None:
                    with _vanished_ok():
                        return str(self._conn.networkLookupByName(name).XMLDesc(
                            libvirt.VIR_NETWORK_XML_INACTIVE))
                    return None

                _check_unchanged("network", name, current, now())
            self._conn.networkDefineXML(xml)

    def start_network(self, name: str) -> None:
        with calling(f"starting network {name}"):
            self._conn.networkLookupByName(name).create()

    def stop_network(self, name: str) -> None:
        with calling(f"stopping network {name}"):
            net = self._conn.networkLookupByName(name)
            if net.isActive():
                net.destroy()

    def undefine_network(self, name: str) -> None:
        with calling(f"undefining network {name}"):
            self._conn.networkLookupByName(name).undefine()

    def set_network_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of network {name}"):
            self._conn.networkLookupByName(name).setAutostart(int(on))

    def update_network(
        self, name: str, command: str, section: str, xml: str, parent_index: int = -1
    ) -> None:
        """``virsh net-update --live``: change an entry of the running network.
        ``section``: ip-dhcp-host, ip-dhcp-range, dns-host, dns-txt, dns-srv, portgroup or
        forward-interface (formatnetwork; the sections libvirt 9.0 updates live).
        ``parent_index``: which ``<ip>`` (in document order) an ``ip-dhcp-*`` entry belongs
        to; -1 lets libvirt pick the first ``<ip>`` with DHCP."""
        commands = {
            "add": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
            "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
            "modify": libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY,
        }
        sections = {
            "ip-dhcp-host": libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
            "ip-dhcp-range": libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
            "dns-host": libvirt.VIR_NETWORK_SECTION_DNS_HOST,
            "dns-txt": libvirt.VIR_NETWORK_SECTION_DNS_TXT,
            "dns-srv": libvirt.VIR_NETWORK_SECTION_DNS_SRV,
            "portgroup": libvirt.VIR_NETWORK_SECTION_PORTGROUP,
            "forward-interface": libvirt.VIR_NETWORK_SECTION_FORWARD_INTERFACE,
        }
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE  # the definition is redefined separately
        with calling(f"updating {section} of network {name}"):
            self._conn.networkLookupByName(name).update(
                commands[command], sections[section], parent_index, xml, flags
            )

    # -- pools and volumes --------------------------------------------------------

    def define_pool(self, xml: str, *, current: str | None = None) -> None:
        """Define ``xml`` (formatstorage). ``current``: the persistent definition the plan
        changed (``VIR_STORAGE_XML_INACTIVE``, as ``pools`` read it): read again first,
        and nothing is defined if it is no longer that one (``DefinitionChanged``, as
        ``define_domain``; the pool's capacity, allocation and available space, which
        libvirt updates on its own, are not compared)."""
        with calling("defining storage pool"):
            if current is not None:
                name = _name_of(current)

                def now() -> str | None:
                    with _vanished_ok():
                        return str(self._conn.storagePoolLookupByName(name).XMLDesc(
                            libvirt.VIR_STORAGE_XML_INACTIVE))
                    return None

                _check_unchanged("storage pool", name, current, now())
            self._conn.storagePoolDefineXML(xml, 0)

    def build_pool(self, name: str, *, format: bool = False) -> None:
        """Build a pool (``virStoragePoolBuild``). ``format`` False: make a dir, netfs or
        fs pool's folder if missing (mkdir -p; flags 0 build nothing else for those
        types: measured, an fs pool's device is left blank); any other type is not
        built (flags 0 would pvcreate a logical pool's devices). ``format`` True: build
        with ``VIR_STORAGE_POOL_BUILD_NO_OVERWRITE``, which libvirt refuses on a device
        that holds a filesystem, a partition table or an LVM label ("Storage pool
        already built"), so nothing is ever formatted over data."""
        with calling(f"building storage pool {name}"):
            pool = self._conn.storagePoolLookupByName(name)
            if format:
                if not self.remote:
                    source = ET.fromstring(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE))
                    for device in source.findall("source/device"):
                        found = _not_blank(device.get("path") or "")
                        if found is not None:
                            raise Refused(
                                f"storage pool {name} not built: {found}; it is already "
                                "formatted or holds data libvirt's check does not recognise "
                                "(an image, an encrypted or raw disk), and building would "
                                "write over it. If nothing on it is wanted, clear it first "
                                "(wipefs -a, and zeros over its first and last MiB)",
                                step="build-pool")  # fmt: skip
                pool.build(libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE)
                return
            kind = ET.fromstring(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)).get("type")
            if kind not in ("dir", "netfs", "fs"):
                raise Refused(f"storage pool {name} is a {kind} pool: built only when its "
                              "manifest says build: true", step="build-pool")  # fmt: skip
            pool.build(0)

    def start_pool(self, name: str) -> None:
        with calling(f"starting storage pool {name}"):
            self._conn.storagePoolLookupByName(name).create(0)

    def stop_pool(self, name: str) -> None:
        with calling(f"stopping storage pool {name}"):
            pool = self._conn.storagePoolLookupByName(name)
            if pool.isActive():
                pool.destroy()

    def undefine_pool(self, name: str) -> None:
        with calling(f"undefining storage pool {name}"):
            self._conn.storagePoolLookupByName(name).undefine()

    def set_pool_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of storage pool {name}"):
            self._conn.storagePoolLookupByName(name).setAutostart(int(on))

    def create_volume(self, pool: str, xml: str) -> None:
        with calling(f"creating a volume in pool {pool}"):
            self._conn.storagePoolLookupByName(pool).createXML(xml, 0)

    def resize_volume(self, pool: str, name: str, capacity: int) -> None:
        with calling(f"resizing volume {pool}/{name}"):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).resize(
                capacity, 0
            )

    def delete_volume(self, pool: str, name: str) -> None:
        with calling(f"deleting volume {pool}/{name}"):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0)

    def volume_exists(self, pool: str, name: str) -> bool:
        with calling(f"looking up volume {pool}/{name}"):
            try:
                self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            return True

    def write_volume(self, pool: str, name: str, data: bytes) -> None:
        """Replace a volume's content with ``data`` (grown to fit, the rest zeroed), through
        libvirt's upload stream: it works on a remote host too."""
        with calling(f"writing volume {pool}/{name}"):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            capacity = int(vol.info()[1])
            if capacity < len(data):
                vol.resize(len(data), 0)
                capacity = len(data)
            payload = data + bytes(capacity - len(data))
            view = memoryview(payload)
            self._upload(vol, len(payload),
                         (view[i : i + 1024**2] for i in range(0, len(payload), 1024**2)))

    def import_file(self, pool: str, name: str, source: str, source_format: str,
                    progress: Callable[[int, int | None], None] | None = None) -> None:
        """Make volume ``pool/name`` (it exists, empty or half copied) hold the image file
        ``source`` of this machine, through libvirt's storage API only, so that it works
        for a remote host: the file is streamed (``virStorageVolUpload``) into a
        staging volume ``NAME.upload`` of the same pool, byte for byte; libvirt's pool
        refresh must see it as ``source_format`` (else refused); it is read back
        (``virStorageVolDownload``) and compared by SHA-256; then the volume is made
        again from it (``virStorageVolCreateXMLFrom``: libvirt converts to the volume's
        format; it cannot keep a backing store, so a volume on one is refused, as the
        planner refuses it for a remote host) and grown to its capacity
        (``virStorageVolResize``). The staging volume is deleted whatever happens.
        ``progress`` is called with (bytes sent, total) as the upload proceeds."""
        try:
            self._import_file(pool, name, source, source_format, progress)
        except OSError as exc:  # the source, read here, went away or cannot be read
            raise Refused(f"importing {source}: cannot read it: {exc.strerror or exc}") from None

    def _import_file(self, pool: str, name: str, source: str, source_format: str,
                     progress: Callable[[int, int | None], None] | None = None) -> None:
        staging = f"{name}.upload"
        with calling(f"importing {source} into volume {pool}/{name}"):
            p = self._conn.storagePoolLookupByName(pool)
            target = p.storageVolLookupByName(name)
            current = str(target.XMLDesc(0))
            if vol_xml.observe(current).get("backingVolume"):
                # CreateXMLFrom would write the whole image and drop the backing store
                raise Refused(f"importing {source}: volume {pool}/{name} is on a backing "
                              "volume; a remote copy can only fill a whole volume")  # fmt: skip
            if images.external_data_file(source):
                # the copy below (qemu-img convert on the host, as root) would read the
                # host file its header names into the volume, where a guest reads it
                raise Refused(f"importing {source}: a qcow2 image whose data is in an "
                              "external file its header names is refused; use a "
                              "self-contained image (qemu-img convert -O qcow2)")  # fmt: skip
            capacity = int(target.info()[1])
            with _vanished_ok():
                p.storageVolLookupByName(staging).delete(0)  # left by a killed import
            size = os.path.getsize(source)
            stage = p.createXML(
                f"<volume><name>{staging}</name><capacity unit='bytes'>{max(size, 1)}"
                "</capacity><target><format type='raw'/></target></volume>", 0)  # fmt: skip
            try:
                self._upload_file(stage, source, size, progress)
                self._refresh_pool(p)
                stage = p.storageVolLookupByName(staging)
                seen = vol_xml.observe(str(stage.XMLDesc(0)))
                if seen.get("format") not in _SAME_FORMAT.get(source_format, {source_format}):
                    raise Refused(f"importing {source}: libvirt reads the streamed copy as "
                                  f"{seen.get('format')}, not {source_format}; not using "
                                  "it")  # fmt: skip
                if seen.get("backingVolume"):
                    raise Refused(f"importing {source}: libvirt reads the streamed copy as "
                                  f"an image on backing file {seen['backingVolume']}; "
                                  "flatten it first")  # fmt: skip
                if self._download_digest(stage, size) != images.file_digest(source):
                    raise Refused(f"importing {source}: the streamed copy differs from it")
                target.delete(0)
                made = p.createXMLFrom(vol_xml.copy_xml(current), stage, 0)  # no backing
                if int(made.info()[1]) < capacity:
                    made.resize(capacity, 0)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    p.storageVolLookupByName(staging).delete(0)

    def _upload_file(self, vol: Any, source: str, size: int,
                     progress: Callable[[int, int | None], None] | None = None) -> None:
        with open(source, "rb") as f:
            chunks: Iterable[bytes] = iter(lambda: f.read(1024**2), b"")
            if progress is not None:
                chunks = _counted(chunks, size, progress)
            self._upload(vol, size, chunks)

    def _upload(self, vol: Any, size: int, chunks: Iterable[bytes | memoryview]) -> None:
        """Stream ``chunks`` (``size`` bytes in all) into ``vol`` (``virStorageVolUpload``);
        the stream is aborted on any error."""
        stream = self._conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    sent = stream.send(view.tobytes())
                    if sent < 0:
                        raise libvirt.libvirtError("volume upload stream refused data")
                    view = view[sent:]
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    def _download_digest(self, vol: Any, size: int) -> str:
        h = hashlib.sha256()
        stream = self._conn.newStream(0)
        vol.download(stream, 0, size, 0)
        try:
            while True:
                data = stream.recv(1024**2)
                if isinstance(data, int) and data < 0:
                    raise libvirt.libvirtError("volume download stream failed")
                if not data:
                    break
                h.update(data)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return h.hexdigest()

    def _refresh_pool(self, pool: Any) -> None:
        """Refresh ``pool`` once the refresh libvirt runs after an upload has finished
        (until then it refuses with "asynchronous jobs running")."""
        for attempt in range(100):
            try:
                pool.refresh(0)
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_INTERNAL_ERROR or attempt == 99:
                    raise
                time.sleep(0.05)

    def volume_xml(self, pool: str, name: str) -> str:
        with calling(f"reading volume {pool}/{name}"):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            return str(vol.XMLDesc(0))

    def volume(self, pool: str, name: str) -> VolumeRecord:
        """One volume as it is now (``snapshot.ObservedVolume``: path and XML, read once)."""
        with calling(f"reading volume {pool}/{name}"):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            return VolumeRecord(pool, name, str(vol.path()), str(vol.XMLDesc(0)))

    def volume_path(self, pool: str, name: str) -> str:
        with calling(f"looking up volume {pool}/{name}"):
            return str(self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).path())

    def block_resize(self, domain: str, target: str, capacity: int) -> None:
        """Grow a disk of a running domain (the guest sees the new size at once)."""
        with calling(f"resizing disk {target} of domain {domain}"):
            self._conn.lookupByName(domain).blockResize(
                target, capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
            )

    # -- events -----------------------------------------------------------------------

    def watch(
        self,
        on_event: Callable[[str, str, str], None],
        on_close: Callable[[str], None],
    ) -> None:
        """Call ``on_event(kind, name, event)`` for lifecycle events of domains, networks
        and pools, and ``on_close(reason)`` when the connection drops. Needs
        ``start_event_loop()`` before the connection was opened."""
        conn = self._conn
        with calling("registering for libvirt events"):
            conn.setKeepAlive(5, 3)  # notice a dead libvirtd within ~20 s
            conn.registerCloseCallback(
                lambda _c, reason, _o: on_close(_CLOSE_REASONS.get(reason, str(reason))), None
            )
            conn.domainEventRegisterAny(
                None,
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, dom, event, _d, _o: on_event(
                    "VirtualMachine", dom.name(), _DOMAIN_EVENTS.get(event, str(event))
                ),
                None,
            )
            conn.networkEventRegisterAny(
                None,
                libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE,
                lambda _c, net, event, _d, _o: on_event(
                    "Network", net.name(), _NETWORK_EVENTS.get(event, str(event))
                ),
                None,
            )
            with contextlib.suppress(libvirt.libvirtError, AttributeError):
                conn.storagePoolEventRegisterAny(
                    None,
                    libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
                    lambda _c, pool, event, _d, _o: on_event(
                        "StoragePool", pool.name(), _POOL_EVENTS.get(event, str(event))
                    ),
                    None,
                )


_DOMAIN_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_NETWORK_EVENTS = {
    libvirt.VIR_NETWORK_EVENT_DEFINED: "defined",
    libvirt.VIR_NETWORK_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_NETWORK_EVENT_STARTED: "started",
    libvirt.VIR_NETWORK_EVENT_STOPPED: "stopped",
}
_POOL_EVENTS = {
    libvirt.VIR_STORAGE_POOL_EVENT_DEFINED: "defined",
    libvirt.VIR_STORAGE_POOL_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_STORAGE_POOL_EVENT_STARTED: "started",
    libvirt.VIR_STORAGE_POOL_EVENT_STOPPED: "stopped",
    libvirt.VIR_STORAGE_POOL_EVENT_CREATED: "built",
    libvirt.VIR_STORAGE_POOL_EVENT_DELETED: "deleted",
}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}
_event_loop: threading.Thread | None = None


def start_event_loop() -> None:
    """Run libvirt's default event loop in a background thread, once per process.

    Events and keepalive need it; it must run before connections are opened."""
    global _event_loop
    if _event_loop is not None:
        return
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    _event_loop = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    _event_loop.start()


def _counted(chunks: Iterable[bytes], total: int,
             progress: Callable[[int, int | None], None]) -> Iterator[bytes]:
    """``chunks``, calling ``progress(bytes so far, total)`` after each."""
    done = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress(done, total)
