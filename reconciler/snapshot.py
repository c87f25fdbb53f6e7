"""What libvirt held when observed, as plain values: one record per object and the
``Observed`` snapshot of them all.

Pure: no libvirt here (``hypervisor.py`` fills the records, ``observe.py`` gathers
them into an ``Observed``), so the planner, export and preflight read a snapshot
without loading libvirt. Definitions are kept as libvirt returns them (XML text);
``reconciler.xml`` interprets them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from reconciler.inventory import Inventory


@dataclass(frozen=True, slots=True)
class DomainRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str  # persistent definition, with secrets (VIR_DOMAIN_XML_SECURE)
    live_xml: str | None  # running definition, when active
    persistent: bool = True  # False: running without a definition (after `virsh undefine`)


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    live_xml: str | None
    persistent: bool = True
    # the UUIDs of the network's ports (one per connected guest NIC) while it runs;
    # None: not read. A running guest's NIC whose ``portid`` is not among them lost
    # its connection (the network was destroyed and started again under it).
    ports: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PoolRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    persistent: bool = True


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    pool: str
    name: str
    path: str
    xml: str


@dataclass(frozen=True, slots=True)
class Observed:
    """libvirt as it was when observed."""

    domains: Mapping[str, DomainRecord] = field(default_factory=dict)
    networks: Mapping[str, NetworkRecord] = field(default_factory=dict)
    pools: Mapping[str, PoolRecord] = field(default_factory=dict)
    volumes: Mapping[tuple[str, str], VolumeRecord] = field(default_factory=dict)
    machine_aliases: Mapping[str, str] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=Inventory)


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
