"""context"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler import __version__, owners, rounding
from reconciler.errors import ReconcilerError
from reconciler.hostpaths import PathPolicy, host_paths
from reconciler.model import Kind, Manifest, StoragePoolSpec, VolumeSpec
from reconciler.plan import (
    Action,
    AutostartDomain,
    AutostartNetwork,
    AutostartPool,
    Change,
    Op,
    Step,
)
from reconciler.planner.usage import in_use
from reconciler.snapshot import DomainRecord, Observed
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml


@dataclass(frozen=True, slots=True)
class PlanOptions:
    prune: bool = True
    default_update_policy: str = "manual"
    allow_replace: frozenset[str] = frozenset()  # action keys, e.g. "Volume/db-root"
    revision: str | None = None  # source revision (git commit) recorded on applied objects
    secrets: Mapping[str, str] = field(default_factory=dict)  # passwordFile -> password
    # VM name -> fingerprint of the last plan that found it in sync (see ``fingerprint``)
    verified: Mapping[str, str] = field(default_factory=dict)
    # the one check of every host path a manifest names (pool path, volume source,
    # disk, ISO, kernel, log, password file; hostpaths.py); None: any path (SPEC §5)
    paths: PathPolicy | None = None
    # virtual size in bytes of the local image files that Volume sources name, read
    # (qemu-img info) for the volumes a plan may copy into; a missing path: unknown
    source_sizes: Mapping[str, int] = field(default_factory=dict)
    # the image format (``qcow2``, ``raw``, ``vmdk``...: images.sniff_format) of each
    # Volume URL source a plan may copy, by URL, read from its cached file or the
    # first bytes the server sends (reconcile.url_sources); a missing URL: unknown.
    # A URL source's virtual size is in ``source_sizes`` under its URL.
    source_formats: Mapping[str, str] = field(default_factory=dict)
    # plain path -> the real file (symlinks resolved) of the disk images a plan compares
    # (manifest disk files, the managed domains' disk files, volume paths), only where
    # they differ: one image named through a symlinked folder is one disk. Read per
    # pass by reconcile.real_paths; empty for a remote host (its links are not ours)
    real_paths: Mapping[str, str] = field(default_factory=dict)
    # the removals (keys of owned objects no manifest declares) confirmed to be meant:
    # only these are pruned, the others are held (Plan.held_removals). None: all are.
    # The daemon confirms a removal by reading it twice (daemon.RemovalGuard).
    confirmed_removals: frozenset[str] | None = None
    # the host is remote (qemu+ssh://...): volumes are filled through libvirt's storage
    # API only, which cannot copy a source onto a backing volume (see _remote_overlay)
    remote: bool = False
    # this reconciler instance's id (statedir.instance_id), written into every ownership
    # record; None: the state directory has none yet (a read-only plan), so no record
    # naming an instance is ours (owners.py)
    instance: str | None = None
    # ids of lost instances being taken back (``reconciler adopt --from-instance``): their
    # objects, and declared pools and volumes (which carry no record) that exist outside
    # our inventory, are planned as adopted, each ``ownership`` change noted TAKEN_BACK
    take_over: frozenset[str] = frozenset()
    # owned objects whose recorded manifest lies outside the manifest directory being
    # planned and still exists there (``prune.manifests_elsewhere``): key -> that path.
    # Never pruned: the state directory was applied from another manifest directory.
    manifests_elsewhere: Mapping[str, str] = field(default_factory=dict)
    # the absolute folder that ownership records name manifests under, for the manifest
    # directory being planned (a git source's: ``STATE/snapshots/current``, the same
    # for every commit); None: paths as loaded (``Manifest.source.path``)
    manifest_root: str | None = None


# Fields of a running domain that cannot be compared with its definition: the
# balloon's current size, and the CPU model host-model expands to unless the
# ownership record says what the domain booted with (domain_xml.booted_cpu).
# Declared on the fields (Field.live_readable), as every field's change class is.
LIVE_INCOMPARABLE = domain_xml.LIVE_INCOMPARABLE


_DOMAIN_DEVICES = {d.section: d for d in (domain_xml.DISKS, domain_xml.CDROMS,
                                          domain_xml.INTERFACES, domain_xml.FILESYSTEMS,
                                          domain_xml.HOSTDEVS)}  # fmt: skip


def digest(manifest: Manifest) -> str:
    """A digest of what the manifest declares (kind, name, spec): the 'last applied' mark."""
    payload = json.dumps(
        {"kind": manifest.kind.value, "name": manifest.name, "spec": manifest.document["spec"]},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def fingerprint(
    m: Manifest, live: DomainRecord, context: Mapping[str, Any], manifest_digest: str | None = None
) -> str:
    """What a VM's comparison depends on: the manifest's digest, the context it is
    rendered with, and libvirt's definitions (persistent and running), byte for byte.

    A VM found in sync with the same fingerprint is in sync again, without parsing
    its XML: most of a large plan's time. Any change on either side changes it.
    """
    h = hashlib.sha256()
    for part in (
        __version__,
        manifest_digest or digest(m),
        json.dumps(context, sort_keys=True, default=str),
        live.config_xml,
        live.live_xml or "",
        str(live.persistent),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class _Context:
    """What several planners need: who owns what, where volumes are, their formats."""

    def __init__(
        self, manifests: Sequence[Manifest], observed: Observed, options: PlanOptions,
        root: str | None = None,
    ) -> None:
        self.observed = observed
        self.options = options
        self.root = root  # the manifest directory as loaded (LoadResult.root)
        self.manifests = {m.key: m for m in manifests}
        self._digests: dict[tuple[Kind, str], str] = {}
        # pools libvirt cannot list the volumes of (not active)
        self.unlisted_pools = frozenset(n for n, p in observed.pools.items() if not p.active)
        self.volume_pools: dict[str, str] = {}
        self.volume_formats: dict[str, str] = {}
        # volumes that exist without a manifest (a base image made by hand) first,
        # so that manifests win for names they declare
        for (pool, name), record in observed.volumes.items():
            self.volume_pools.setdefault(name, pool)
            fmt = record.format
            if fmt is not None:
                self.volume_formats.setdefault(name, fmt)
        for m in manifests:
            if isinstance(m.spec, VolumeSpec):
                self.volume_pools[m.name] = m.spec.pool
                self.volume_formats[m.name] = m.spec.format

    def digest(self, m: Manifest) -> str:
        """``digest(m)``, computed once per manifest and plan (a VM needs it 4 times, and
        it is most of the cost of a VM found in sync)."""
        found = self._digests.get(m.key)
        if found is None:
            found = self._digests[m.key] = digest(m)
        return found

    def inventory_entry(self, key: str) -> Mapping[str, Any] | None:
        return self.observed.inventory.get(key)

    def manifest_path(self, m: Manifest) -> str:
        """The path ownership records name ``m``'s file by: under
        ``PlanOptions.manifest_root`` (absolute, so that another instance's conflict
        message and a record read from elsewhere name a real file), else as loaded."""
        base = self.options.manifest_root
        if base is None or self.root is None:
            return m.source.path
        rel = os.path.relpath(m.source.path, self.root)
        if rel.startswith(os.pardir):  # not under the root (cannot happen for a load)
            return m.source.path
        return os.path.normpath(os.path.join(base, rel))

    def moved(self, m: Manifest, recorded: str | None) -> list[Change]:
        """``ownership: manifest A -> B`` when an object of ours names its manifest by
        another path than the one it is declared in now (the file moved, or the record
        was written as typed, relative): its record alone is rewritten. Only with
        ``PlanOptions.manifest_root`` (absolute paths to compare)."""
        if self.options.manifest_root is None:  # paths as loaded: not comparable
            return []
        now = self.manifest_path(m)
        if recorded is None or recorded == now:
            return []
        return [Change("ownership", f"manifest {recorded}", now)]

    def owner_record(self, m: Manifest, **extra: Any) -> dict[str, Any]:
        return {
            "instance": self.options.instance,
            "manifest": self.manifest_path(m),
            "digest": self.digest(m),
            "revision": self.options.revision,
            **extra,
        }

    def pool_path(self, pool: str) -> str | None:
        m = self.manifests.get((Kind.STORAGE_POOL, pool))
        if m is not None and isinstance(m.spec, StoragePoolSpec) and m.spec.path is not None:
            return m.spec.path  # (a logical pool's manifest may leave it to libvirt)
        live = self.observed.pools.get(pool)
        return None if live is None else live.path

    def volume_path(self, pool: str, name: str) -> str | None:
        live = self.observed.volumes.get((pool, name))
        if live is not None:
            return live.path
        base = self.pool_path(pool)
        return None if base is None else os.path.join(base, name)


    @functools.cached_property
    def _users(self) -> dict[str, set[str]]:
        return in_use(self.observed, ())

    @functools.cached_property
    def _records(self) -> dict[str, str | None]:
        """The instance each domain's ownership record names (None: none, or no id)."""
        found: dict[str, str | None] = {}
        for name, dom in self.observed.domains.items():
            record = dom.ownership
            found[name] = None if record is None else record.instance
        return found

    def vm_users(self, key: str) -> set[str]:
        """The domains that use the pool or volume ``key``, directly or through what
        they use: a volume backed by it, a volume in the pool."""
        seen: set[str] = set()
        vms: set[str] = set()
        todo = [key]
        if key.startswith("StoragePool/"):
            pool = key.partition("/")[2]
            todo += [f"Volume/{v}" for (p, v) in self.observed.volumes if p == pool]
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            for user in self._users.get(item, ()):
                kind, _, name = user.partition("/")
                if kind == Kind.VIRTUAL_MACHINE.value:
                    vms.add(name)
                elif kind == Kind.VOLUME.value:
                    todo.append(user)
        return vms

    def taken_back_vm(self, name: str) -> bool:
        """Whether this take-back takes the domain ``name``: its record names an instance
        being taken back, and a manifest declares it."""
        return self._records.get(name) in self.options.take_over and \
            (Kind.VIRTUAL_MACHINE, name) in self.manifests  # fmt: skip

    def other_owners(self, key: str) -> list[str]:
        """Instance ids of the VMs that use the pool or volume ``key`` (directly or
        through a backing volume or a volume of the pool) and stay another instance's
        (neither ours nor taken by this take-back): a sign that it belongs to that
        instance too, since libvirt keeps no record on a pool or a volume."""
        found = set()
        for name in self.vm_users(key):
            instance = self._records.get(name)
            if instance and instance != self.options.instance and \
                    not self.taken_back_vm(name):  # fmt: skip
                found.add(instance)
        return sorted(found)

    def keepers(self, key: str) -> dict[str, list[str]]:
        """The VMs that keep a take-back from taking the pool or volume ``key``: those
        using it (as ``vm_users``) whose record names an instance neither ours nor one
        being taken back; instance id -> VM names."""
        found: dict[str, list[str]] = {}
        for name in sorted(self.vm_users(key)):
            instance = self._records.get(name)
            if instance and instance != self.options.instance and \
                    instance not in self.options.take_over:  # fmt: skip
                found.setdefault(instance, []).append(name)
        return found

    def unrecorded_owner(self, key: str, in_inventory: bool) -> owners.Owner:
        """The owner of a pool or volume (no record in libvirt): our inventory decides."""
        return owners.judge(None, in_inventory=in_inventory, ours=self.options.instance)

    def taken(self, owner: owners.Owner, key: str = "", *, recorded: bool = True) -> bool:
        """Whether ``reconciler adopt --from-instance`` takes this object back: one whose
        record names an instance being taken back; a pool or volume (which carries no
        record) whenever a manifest declares it (the caller's) and it is not in our
        inventory, unless a VM whose record names a third instance (neither ours nor one
        being taken back) uses it (directly, through a backing volume or a volume of
        the pool): proof that someone else manages it. The issue's "one documented step
        takes them all back" includes standalone pools and volumes no VM uses."""
        if not self.options.take_over or owner.ours:
            return False
        if recorded:
            return owner.instance in self.options.take_over
        return owner.standing is owners.Standing.UNMANAGED and not self.keepers(key)

    def not_taken_back(self, key: str) -> str:
        """Why a take-back leaves the pool or volume ``key`` alone ("" when no take-back)."""
        if not self.options.take_over:
            return ""
        keepers = self.keepers(key)
        if keepers:
            return "not taken back: " + " and ".join(
                f"VM {', '.join(vms)} of reconciler instance {instance} uses it"
                for instance, vms in keepers.items()
            ) + " (libvirt keeps no record on pools and volumes: a VM another live " \
                "instance manages that uses it is the sign that instance owns it)"
        return "not taken back"


