"""Live state, read-only: one snapshot of libvirt that the planner compares with.

What arrives: an open ``Hypervisor`` and the inventory. What leaves: an
``Observed`` value holding, per object, its definitions as libvirt returns
them (XML text), its power state and autostart, and the host's machine
type aliases. The XML is interpreted by ``reconciler.xml`` in the planner;
this module only collects, in as few libvirt calls as it can (three
listings for domains, one definition each, a second for running ones).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from reconciler.hypervisor import (
    DomainRecord,
    Hypervisor,
    NetworkRecord,
    PoolRecord,
    VolumeRecord,
)
from reconciler.inventory import Inventory
from reconciler.xml.domain import machine_aliases_from_capabilities


@dataclass(frozen=True, slots=True)
class Observed:
    """libvirt as it was when observed."""

    domains: Mapping[str, DomainRecord] = field(default_factory=dict)
    networks: Mapping[str, NetworkRecord] = field(default_factory=dict)
    pools: Mapping[str, PoolRecord] = field(default_factory=dict)
    volumes: Mapping[tuple[str, str], VolumeRecord] = field(default_factory=dict)
    machine_aliases: Mapping[str, str] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=Inventory)


def observe(
    hv: Hypervisor, inventory: Inventory, *, machine_aliases: Mapping[str, str] | None = None
) -> Observed:
    """Read every domain, network, pool and volume (volumes of active pools)."""
    pools = {p.name: p for p in hv.pools()}
    ours = _owned_pools(inventory)
    volumes = {(v.pool, v.name): v for p in pools.values() if p.active
               for v in hv.volumes(p.name, refresh=p.name in ours)}  # fmt: skip
    if machine_aliases is None:
        machine_aliases = machine_aliases_from_capabilities(hv.capabilities())
    return Observed(
        domains={d.name: d for d in hv.domains()},
        networks={n.name: n for n in hv.networks()},
        pools=pools,
        volumes=volumes,
        machine_aliases=machine_aliases,
        inventory=inventory,
    )


def _owned_pools(inventory: Inventory) -> frozenset[str]:
    """Pools the tool owns, or that hold a volume it owns: the only ones refreshed
    (a refresh of someone else's pool whose folder is gone makes libvirt stop it, and
    ``plan`` touches nothing)."""
    names = {key.partition("/")[2] for key in inventory.objects if key.startswith("StoragePool/")}
    names |= {str(e.get("pool")) for key, e in inventory.objects.items()
              if key.startswith("Volume/") and e.get("pool")}  # fmt: skip
    return frozenset(names)


def observe_again(
    hv: Hypervisor,
    before: Observed,
    inventory: Inventory,
    *,
    domains: AbstractSet[str],
    everything_else: bool,
    networks: bool = False,
) -> Observed:
    """``before``, with the named ``domains`` read again (a name no longer defined is
    dropped), and networks, pools and volumes read again if ``everything_else``;
    networks alone if ``networks`` (a guest started or stopped: their ports changed).

    After an apply, only what it touched can have changed because of it: a host
    of 1,000 VMs that gained one is not read whole again to check that one.
    """
    fresh = {d.name: d for d in hv.domains_named(domains)}
    records = {n: d for n, d in before.domains.items() if n not in domains} | fresh
    if not everything_else:
        nets = {n.name: n for n in hv.networks()} if networks else before.networks
        return Observed(records, nets, before.pools, before.volumes,
                        before.machine_aliases, inventory)  # fmt: skip
    pools = {p.name: p for p in hv.pools()}
    ours = _owned_pools(inventory)
    volumes = {(v.pool, v.name): v for p in pools.values() if p.active
               for v in hv.volumes(p.name, refresh=p.name in ours)}  # fmt: skip
    every_network = {n.name: n for n in hv.networks()}
    return Observed(records, every_network, pools, volumes, before.machine_aliases, inventory)


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
