"""seeds"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler import cloudinit
from reconciler.diff import devices
from reconciler.model import Manifest, VirtualMachineSpec, VolumeSpec, seed_volume_name
from reconciler.plan import Change, DeleteSeed, Step, WriteSeed
from reconciler.planner.context import _Context
from reconciler.snapshot import VolumeRecord
from reconciler.xml import domain as domain_xml
from reconciler.xml import volume as volume_xml

SEED_CAPACITY = 1024**2  # a seed volume's size when made; grown if an image needs more


def _key(pool: object, volume: object) -> str:
    return f"{pool}/{volume}"


def _cdrom_volumes(projection: Mapping[str, object]) -> set[str]:
    """``pool/volume`` of every CD-ROM whose medium is a storage volume."""
    found = set()
    for target in devices(projection, "cdroms"):
        volume = projection.get(f"cdroms[{target}].volume")
        if volume is not None:
            found.add(_key(projection.get(f"cdroms[{target}].pool"), volume))
    return found


@dataclass(frozen=True, slots=True)
class _SeedPlan:
    """A VM's cloud-init seed volume: the one it needs, the ones it owns, what to do.

    The VM owns the seed volumes its inventory entry lists (``seeds``) and any
    ``<vm>-cidata`` volume its definition has as a CD-ROM. The content is written
    (``write-seed``) when the volume is missing, the domain was defined with
    another seed digest, or the volume was written since the tool wrote it (its
    modification time differs from the one the inventory entry keeps, where the
    pool reports one); a seed the VM no longer uses is deleted once no running
    domain reads it.
    """

    vm: str
    seed: domain_xml.CloudInitSeed | None
    files: cloudinit.Seed | None
    owned: frozenset[str]
    volumes: Mapping[tuple[str, str], VolumeRecord] = field(repr=False)
    written: Mapping[str, str] = field(default_factory=dict)  # key -> mtime when written

    @classmethod
    def make(cls, m: Manifest, spec: VirtualMachineSpec, ctx: _Context) -> _SeedPlan | str:
        """The seed plan of VM ``m``, or why it cannot be made."""
        entry = ctx.inventory_entry(f"VirtualMachine/{m.name}") or {}
        listed = [s for s in entry.get("seeds", ()) if isinstance(s, Mapping)]
        owned = frozenset(_key(s.get("pool"), s.get("volume")) for s in listed)
        written = {_key(s.get("pool"), s.get("volume")): str(s["written"])
                   for s in listed if s.get("written")}  # fmt: skip
        ci = spec.cloud_init
        if ci is None:
            return cls(m.name, None, None, owned, ctx.observed.volumes, written)
        pool = ci.pool
        if pool is None:
            first = next((d.volume for d in spec.disks if d.volume), None)
            pool = ctx.volume_pools.get(first or "")
            if pool is None:
                return (
                    f"cloudInit: the pool of the seed volume is not known (volume {first!r} "
                    "has no known pool); set cloudInit.pool"
                )
        files = cloudinit.make_seed(m.name, ci)
        seed = domain_xml.CloudInitSeed(pool, seed_volume_name(m.name), files.digest)
        return cls(m.name, seed, files, owned, ctx.observed.volumes, written)

    def _exists(self, key: str) -> bool:
        pool, _, volume = key.partition("/")
        return (pool, volume) in self.volumes

    def with_domain(self, config: Mapping[str, object]) -> _SeedPlan:
        """Also owned: the VM's seed volume that its definition has as a CD-ROM."""
        mine = {k for k in _cdrom_volumes(config) if k.endswith("/" + seed_volume_name(self.vm))}
        return dataclasses.replace(self, owned=self.owned | mine)

    def _modified(self, key: str) -> str | None:
        pool, _, volume = key.partition("/")
        record = self.volumes.get((pool, volume))
        return None if record is None else record.modified

    def overwritten(self) -> bool:
        """Whether the seed volume was written by someone else since the tool wrote it."""
        seed = self.seed
        if seed is None or seed.key not in self.written:
            return False
        now = self._modified(seed.key)
        return now is not None and now != self.written[seed.key]

    def conflict(self, adopt: bool) -> str | None:
        """Why the seed volume cannot be used: it exists and is not this VM's."""
        seed = self.seed
        if seed is None or adopt or seed.key in self.owned or not self._exists(seed.key):
            return None
        return (
            f"volume {seed.key} exists and is not the cloud-init seed of this VM; "
            "remove it, set cloudInit.pool to another pool, or set adopt: true to take it over"
        )

    def write_steps(self, *, force: bool) -> list[Step]:
        """``write-seed`` when the volume is missing, or ``force`` (its content changes)."""
        seed, files = self.seed, self.files
        if seed is None or files is None or not (force or not self._exists(seed.key)):
            return []
        spec = VolumeSpec(pool=seed.pool, capacity=SEED_CAPACITY, format=cloudinit.SEED_FORMAT)
        return [WriteSeed(seed.pool, seed.volume, seed.digest,
                          volume_xml.render(seed.volume, spec), files.as_dict())]

    def retire(self, in_use: set[str]) -> tuple[list[Change], list[Step], list[str]]:
        """Changes and steps that delete owned seeds the VM no longer needs; the ones kept
        because a running domain still reads them."""
        changes: list[Change] = []
        steps: list[Step] = []
        kept: list[str] = []
        for key in sorted(self.owned):
            if self.seed is not None and key == self.seed.key:
                continue
            if key in in_use:
                kept.append(key)
            elif self._exists(key):
                pool, _, volume = key.partition("/")
                changes.append(Change("cloudInit.volume", key, None, live=True))
                steps.append(DeleteSeed(pool, volume))
        return changes, steps, kept

    def record(self, kept: Iterable[str]) -> dict[str, Any]:
        """The inventory entry's ``seeds``: what prune deletes with the VM."""
        keys = sorted({*([] if self.seed is None else [self.seed.key]), *kept})
        if not keys:
            return {}
        seeds = []
        for key in keys:
            pool, _, volume = key.partition("/")
            written = {"written": self.written[key]} if key in self.written else {}
            seeds.append({"pool": pool, "volume": volume, **written})
        return {"seeds": seeds}

    def fingerprint(self) -> object:
        seed = self.seed
        desired = None
        if seed is not None:
            desired = [seed.key, seed.digest, self._exists(seed.key), self._modified(seed.key),
                       self.written.get(seed.key)]  # fmt: skip
        return [desired, sorted(self.owned)]