def _conflict(m: Manifest, what: str, owner: owners.Owner | None = None, *,
              recorded: bool = True, ctx: _Context | None = None) -> Action:  # fmt: skip
    owner = owner or owners.Owner(owners.Standing.UNMANAGED)
    reason = owners.conflict_reason(what, owner, recorded=recorded)
    if not recorded and ctx is not None:
        key = f"{m.kind.value}/{m.name}"
        if ctx.options.take_over:
            reason += f"; {ctx.not_taken_back(key)}"
        else:
            others = ctx.other_owners(key)
            if others:
                reason += f"; VMs of reconciler instance {', '.join(others)} use it"
    return Action(m.kind, m.name, Op.CONFLICT, reason=reason, source=m.source)


def _adoption(owner: owners.Owner, ctx: _Context, *, taken: bool = False,
              recorded: bool = True) -> list[Change]:  # fmt: skip
    """The ``ownership`` change of an object taken over (adopt: true, a take-back) or
    whose record is rewritten with our id; none for one that is ours as it stands.
    ``recorded``: libvirt keeps a record on this kind (False: pools and volumes, whose
    adoption is noted as invisible to another instance that lists it)."""
    if owner.ours and not owner.retag:
        return []
    if owner.standing is owners.Standing.UNMANAGED and not taken:
        return [Change("ownership", "unmanaged", "managed",
                       note="" if recorded else owners.NO_RECORD)]  # fmt: skip
    note = owners.TAKEN_BACK if taken else \
        owners.TAKEN_FROM if owner.standing is owners.Standing.OTHER else ""  # fmt: skip
    return [Change("ownership", owner.label(), owners.ours_label(ctx.options.instance),
                   note=note)]


