"""usage"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet

from reconciler.model import Manifest, VirtualMachineSpec, VolumeSpec
from reconciler.snapshot import Observed


def in_use(
    observed: Observed, manifests: Sequence[Manifest], *, going: AbstractSet[str] = frozenset()
) -> dict[str, set[str]]:
    """Who uses each volume, network and pool (``Kind/name`` -> users): a domain libvirt
    has (defined or running) by its disks and NICs, a volume as the backing store of
    another, a Volume or VirtualMachine manifest that names it. Objects in ``going``
    (deleted by the same plan) use nothing. Deleting an object in use would pull a disk
    from under a guest or a backing file from under a clone: prune and ``delete`` keep
    it (SPEC §5: disk data is never deleted unless asked)."""
    users: dict[str, set[str]] = {}

    def use(key: str, by: str) -> None:
        users.setdefault(key, set()).add(by)

    by_path = {v.path: (pool, name) for (pool, name), v in observed.volumes.items()}
    for name, dom in observed.domains.items():
        who = f"VirtualMachine/{name}"
        if who in going:
            continue
        for seen in (dom.config, dom.live or {}):
            for key, value in seen.items():
                if key.endswith("].volume") and isinstance(value, str):
                    pool = seen.get(key[: -len("volume")] + "pool")
                    use(f"Volume/{value}", who)
                    if isinstance(pool, str):
                        use(f"StoragePool/{pool}", who)
                elif key.endswith("].file") and isinstance(value, str) and value in by_path:
                    pool, vol = by_path[value]
                    use(f"Volume/{vol}", who)
                    use(f"StoragePool/{pool}", who)
                elif key.endswith("].network") and isinstance(value, str):
                    use(f"Network/{value}", who)
    for (_pool, name), record in observed.volumes.items():
        who = f"Volume/{name}"
        if who in going:
            continue
        backing = record.backing_path
        if backing is not None and backing in by_path:
            use(f"Volume/{by_path[backing][1]}", who)
    for m in manifests:
        who = f"{m.kind.value}/{m.name}"
        spec = m.spec
        if isinstance(spec, VolumeSpec):
            use(f"StoragePool/{spec.pool}", who)
            if spec.backing_volume:
                use(f"Volume/{spec.backing_volume}", who)
        elif isinstance(spec, VirtualMachineSpec):
            for d in spec.disks:
                if d.volume:
                    use(f"Volume/{d.volume}", who)
            for n in spec.interfaces:
                if n.network:
                    use(f"Network/{n.network}", who)
    return users
