"""What libvirt held when observed, as values: one per object, and the ``Observed``
snapshot of them all.

Observe once, into values: ``hypervisor.py`` fills each value with what libvirt
returns (the definitions as XML text, power state, autostart, a network's ports),
and the value interprets it once, when first asked, through the pure xml layer
(``reconciler.xml``): the parsed definition, its projection (field path -> value),
the ownership record, the running definition's projection, the CPU the domain booted
with, the live changes libvirt refused this boot, the NICs' network ports. Planner,
export and executor read these, never the XML text: the XML stays here (and is
what the executor sends back, patched, and ``--show-xml`` diffs against).

Interpretation is lazy (``functools.cached_property``): a VM found in sync by its
fingerprint is never parsed, which keeps the no-op plan of a large host cheap
(docs/performance.md). The parsed trees are shared: read them, never change them
(``xml.domain.patch`` works on its own copy of the text).

Pure: no libvirt here, so the planner, export and preflight read a snapshot
without loading libvirt.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from reconciler.inventory import Inventory
from reconciler.model import CpuSpec
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml
from reconciler.xml._fields import Element, Projection, parse

# A running domain's NICs on a libvirt network, read without a parse (it runs for
# every running VM on every plan, in sync or not): MAC, network, port UUID.
_INTERFACE = re.compile(r"<interface type=.network.>.*?</interface>", re.S)
_MAC = re.compile(r"<mac address=.([0-9a-fA-F:]+).")
_PORT = re.compile(r"<source network=.([^'\"]+).[^>]*?portid=.([0-9a-f-]+).")


@dataclass(frozen=True)
class ObservedDomain:
    """One domain as libvirt had it (libvirt's formatdomain, read once).

    ``config_xml``: the persistent definition, with secrets (VIR_DOMAIN_XML_SECURE);
    ``live_xml``: the running definition, when active; ``persistent``: False for a
    domain running without a definition (after ``virsh undefine``). Everything else
    is read from those, once, on first use."""

    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    live_xml: str | None
    persistent: bool = True

    @property
    def power(self) -> str:
        """``running`` or ``stopped`` (as a manifest's ``state`` says it)."""
        return "running" if self.active else "stopped"

    @functools.cached_property
    def config_root(self) -> Element:
        """The persistent definition, parsed (shared: read it, never change it)."""
        return parse(self.config_xml)

    @functools.cached_property
    def config(self) -> Projection:
        """The persistent definition's fields as the manifest names them (shared)."""
        return domain_xml.observe(self.config_root)

    @functools.cached_property
    def ownership(self) -> domain_xml.Ownership | None:
        """Our ownership record in the persistent definition, or None."""
        return domain_xml.read_ownership(self.config_root)

    @functools.cached_property
    def live_root(self) -> Element | None:
        """The running definition, parsed; None when not running."""
        return None if not self.active or self.live_xml is None else parse(self.live_xml)

    @functools.cached_property
    def live(self) -> Projection | None:
        """The running definition's fields (shared), None when not running. ``cpu`` is
        libvirt's expansion of it; ``booted_cpu`` says what the guest booted with."""
        return None if self.live_root is None else domain_xml.observe(self.live_root)

    @functools.cached_property
    def booted_cpu(self) -> tuple[bool, str | None]:
        """(known, cpu): the ``cpu`` the running guest booted with, from the record in
        its running definition (``domain_xml.booted_cpu``); (False, None) if unknown."""
        return (False, None) if self.live_root is None else domain_xml.booted_cpu(self.live_root)

    def running_cpu_mismatch(self, declared: CpuSpec | None) -> str | None:
        """What the running ``<cpu>`` shows against ``declared`` that a start keeps as
        written (``domain_xml.running_cpu_mismatch``), or None."""
        if self.live_root is None:
            return None
        return domain_xml.running_cpu_mismatch(self.live_root, declared)

    @functools.cached_property
    def refused(self) -> frozenset[str]:
        """Paths of live changes libvirt refused during this boot (the executor's record
        in the running definition's metadata)."""
        return frozenset() if self.live_root is None else domain_xml.read_refused(self.live_root)

    @functools.cached_property
    def boot(self) -> str | None:
        """The running domain's id (it changes at each boot), None when not running."""
        return None if self.live_root is None else self.live_root.get("id")

    @functools.cached_property
    def nic_ports(self) -> tuple[tuple[str, str, str], ...]:
        """(MAC lower-case, network, port UUID) of each running NIC on a libvirt network:
        the input to finding NICs cut off from a restarted network. Read with regular
        expressions, not a parse, and only when a running definition names a port."""
        if not self.active or not self.live_xml or "portid=" not in self.live_xml:
            return ()
        found = []
        for block in _INTERFACE.findall(self.live_xml):
            mac, port = _MAC.search(block), _PORT.search(block)
            if mac is not None and port is not None:
                found.append((mac.group(1).lower(), port.group(1), port.group(2)))
        return tuple(found)


DomainRecord = ObservedDomain
"""The name hypervisor.py and older code use for ``ObservedDomain``."""


@dataclass(frozen=True)
class ObservedNetwork:
    """One network as libvirt had it (formatnetwork). ``ports``: the UUIDs of the
    network's ports (one per connected guest NIC) while it runs; None: not read. A
    running guest's NIC whose ``portid`` is not among them lost its connection (the
    network was destroyed and started again under it)."""

    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    live_xml: str | None
    persistent: bool = True
    ports: frozenset[str] | None = None

    @functools.cached_property
    def config_root(self) -> Element:
        """The persistent definition, parsed (shared: read it, never change it)."""
        return parse(self.config_xml)

    @functools.cached_property
    def ownership(self) -> network_xml.NetworkOwnership | None:
        """The ownership record in the persistent definition, or None."""
        return network_xml.read_ownership(self.config_root)


NetworkRecord = ObservedNetwork


@dataclass(frozen=True)
class ObservedPool:
    """One storage pool as libvirt had it (formatstorage)."""

    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    persistent: bool = True

    @functools.cached_property
    def config(self) -> Projection:
        """The definition's fields as the manifest names them (shared)."""
        return pool_xml.observe(self.config_xml)

    @property
    def path(self) -> str | None:
        """The pool's target path, when it has one."""
        path = self.config.get("path")
        return path if isinstance(path, str) else None


PoolRecord = ObservedPool


@dataclass(frozen=True)
class ObservedVolume:
    """One storage volume as libvirt had it (formatstorage: ``vol.XMLDesc(0)``)."""

    pool: str
    name: str
    path: str
    xml: str

    @functools.cached_property
    def root(self) -> Element:
        return parse(self.xml)

    @functools.cached_property
    def config(self) -> Projection:
        """The volume's declared fields (capacity in bytes, format, backing...)."""
        return volume_xml.observe(self.root)

    @property
    def format(self) -> str | None:
        fmt = self.config.get("format")
        return fmt if isinstance(fmt, str) else None

    @property
    def capacity(self) -> int | None:
        """Bytes, as libvirt keeps them."""
        size = self.config.get("capacity")
        return size if isinstance(size, int) else None

    @functools.cached_property
    def allocation(self) -> int | None:
        """Bytes the volume takes on disk (``volume_xml.allocation``)."""
        return volume_xml.allocation(self.root)

    @functools.cached_property
    def modified(self) -> str | None:
        """When its content last changed (``volume_xml.modified``)."""
        return volume_xml.modified(self.root)

    @functools.cached_property
    def backing_path(self) -> str | None:
        """Its backing store's path, or None."""
        return volume_xml.backing_path(self.root)


VolumeRecord = ObservedVolume


@dataclass(frozen=True, slots=True)
class Observed:
    """libvirt as it was when observed."""

    domains: Mapping[str, ObservedDomain] = field(default_factory=dict)
    networks: Mapping[str, ObservedNetwork] = field(default_factory=dict)
    pools: Mapping[str, ObservedPool] = field(default_factory=dict)
    volumes: Mapping[tuple[str, str], ObservedVolume] = field(default_factory=dict)
    machine_aliases: Mapping[str, str] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=Inventory)
    # the host's CPU numbers (capabilities <host><topology><cells>); None: not known
    host_cpus: frozenset[int] | None = None


# What changes by itself in a pool's or a volume's XML as guests write: not drift.
_USAGE = re.compile(
    r"<(allocation|available|physical)[^>]*>[^<]*</\1>|<timestamps>.*?</timestamps>", re.S
)


def signature(observed: Observed, only: AbstractSet[tuple[str, str]] | None = None) -> str:
    """A digest of everything an out-of-band change can alter: every object's
    definitions, power state, autostart and network ports, and which volumes exist
    with what capacity, leaving out what changes by itself (space used, times).

    The daemon compares it between a pass and a later cheap check, to find changes
    that raise no libvirt event (``virsh setmem``/``setmaxmem --config``,
    ``autostart``, ``vol-delete``). ``only``: the (kind, name) pairs to cover (the
    objects the daemon manages: others changing is none of its business); None: all."""
    h = hashlib.sha256()

    def wanted(kind: str, name: str) -> bool:
        return only is None or (kind, name) in only

    def add(*parts: object) -> None:
        for part in parts:
            h.update(repr(part).encode())
            h.update(b"\0")

    for name, d in sorted(observed.domains.items()):
        if not wanted("VirtualMachine", name):
            continue
        add("d", name, d.active, d.autostart, d.persistent, d.config_xml, d.live_xml)
    for name, n in sorted(observed.networks.items()):
        if not wanted("Network", name):
            continue
        add("n", name, n.active, n.autostart, n.persistent, n.config_xml, n.live_xml,
            sorted(n.ports or ()))  # fmt: skip
    for name, p in sorted(observed.pools.items()):
        if not wanted("StoragePool", name):
            continue
        add("p", name, p.active, p.autostart, p.persistent, _USAGE.sub("", p.config_xml))
    for key, v in sorted(observed.volumes.items()):
        if not wanted("Volume", key[1]):
            continue
        add("v", key, v.path, _USAGE.sub("", v.xml))
    return h.hexdigest()