def _recorded(entry: Mapping[str, Any] | None, record: Mapping[str, Any],
              fields: Iterable[str]) -> list[Change]:
    """Changes to settings that live only in the inventory (libvirt has no place for them):
    recorded by the apply like any other change, or they would silently never apply."""
    if entry is None:
        return []
    return [Change(f, entry.get(f), record.get(f), live=True)
            for f in fields if entry.get(f) != record.get(f)]  # fmt: skip


def _persist(persistent: bool) -> list[Change]:
    """A running object whose definition was undefined (``virsh undefine`` leaves it
    running, transient) is defined again, which keeps it running and its UUID."""
    return [] if persistent else [Change("persistent", False, True, live=True)]


_AUTOSTART: dict[str, type[AutostartPool | AutostartNetwork | AutostartDomain]] = {
    "pool": AutostartPool, "network": AutostartNetwork, "domain": AutostartDomain,
}  # fmt: skip


def _autostart(kind: str, have: bool, want: bool) -> tuple[list[Change], list[Step]]:
    if have == want:
        return [], []
    return [Change("autostart", have, want, live=True)], [_AUTOSTART[kind](on=want)]


def _found(xml: str | None, path: str) -> str:
    """The XML of the device or entry at ``path``, which the diff says is there."""
    if xml is None:  # the projection and the XML disagree: a bug, never a guess
        raise ReconcilerError(f"{path}: not found in the definition it was read from")
    return xml


