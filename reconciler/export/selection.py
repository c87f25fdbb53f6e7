"""selection"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.export.notes import _entries
from reconciler.model import Kind, seed_volume_name
from reconciler.snapshot import Observed

STOCK = frozenset({(Kind.NETWORK, "default"), (Kind.STORAGE_POOL, "default")})
"""libvirt's own objects (the packaged NAT network, virt-install's image pool): left out
of ``--all`` unless asked for, since VMs may name them without a manifest anyway."""


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
