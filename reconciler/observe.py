"""Live state, read-only: one snapshot of libvirt that the planner compares with.

What arrives: an open ``Hypervisor`` and the inventory. What leaves: an
``Observed`` value holding, per object, its definitions as libvirt returns
them (XML text), its power state and autostart, and the host's machine
type aliases. The XML is interpreted by ``reconciler.xml`` in the planner;
this module only collects, in as few libvirt calls as it can (three
listings for domains, one definition each, a second for running ones).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from reconciler.hypervisor import Hypervisor
from reconciler.inventory import Inventory
from reconciler.snapshot import Observed as Observed
from reconciler.snapshot import signature as signature
from reconciler.xml.domain import machine_aliases_from_capabilities
from reconciler.xml.domain_tuning import host_cpus_from_capabilities


def observe(
    hv: Hypervisor, inventory: Inventory, *, machine_aliases: Mapping[str, str] | None = None,
    host_cpus: frozenset[int] | None = None,
) -> Observed:
    """Read every domain, network, pool and volume (volumes of active pools).
    ``machine_aliases`` and ``host_cpus``: the host's, read before (both come from
    its capabilities, read again when either is not given)."""
    pools = {p.name: p for p in hv.pools()}
    ours = _owned_pools(inventory)
    volumes = {(v.pool, v.name): v for p in pools.values() if p.active
               for v in hv.volumes(p.name, refresh=p.name in ours)}  # fmt: skip
    if machine_aliases is None or host_cpus is None:
        caps = hv.capabilities()
        machine_aliases = machine_aliases_from_capabilities(caps)
        host_cpus = host_cpus_from_capabilities(caps)
    return Observed(
        domains={d.name: d for d in hv.domains()},
        networks={n.name: n for n in hv.networks()},
        pools=pools,
        volumes=volumes,
        machine_aliases=machine_aliases,
        inventory=inventory,
        host_cpus=host_cpus,
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
                        before.machine_aliases, inventory, before.host_cpus)  # fmt: skip
    pools = {p.name: p for p in hv.pools()}
    ours = _owned_pools(inventory)
    volumes = {(v.pool, v.name): v for p in pools.values() if p.active
               for v in hv.volumes(p.name, refresh=p.name in ours)}  # fmt: skip
    every_network = {n.name: n for n in hv.networks()}
    return Observed(records, every_network, pools, volumes, before.machine_aliases, inventory,
                    before.host_cpus)  # fmt: skip