def _edit_error(m: Manifest, kind: Kind, index: int, why: str) -> Action:
    """The plan error of ``xml`` entry ``index`` (the escape hatch), at its line."""
    return Action(kind, m.name, Op.ERROR, source=m.position(("spec", "xml", index)),
                  reason=why if why.startswith("xml[") else f"xml[{index}]: {why}")  # fmt: skip


def _refused_path(m: Manifest, ctx: _Context) -> Action | None:
    """An error action if any host path ``m`` names fails the one check (hostpaths.py)."""
    policy = ctx.options.paths
    # each placed at its field (file:line:col), as preflight places its problems
    refusals = [] if policy is None else [
        f"{m.position(hp.where)}: {refusal}"
        for hp in host_paths(m) if (refusal := policy.refusal(hp)) is not None
    ]  # fmt: skip
    if not refusals:
        return None
    return Action(
        m.kind, m.name, Op.ERROR, source=m.source,
        reason="refusing host paths outside the allowed roots: " + "; ".join(refusals)
        + " (move it under an allowed root, or add a root to that setting in the "
        "configuration)",
    )  # fmt: skip


def _rounding_notes(changes: list[Change], asked: Mapping[str, int]) -> list[Change]:
    """``changes``, those to a size the manifest gives (``asked``: path -> its bytes)
    noted with the value libvirt makes of it when that is not the manifest's own."""
    out = []
    for c in changes:
        size = asked.get(c.path)
        if size is not None and isinstance(c.new, int) and not c.note:
            note = rounding.rounded_note(size, c.new)
            if note:
                c = dataclasses.replace(c, note=note)
        out.append(c)
    return out


def other_owner(key: str, observed: Observed, ours: str | None) -> owners.Owner | None:
    """The other reconciler instance whose record the VM or network ``key`` carries now
    (it adopted it), or None. Such an object is never pruned or deleted by this one."""
    kind, _, name = key.partition("/")
    record: domain_xml.Ownership | network_xml.NetworkOwnership | None = None
    if kind == Kind.VIRTUAL_MACHINE.value and name in observed.domains:
        record = observed.domains[name].ownership
    elif kind == Kind.NETWORK.value and name in observed.networks:
        record = observed.networks[name].ownership
    if record is None or record.instance is None or record.instance == ours:
        return None
    return owners.Owner(owners.Standing.OTHER,
                        owners.Record(record.instance, record.manifest, record.revision))


def _other_owner(key: str, observed: Observed, ours: str | None) -> Action | None:
    """A prune of an object another instance owns now: dropped from our inventory only."""
    owner = other_owner(key, observed, ours)
    if owner is None:
        return None
    kind, _, name = key.partition("/")
    return Action(Kind(kind), name, Op.FORGET,
                  reason=f"owned by {owner.describe()} now: left alone, and dropped from this "
                  "instance's inventory")  # fmt: skip
