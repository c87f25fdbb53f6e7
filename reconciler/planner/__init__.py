"""Planner: desired manifests + observed libvirt state -> an ordered, classified Plan.

What arrives: a ``LoadResult`` (manifests.py), an ``Observed`` snapshot
(observe.py) and ``PlanOptions``. What leaves: a ``Plan`` (plan.py) whose
actions each say what changes (field, old -> new), how (SPEC §3 classes) and
the steps that do it, with all XML rendered. Order: VMs that go away first
(freeing names, ports, disks), then pools, volumes, networks and VMs on the
way up, then the networks, volumes and pools that go away.

Pure: the same inputs give the same plan. Nothing here calls libvirt or
reads files; executor.py carries the plan out.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from reconciler import __version__, cloudinit, owners, rounding
from reconciler import inventory as inventory_file
from reconciler.diff import by_device, devices, diff
from reconciler.errors import ReconcilerError
from reconciler.hints import dotted
from reconciler.hostpaths import PathPolicy
from reconciler.manifests import LoadResult
from reconciler.model import (
    Kind,
    Manifest,
    NetworkSpec,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    seed_volume_name,
)
from reconciler.plan import (
    UNSETTLED_NOTE,
    Action,
    AttachDevice,
    AutostartDomain,
    AutostartNetwork,
    AutostartPool,
    BlockResize,
    BuildPool,
    Change,
    CreateVolume,
    DefineDomain,
    DefineNetwork,
    DefinePool,
    DeleteSeed,
    DeleteVolume,
    DetachDevice,
    ImportVolume,
    NetUpdate,
    Op,
    Plan,
    ResizeVolume,
    RestartDomain,
    SetMemory,
    SetVcpus,
    StartDomain,
    StartNetwork,
    StartPool,
    Step,
    StopDomain,
    StopNetwork,
    StopPool,
    UndefineDomain,
    UndefineNetwork,
    UndefinePool,
    UpdateDevice,
    WriteSeed,
    is_unsettled,
)
from reconciler.snapshot import DomainRecord, Observed, VolumeRecord
from reconciler.units import format_size
from reconciler.userterms import in_user_terms
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml
from reconciler.xml._fields import ChangeClass, change_class


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


# Fields of a running domain that cannot be compared with its definition: the
# balloon's current size, and the CPU model host-model expands to unless the
# ownership record says what the domain booted with (domain_xml.booted_cpu).
# Declared on the fields (Field.live_readable), as every field's change class is.
LIVE_INCOMPARABLE = domain_xml.LIVE_INCOMPARABLE
_DOMAIN_DEVICES = {d.section: d for d in (domain_xml.DISKS, domain_xml.CDROMS,
                                          domain_xml.INTERFACES)}  # fmt: skip


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


def make_plan(load: LoadResult, observed: Observed, options: PlanOptions) -> Plan:
    """The plan that makes libvirt match ``load.manifests``."""
    ctx = _Context(load.manifests, observed, options)
    by_kind: dict[Kind, list[Manifest]] = {k: [] for k in Kind}
    for m in load.manifests:
        by_kind[m.kind].append(m)
    up: list[Action] = []
    up += [_plan_pool(m, ctx) for m in by_kind[Kind.STORAGE_POOL]]
    up += [_plan_volume(m, ctx) for m in _backing_first(by_kind[Kind.VOLUME])]
    up += [_plan_network(m, ctx) for m in by_kind[Kind.NETWORK]]
    up += [_plan_vm(m, ctx) for m in by_kind[Kind.VIRTUAL_MACHINE]]
    down, blocked, held = _plan_prune(load, observed, options)
    first = [a for a in down if a.kind is Kind.VIRTUAL_MACHINE]
    last = [a for a in down if a.kind is not Kind.VIRTUAL_MACHINE]
    sizes = {m.name: m.spec.capacity for m in by_kind[Kind.VOLUME]
             if isinstance(m.spec, VolumeSpec)}  # fmt: skip
    actions = [in_user_terms(a, ctx.manifests.get((a.kind, a.name)), sizes)
               for a in first + up + last]  # fmt: skip
    return Plan(actions=tuple(actions), prune_blocked=blocked, held_removals=held)


# --- shared context ------------------------------------------------------------


class _Context:
    """What several planners need: who owns what, where volumes are, their formats."""

    def __init__(
        self, manifests: Sequence[Manifest], observed: Observed, options: PlanOptions
    ) -> None:
        self.observed = observed
        self.options = options
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

    def owner_record(self, m: Manifest, **extra: Any) -> dict[str, Any]:
        return {
            "instance": self.options.instance,
            "manifest": m.source.path,
            "digest": self.digest(m),
            "revision": self.options.revision,
            **extra,
        }

    def pool_path(self, pool: str) -> str | None:
        m = self.manifests.get((Kind.STORAGE_POOL, pool))
        if m is not None and isinstance(m.spec, StoragePoolSpec):
            return m.spec.path
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

    def unrecorded_owner(self, key: str, in_inventory: bool) -> owners.Owner:
        """The owner of a pool or volume (no record in libvirt): our inventory decides."""
        return owners.judge(None, in_inventory=in_inventory, ours=self.options.instance)

    def taken(self, owner: owners.Owner, key: str = "", *, recorded: bool = True) -> bool:
        """Whether ``reconciler adopt --from-instance`` takes this object back: one whose
        record names an instance being taken back; a pool or volume (which carries no
        record) only when it is not in our inventory, a VM this take-back takes uses it
        (directly, through a backing volume or a volume of the pool: the link to the
        lost instance), and no VM that stays another instance's uses it."""
        if not self.options.take_over or owner.ours:
            return False
        if recorded:
            return owner.instance in self.options.take_over
        return owner.standing is owners.Standing.UNMANAGED and not self.other_owners(key) \
            and any(self.taken_back_vm(n) for n in self.vm_users(key))  # fmt: skip

    def not_taken_back(self, key: str) -> str:
        """Why a take-back leaves the pool or volume ``key`` alone ("" when no take-back)."""
        if not self.options.take_over:
            return ""
        if self.other_owners(key):
            return "not taken back: VMs that stay another instance's use it"
        return ("not taken back: no VM being taken back uses it (libvirt keeps no record "
                "on pools and volumes, so nothing links it to "
                f"{', '.join(sorted(self.options.take_over))}); set adopt: true in its "
                "manifest to take it over")


def _conflict(m: Manifest, what: str, owner: owners.Owner | None = None, *,
              recorded: bool = True, ctx: _Context | None = None) -> Action:  # fmt: skip
    owner = owner or owners.Owner(owners.Standing.UNMANAGED)
    reason = owners.conflict_reason(what, owner, recorded=recorded)
    if not recorded and ctx is not None:
        key = f"{m.kind.value}/{m.name}"
        others = ctx.other_owners(key)
        if others:
            reason += f"; VMs of reconciler instance {', '.join(others)} use it"
        if ctx.options.take_over and not others:
            reason += f"; {ctx.not_taken_back(key)}"
    return Action(m.kind, m.name, Op.CONFLICT, reason=reason, source=m.source)


def _adoption(owner: owners.Owner, ctx: _Context, *, taken: bool = False) -> list[Change]:
    """The ``ownership`` change of an object taken over (adopt: true, a take-back) or
    whose record is rewritten with our id; none for one that is ours as it stands."""
    if owner.ours and not owner.retag:
        return []
    if owner.standing is owners.Standing.UNMANAGED and not taken:
        return [Change("ownership", "unmanaged", "managed")]
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


# --- storage pools -----------------------------------------------------------------


def _plan_pool(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, StoragePoolSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    live = ctx.observed.pools.get(m.name)
    record = ctx.owner_record(m)
    if live is None:
        new: list[Step] = [DefinePool(pool_xml.render(m.name, spec)), BuildPool()]
        if spec.state == "active":
            new.append(StartPool())
        if spec.autostart:
            new.append(AutostartPool(on=True))
        return Action(
            Kind.STORAGE_POOL,
            m.name,
            Op.CREATE,
            (),
            tuple(new),
            source=m.source,
            owner_record=record,
        )
    key = f"StoragePool/{m.name}"
    owner = ctx.unrecorded_owner(key, ctx.inventory_entry(key) is not None)
    taken = ctx.taken(owner, key, recorded=False)
    if not owner.ours and not spec.adopt and not taken:
        return _conflict(m, f"storage pool '{m.name}'", owner, recorded=False, ctx=ctx)
    config_changes = diff(pool_xml.project(spec), live.config)
    changes = _adoption(owner, ctx, taken=taken) + config_changes + _persist(live.persistent)
    steps: list[Step] = []
    if config_changes or not live.persistent:
        # the current definition, patched: its <source>, <permissions> and the rest stay
        steps.append(DefinePool(pool_xml.patch(live.config_xml, spec),
                                current=live.config_xml))  # fmt: skip
    if config_changes:
        # libvirt builds only a stopped pool ("already active"); a dir pool restarts
        # harmlessly, on its new definition
        if live.active:
            steps.append(StopPool())
        steps.append(BuildPool())
        if live.active and spec.state == "active":
            steps.append(StartPool())
    if spec.state == "active" and not live.active:
        changes.append(Change("state", "inactive", "active", live=True))
        steps += [BuildPool(), StartPool()]  # build: mkdir if it went missing
    elif spec.state == "inactive" and live.active:
        changes.append(Change("state", "active", "inactive", live=True))
        steps.append(StopPool())
    auto_changes, auto_steps = _autostart("pool", live.autostart, spec.autostart)
    changes += auto_changes
    steps += auto_steps
    op = Op.UPDATE_LIVE if changes else Op.NOOP
    return Action(
        Kind.STORAGE_POOL,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        owner_record=record,
    )


# --- volumes ---------------------------------------------------------------------


def _backing_first(volumes: list[Manifest]) -> list[Manifest]:
    names = {m.name: m for m in volumes}
    ordered: list[Manifest] = []
    seen: set[str] = set()

    def visit(m: Manifest) -> None:
        if m.name in seen:
            return
        seen.add(m.name)
        assert isinstance(m.spec, VolumeSpec)
        base = names.get(m.spec.backing_volume or "")
        if base is not None:
            visit(base)
        ordered.append(m)

    for m in volumes:
        visit(m)
    return ordered


def _plan_volume(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, VolumeSpec)
    refused = _refused_path(m, ctx)
    if refused is not None:
        return refused
    live = ctx.observed.volumes.get((spec.pool, m.name))
    requires = [f"StoragePool/{spec.pool}"]
    backing_path = backing_format = None
    if spec.backing_volume:
        requires.append(f"Volume/{spec.backing_volume}")
        backing_path = ctx.volume_path(spec.pool, spec.backing_volume)
        backing_format = ctx.volume_formats.get(spec.backing_volume)
    too_big = _source_too_big(m, spec, ctx) or _remote_overlay(m, spec, ctx)
    if too_big is not None:
        return too_big
    entry = ctx.inventory_entry(f"Volume/{m.name}")
    owned = entry is not None and entry.get("pool") == spec.pool
    # A volume with a source is done only when its content is (issue 11): the record
    # says "content pending" until the executor has copied and verified it.
    pending = _content_pending(entry) if owned else None
    record = ctx.owner_record(m, pool=spec.pool, reclaimPolicy=spec.reclaim_policy)
    # the record a create or a re-copy writes before the copy starts
    copying = {**record, inventory_file.CONTENT_PENDING: {"source": spec.source}}
    xml = volume_xml.render(m.name, spec, backing_path=backing_path, backing_format=backing_format)
    copy = ImportVolume(spec.pool, spec.source, backing_path)
    create: list[Step] = [CreateVolume(spec.pool, xml)]
    if spec.source:
        create.append(copy)
    if live is None and spec.pool in ctx.unlisted_pools:
        unseen = _unseen_volume(m, spec, ctx, owned)
        if unseen is not None:
            return unseen
    if live is None:
        return Action(
            Kind.VOLUME,
            m.name,
            Op.CREATE,
            (),
            tuple(create),
            source=m.source,
            owner_record=copying if spec.source else record,
            requires=tuple(requires),
        )
    owner = ctx.unrecorded_owner(f"Volume/{m.name}", owned)
    taking_back = ctx.taken(owner, f"Volume/{m.name}", recorded=False)
    if not owned and not spec.adopt and not taking_back:
        return _conflict(m, f"volume '{m.name}' in pool '{spec.pool}'", owner, recorded=False,
                         ctx=ctx)  # fmt: skip
    desired = volume_xml.project(spec, backing_path=backing_path, backing_format=backing_format)
    current = live.config
    have = current.get("capacity")
    # what libvirt makes of the manifest's bytes, by the path it took (rounding.py)
    desired["capacity"] = rounding.volume_capacity(
        spec.capacity, spec.format, have if isinstance(have, int) else None
    )
    changes = _rounding_notes(_adoption(owner, ctx, taken=taking_back) + diff(desired, current),
                              {"capacity": spec.capacity})  # fmt: skip
    recorded = _recorded(entry if owned else None, record, ["reclaimPolicy"])
    steps: list[Step] = []
    replace = [c for c in changes
               if change_class(volume_xml.FIELDS, c.path) is ChangeClass.REPLACE]  # fmt: skip
    changes += recorded
    capacity = next((c for c in changes if c.path == "capacity"), None)
    key = f"Volume/{m.name}"
    if replace:
        if key not in ctx.options.allow_replace:
            return Action(
                Kind.VOLUME,
                m.name,
                Op.REPLACE,
                tuple(changes),
                (),
                reason="changing "
                + ", ".join(c.path for c in replace)
                + " recreates the volume and loses its data; not done unless asked: "
                f"reconciler apply --allow-replace {key}",
                source=m.source,
                requires=tuple(requires),
            )
        create[0] = CreateVolume(spec.pool, xml, current=live.xml)
        steps = [DeleteVolume(spec.pool), *create]
        return Action(
            Kind.VOLUME,
            m.name,
            Op.REPLACE,
            tuple(changes),
            tuple(steps),
            source=m.source,
            owner_record=copying if spec.source else record,
            requires=tuple(requires),
        )
    if capacity is not None:
        old, new = int(capacity.old or 0), int(capacity.new or 0)
        if new < old:
            return Action(
                Kind.VOLUME,
                m.name,
                Op.ERROR,
                tuple(changes),
                (),
                reason=f"shrinking capacity from {format_size(old)} to {format_size(new)} is "
                f"refused (it would cut off data); set capacity: {format_size(old)} or more",
                source=m.source,
            )
        user = _running_user(ctx.observed.domains.values(), spec.pool, m.name)
        taken = live.allocation
        if user is None and rounding.resize_refused(new, taken):  # (QEMU's resize is not)
            return Action(
                Kind.VOLUME,
                m.name,
                Op.ERROR,
                tuple(changes),
                (),
                reason=f"growing capacity from {old} to {new} bytes is refused by libvirt: "
                f"the volume's file already takes {taken} bytes (whole filesystem blocks), "
                f"and libvirt resizes to no less than that; set capacity: {taken}B or more",
                source=m.source,
            )
        if user is not None:
            steps.append(
                BlockResize(domain=user[0], target=user[1], capacity=new)
            )
        else:
            steps.append(ResizeVolume(spec.pool, new))
        changes = [dataclasses.replace(c, live=True) if c is capacity else c for c in changes]
    if pending is not None and spec.source:
        # made by this tool, its copy never finished (killed, or the copy failed):
        # copy again over the whole volume, unless a running VM uses it by now
        user = _running_user(ctx.observed.domains.values(), spec.pool, m.name)
        if user is not None:
            return Action(
                Kind.VOLUME, m.name, Op.ERROR, tuple(changes), (), source=m.source,
                owner_record=copying,
                reason=f"the copy of {spec.source} into this volume never completed, and "
                f"running VM {user[0]} uses it now; not overwriting it. Stop the VM (the "
                "copy is retried), or delete the volume to have it made again",
            )  # fmt: skip
        was = pending.get("source") or spec.source
        changes.append(Change("content", f"copy of {was} pending", f"copy of {spec.source}",
                              live=True))  # fmt: skip
        steps.append(copy)
        record = copying
    op = Op.UPDATE_LIVE if changes else Op.NOOP
    return Action(
        Kind.VOLUME,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        owner_record=record,
        requires=tuple(requires),
    )


def _content_pending(entry: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The volume's unfinished copy, from its inventory entry (``CONTENT_PENDING``)."""
    found = None if entry is None else entry.get(inventory_file.CONTENT_PENDING)
    return found if isinstance(found, Mapping) else None


def _source_too_big(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """A source image larger than the volume cannot be copied in: an error at plan time
    (the size is known when reconcile.py could read the file)."""
    size = ctx.options.source_sizes.get(spec.source) if spec.source else None
    if size is None or size <= spec.capacity:
        return None
    return Action(
        Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "source")),
        reason=f"source {spec.source} holds {format_size(size)} ({size} bytes), more than "
        f"capacity {format_size(spec.capacity)}: the copy cannot fit; set capacity: "
        f"{format_size(size)} or more",
    )  # fmt: skip


def _remote_overlay(m: Manifest, spec: VolumeSpec, ctx: _Context) -> Action | None:
    """``source`` with ``backingVolume`` on a remote host: libvirt's copy from another
    volume (``virStorageVolCreateXMLFrom``) writes the whole image and drops the backing
    store, and nothing runs qemu-img on the controller, so it cannot be made there."""
    if not (ctx.options.remote and spec.source and spec.backing_volume):
        return None
    return Action(
        Kind.VOLUME, m.name, Op.ERROR, source=m.position(("spec", "backingVolume")),
        reason=f"a copy of source {spec.source} on backing volume {spec.backing_volume} "
        "cannot be made on a remote host (libvirt's storage API copies whole images); "
        "drop backingVolume to copy the whole image, or run reconciler on that host",
    )  # fmt: skip


def _unseen_volume(m: Manifest, spec: VolumeSpec, ctx: _Context, owned: bool) -> Action | None:
    """A volume in a pool that is not active: libvirt cannot list it. One we own is
    taken to be there (it is compared once the pool runs); one we do not is created
    after the pool starts (None), which needs the pool to be wanted active."""
    if owned:
        return Action(Kind.VOLUME, m.name, Op.NOOP, source=m.source,
                      reason=f"pool {spec.pool} is not active: the volume is checked "
                      "once it runs")  # fmt: skip
    pool = ctx.manifests.get((Kind.STORAGE_POOL, spec.pool))
    if pool is not None and isinstance(pool.spec, StoragePoolSpec) and pool.spec.state == "active":
        return None
    reason = (
        f"pool {spec.pool} is not active, so the volume cannot be made; start it "
        f"(state: active in its manifest, or virsh pool-start {spec.pool})"
    )
    return Action(Kind.VOLUME, m.name, Op.ERROR, source=m.source, reason=reason)


def _running_user(
    domains: Iterable[DomainRecord], pool: str, volume: str
) -> tuple[str, str] | None:
    """(domain, target) of a running domain that has the volume as a disk."""
    for d in domains:
        live = d.live
        if live is None:
            continue
        for key in devices(live, "disks"):
            if (
                live.get(f"disks[{key}].pool") == pool
                and live.get(f"disks[{key}].volume") == volume
            ):
                return (d.name, str(live.get(f"disks[{key}].target")))
    return None


# --- networks ---------------------------------------------------------------------

_NET_LIVE_SECTIONS = ("ipv4.dhcp.hosts", "dnsHosts")


def _plan_network(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, NetworkSpec)
    live = ctx.observed.networks.get(m.name)
    record = ctx.owner_record(m)
    ownership = network_xml.NetworkOwnership(
        instance=ctx.options.instance, manifest=m.source.path, digest=digest(m),
        revision=ctx.options.revision,
    )  # fmt: skip
    if live is None:
        new: list[Step] = [DefineNetwork(network_xml.render(m.name, spec, ownership=ownership))]
        if spec.state == "active":
            new.append(StartNetwork())
        if spec.autostart:
            new.append(AutostartNetwork(on=True))
        return Action(
            Kind.NETWORK, m.name, Op.CREATE, (), tuple(new), source=m.source, owner_record=record
        )
    found = live.ownership
    in_inventory = ctx.inventory_entry(f"Network/{m.name}") is not None
    owner = owners.judge(
        None if found is None else owners.Record(found.instance, found.manifest, found.revision),
        in_inventory=in_inventory, ours=ctx.options.instance,
    )  # fmt: skip
    taken = ctx.taken(owner)
    # adopt: true takes over anything but what another instance took from us (owners.py)
    if not owner.ours and not (spec.adopt and owner.adoptable) and not taken:
        return _conflict(m, f"network '{m.name}'", owner)
    # networks made before they carried a record: ours by the inventory, recorded now
    if owner.ours and found is None and ctx.options.instance is not None:
        owner = owners.Owner(owners.Standing.OURS, None, retag=True)
    declared = spec.bridge is not None
    desired = network_xml.project(spec)
    config_changes = diff(desired, network_xml.observe(live.config_xml, bridge_declared=declared))
    adoption = _adoption(owner, ctx, taken=taken)
    changes = adoption + config_changes + _persist(live.persistent)

    @functools.cache
    def patched() -> str:
        # the current definition, patched: what the manifest does not say is kept
        return network_xml.patch(live.config_xml, spec, ownership=ownership)

    steps: list[Step] = []
    if config_changes or not live.persistent or adoption:
        steps.append(DefineNetwork(patched(), current=live.config_xml))
    pending: list[Change] = []
    running = live.active and live.live_xml is not None
    if running and live.live_xml is not None:
        live_projection = network_xml.observe(live.live_xml, bridge_declared=declared)
        live_steps, pending = _network_live_updates(desired, live_projection, patched,
                                                    live.live_xml)  # fmt: skip
        steps += live_steps
        changes = _mark_live(changes, {s.args["path"] for s in live_steps})
    if spec.state == "active" and not live.active:
        changes.append(Change("state", "inactive", "active", live=True))
        steps.append(StartNetwork())
        pending = []
    elif spec.state == "inactive" and live.active:
        changes.append(Change("state", "active", "inactive", live=True))
        steps.append(StopNetwork())
        pending = []
    auto_changes, auto_steps = _autostart("network", live.autostart, spec.autostart)
    changes += auto_changes
    steps += auto_steps
    if not changes:
        op = Op.NOOP
    elif any(c.path in {p.path for p in pending} for c in config_changes):
        op = Op.UPDATE_RESTART
    else:
        op = Op.UPDATE_LIVE
    return Action(
        Kind.NETWORK,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        restart_pending=tuple(pending),
        owner_record=record,
    )


def _network_live_updates(
    desired: Mapping[str, object], live: Mapping[str, object],
    desired_xml: Callable[[], str], live_xml: str,
) -> tuple[list[Step], list[Change]]:  # fmt: skip
    """net-update steps for lease and DNS entries; everything else waits for a restart.
    A DHCP host goes to the IPv4 ``<ip>`` by its index (``index``), never to the first
    ``<ip>`` with DHCP, which may be the IPv6 one."""
    steps: list[Step] = []
    pending: list[Change] = []
    for dev, changes in sorted(by_device(diff(desired, live)).items(), key=lambda kv: str(kv[0])):
        if dev is None or dev[0] not in _NET_LIVE_SECTIONS:
            pending += changes
            continue
        section, key = dev
        wanted = key in devices(desired, section)
        present = key in devices(live, section)
        dhcp = section == "ipv4.dhcp.hosts"
        index = network_xml.dhcp_parent_index(live_xml) if dhcp else None
        xml_section = "ip-dhcp-host" if dhcp else "dns-host"
        path = f"{section}[{key}]"
        if present:
            old = network_xml.entry_xml(live_xml, section, key)
            steps.append(NetUpdate("delete", xml_section, path, _found(old, path), index))
        if wanted:
            new = network_xml.entry_xml(desired_xml(), section, key)
            steps.append(NetUpdate("add", xml_section, path, _found(new, path), index))
    return steps, pending


def _found(xml: str | None, path: str) -> str:
    """The XML of the device or entry at ``path``, which the diff says is there."""
    if xml is None:  # the projection and the XML disagree: a bug, never a guess
        raise ReconcilerError(f"{path}: not found in the definition it was read from")
    return xml


def _mark_live(changes: list[Change], live_prefixes: set[str]) -> list[Change]:
    return [
        Change(c.path, c.old, c.new, live=True)
        if any(c.path.startswith(p + ".") for p in live_prefixes)
        else c
        for c in changes
    ]


# --- virtual machines -----------------------------------------------------------


def _refused_path(m: Manifest, ctx: _Context) -> Action | None:
    """An error action if any host path ``m`` names fails the one check (hostpaths.py)."""
    policy = ctx.options.paths
    refusals = policy.refusals(m) if policy is not None else []
    if not refusals:
        return None
    return Action(
        m.kind, m.name, Op.ERROR, source=m.source,
        reason="refusing host paths outside the allowed roots: " + "; ".join(refusals)
        + " (move it under an allowed root, or add a root to that setting in the "
        "configuration)",
    )  # fmt: skip


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


def _plan_vm(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, VirtualMachineSpec)
    outside = _refused_path(m, ctx)
    if outside is not None:
        return outside
    requires = tuple(
        [f"Volume/{d.volume}" for d in spec.disks if d.volume]
        + [f"Network/{n.network}" for n in spec.interfaces if n.network]
    )
    password = None
    if spec.graphics is not None and spec.graphics.password_file:
        password = ctx.options.secrets.get(spec.graphics.password_file)
        if password is None:
            return Action(
                Kind.VIRTUAL_MACHINE,
                m.name,
                Op.ERROR,
                source=m.source,
                reason=f"cannot read graphics.passwordFile {spec.graphics.password_file}",
            )
    live = ctx.observed.domains.get(m.name)
    ownership = domain_xml.Ownership(
        manifest=m.source.path, digest=ctx.digest(m), revision=ctx.options.revision,
        instance=ctx.options.instance,
    )  # fmt: skip
    seeds = _SeedPlan.make(m, spec, ctx)
    if isinstance(seeds, str):
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=seeds)
    if seeds.seed is not None:
        requires += (f"StoragePool/{seeds.seed.pool}",)
    kwargs: dict[str, Any] = {
        "volume_pools": ctx.volume_pools,
        "volume_formats": ctx.volume_formats,
        "graphics_password": password,
        "machine_aliases": ctx.observed.machine_aliases,
        "cloud_init_seed": seeds.seed,
    }
    if live is None:
        conflict = seeds.conflict(spec.adopt)
        if conflict is not None:
            return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source,
                          reason=conflict)  # fmt: skip
        try:
            xml = domain_xml.render(m.name, spec, ownership=ownership, **kwargs)
        except ValueError as exc:
            return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source,
                          reason=str(exc))  # fmt: skip
        new: list[Step] = [*seeds.write_steps(force=True), DefineDomain(xml)]
        if spec.state == "running":
            new.append(StartDomain())
        if spec.autostart:
            new.append(AutostartDomain(on=True))
        old_changes, old_steps, kept = seeds.retire(in_use=set())
        new += old_steps
        record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                                  **seeds.record(kept))  # fmt: skip
        return Action(
            Kind.VIRTUAL_MACHINE, m.name, Op.CREATE, (), tuple(new),
            source=m.source, owner_record=record, requires=requires,
            reason=_host_defaults_note(m),
        )  # fmt: skip
    lost = _lost_nics(live, ctx)
    context = {
        "lost_nics": lost,
        "pools": {d.volume: ctx.volume_pools.get(d.volume) for d in spec.disks if d.volume},
        "formats": {d.volume: ctx.volume_formats.get(d.volume) for d in spec.disks if d.volume},
        "password": hashlib.sha256((password or "").encode()).hexdigest(),
        "machine": ctx.observed.machine_aliases.get(spec.machine),
        "seeds": seeds.fingerprint(),
        "instance": ctx.options.instance,
    }
    entry = ctx.inventory_entry(f"VirtualMachine/{m.name}")
    history = _restart_history(entry, ctx.digest(m))
    # differences an apply made under this manifest that did not settle: not again
    stuck_record = _stuck_history(entry, ctx.digest(m))
    stuck_keys = set(stuck_record.get(inventory_file.UNSETTLED, {}).get("changes", ()))
    record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                              **seeds.record(seeds.owned), **history,
                              **stuck_record)  # fmt: skip
    recorded = _recorded(entry, record, ["shutdownTimeout"])
    print_ = fingerprint(m, live, context, ctx.digest(m))
    if ctx.options.verified.get(m.name) == print_ and not recorded:
        quick = _vm_power_and_autostart(m, spec, live, record, print_)
        if quick is not None:
            return quick
    # a disk is its image: one the domain has under another name (its file, the
    # volume at that path) keeps its element, and is one change of that disk
    volume_paths = {k: v.path for k, v in ctx.observed.volumes.items()}
    config_root, switched = domain_xml.switch_sources(
        spec, live.config_root, volume_paths, ctx.volume_pools)  # fmt: skip
    if not switched:  # the observed definition as it is (parsed once, shared: not changed)
        config_root = live.config_root
    current_xml: str | Any = config_root if switched else live.config_xml
    # a disk keeps the target the domain has it at, unless the manifest names one
    # (a stopped one gives a replaced image the name the image it replaces frees)
    spec = domain_xml.settle_targets(spec, config_root, reuse_freed=not live.active)
    try:
        desired = domain_xml.project(spec, **kwargs)
    except ValueError as exc:
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=str(exc))
    found = live.ownership
    owner = owners.judge(
        None if found is None else owners.Record(found.instance, found.manifest, found.revision),
        in_inventory=entry is not None, ours=ctx.options.instance,
    )  # fmt: skip
    taken = ctx.taken(owner)
    # adopt: true takes over anything but what another instance took from us (owners.py)
    if not owner.ours and not (spec.adopt and owner.adoptable) and not taken:
        return _conflict(m, f"VM '{m.name}'", owner)

    @functools.cache
    def rendered() -> str:  # only for a VM that changes: patching is a plan's main cost
        # the current definition, patched: what the manifest does not say is kept
        return domain_xml.patch(current_xml, spec, ownership=ownership, **kwargs)

    try:
        cannot = domain_xml.refusal(spec, config_root, rendered)
        if cannot is None and not spec.boot and not spec.kernel:
            # boot: [] needs a device that still carries a boot order after the patch
            cannot = domain_xml.boot_order_refusal(spec, config_root, rendered())
    except ValueError as exc:
        cannot = str(exc)
    if cannot is not None:  # patching would lose what the domain has, or never settle
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=cannot)
    clash = domain_xml.unmanaged_clash(spec, config_root)
    if clash is not None:  # a target or MAC a kept, unmanaged device has
        where, why = clash
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.position(where),
                      reason=f"{dotted(where)}: {why}")  # fmt: skip
    config = domain_xml.observe(config_root) if switched else live.config
    seeds = seeds.with_domain(config)
    conflict = seeds.conflict(spec.adopt)
    if conflict is not None:
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=conflict)
    config_changes = _rounding_notes(diff(desired, config), {
        "memory": spec.memory, "maxMemory": spec.max_memory})  # fmt: skip
    config_changes += [Change(f"disks[{key}].source", had, now) for key, had, now in switched]
    stuck: list[Change] = []
    if config_changes and all(settle_key(c) in stuck_keys for c in config_changes):
        # an apply defined exactly this and libvirt kept something else: defining it
        # again would loop (a define every pass); said as unsettled instead
        stuck, config_changes = [_not_settled(c) for c in config_changes], []
    adoption = _adoption(owner, ctx, taken=taken)
    changes = adoption + config_changes + _persist(live.persistent)
    overwritten = seeds.overwritten()
    steps: list[Step] = seeds.write_steps(
        force=config.get("cloudInit") != desired.get("cloudInit") or overwritten
    )
    if steps and seeds.seed is not None and not config_changes:
        # the seed volume went missing or was overwritten: written again, as it was
        was = "overwritten outside reconciler" if overwritten else None
        changes.append(Change("cloudInit.volume", was, seeds.seed.key, live=True))
    if owner.retag and changes == adoption and not steps:
        # only the record lacks our id: set it, and keep the definition as libvirt has it
        retagged = domain_xml.with_owner_instance(live.config_xml, str(ctx.options.instance))
        steps.append(DefineDomain(retagged, current=live.config_xml))
    elif changes:
        steps.append(DefineDomain(rendered(), current=live.config_xml))
    pending: list[Change] = []
    timeout = spec.shutdown_timeout
    in_use: set[str] = set()
    if live.live_root is not None and live.live is not None and live.live_xml is not None:
        live_root, live_switched = domain_xml.switch_sources(
            spec, live.live_root, volume_paths, ctx.volume_pools)  # fmt: skip
        live_projection = dict(domain_xml.observe(live_root) if live_switched else live.live)
        # cpu: compared through the record of what the domain booted with, when known
        incomparable = {p for p in LIVE_INCOMPARABLE if p != "cpu"}
        cpu_known, booted_cpu = live.booted_cpu
        if cpu_known:
            live_projection["cpu"] = booted_cpu
            mismatch = live.running_cpu_mismatch(spec.cpu)
            if mismatch is not None:  # booted from a definition edited out of band
                live_projection["cpu"] = f"{booted_cpu} (running: {mismatch})"
        else:
            incomparable.add("cpu")
        in_use = _cdrom_volumes(live_projection)
        refused = live.refused
        # the running domain has the desired sizes as QEMU rounds them (rounding.py)
        desired_live = _as_running(desired)
        live_steps, pending, live_changes = _vm_live_updates(
            desired_live, config, live_projection, rendered, live.live_xml, refused,
            frozenset(incomparable),
        )  # fmt: skip
        steps += live_steps
        # a definition change the running domain already has needs no restart
        # (a disk's image under another name: the running domain has it as it had)
        pending += [Change(f"disks[{key}].source", had, now)
                    for key, had, now in live_switched]  # fmt: skip
        unseen = incomparable | {c.path for c in pending}
        done = {c.path for c in live_changes} | {
            c.path
            for c in config_changes
            if c.path not in unseen
            and live_projection.get(c.path) == desired_live.get(c.path)
        }
        changes = [dataclasses.replace(c, live=True) if c.path in done else c for c in changes]
        changes += [c for c in live_changes if c.path not in {x.path for x in changes}]
        # a NIC cut off from its network (the network was restarted under the running
        # guest): libvirt 9.0 cannot reconnect it live (see docs/decisions.md), a boot does
        pending += [
            Change(f"interfaces[{mac}].connected", f"no (network {net} was restarted)", "yes")
            for mac, net in lost
            if f"interfaces[{mac}].connected" not in {c.path for c in pending}
        ]
        policy = spec.update_policy or ctx.options.default_update_policy
        # what a restart was done for (under this manifest); not if the domain has not
        # booted since the record was written (the restart was skipped, or failed)
        boot = live.boot
        restart_record = history.get(inventory_file.RESTARTED_FOR, {})
        tried = set(restart_record.get("changes", ()))
        if restart_record.get("boot") == boot:
            tried = set()
        # a pending difference that an apply already failed to settle restarts nothing
        pending = [_not_settled(c) if settle_key(c) in stuck_keys else c for c in pending]
        restartable = [c for c in pending if not is_unsettled(c)]
        if restartable and spec.state == "running" and policy == "restart" and not (
            {_pending_key(c) for c in restartable} <= tried
        ):
            steps.append(RestartDomain(timeout))
            changes += [c for c in restartable if c.path not in {x.path for x in changes}]
            restarted = True
            history = {inventory_file.RESTARTED_FOR: {
                "digest": ctx.digest(m),
                "changes": sorted(tried | {_pending_key(c) for c in restartable}),
                "boot": boot,  # the domain id before the restart: it changes at a boot
            }}  # fmt: skip
        else:
            restarted = False
            if policy == "restart" and tried:
                # restarted for this very manifest already, and the running domain
                # still differs the same way: a rounding (or other) bug of ours. Said
                # once by the apply that restarted it; never restarted again for it.
                pending = [_unsettled(c) if _pending_key(c) in tried and not is_unsettled(c)
                           else c for c in pending]  # fmt: skip
    else:
        restarted = False
    failure = _start_failure(entry, spec, live)
    if spec.state == "running" and not live.active:
        note = _start_failure_note(failure)
        changes.append(Change("state", "stopped", "running", live=True, note=note))
        steps.append(StartDomain())
    elif spec.state == "stopped" and live.active:
        changes.append(Change("state", "running", "stopped", live=True))
        steps.append(StopDomain(timeout))
        pending = []
    auto_changes, auto_steps = _autostart("domain", live.autostart, spec.autostart)
    changes += auto_changes + recorded
    steps += auto_steps
    # seeds the VM no longer uses go, unless the running domain still reads one
    going_down = restarted or spec.state == "stopped"
    old_changes, old_steps, kept = seeds.retire(set() if going_down else in_use)
    changes += old_changes
    steps += old_steps
    record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                              **seeds.record(kept), **failure, **history,
                              **stuck_record)  # fmt: skip
    pending += [c for c in stuck if c.path not in {x.path for x in pending}]
    if restarted:
        op, pending = Op.UPDATE_RESTART, [c for c in pending if is_unsettled(c)]
    elif not changes:
        op = Op.NOOP
    elif any(not c.live and c.path != "ownership" for c in changes) and live.active:
        op = Op.UPDATE_RESTART
    else:
        op = Op.UPDATE_LIVE
    return Action(
        Kind.VIRTUAL_MACHINE,
        m.name,
        op,
        _from_host(m, changes),
        tuple(steps),
        source=m.source,
        restart_pending=_from_host(m, pending),
        owner_record=record,
        requires=requires,
        fingerprint=print_ if op is Op.NOOP and not pending else None,
    )


def _pending_key(change: Change) -> str:
    """One pending difference, as the VM's ``restartedFor`` record keeps it."""
    return f"{change.path}: {change.old!r} -> {change.new!r}"


def settle_key(change: Change) -> str:
    """One difference an apply made that did not settle, as the VM's ``unsettled``
    record (inventory.UNSETTLED) keeps it: the field and the value asked for."""
    return f"{change.path} -> {change.new!r}"


def _not_settled(change: Change) -> Change:
    return dataclasses.replace(change, note=(
        f"{UNSETTLED_NOTE}: an apply of this manifest set {change.new!r} and libvirt "
        f"kept {change.old!r}; not defining or restarting it again for this "
        "(a bug in reconciler: please report it)"
    ))  # fmt: skip


def _stuck_history(entry: Mapping[str, Any] | None, manifest_digest: str) -> dict[str, Any]:
    """The VM's ``unsettled`` record (inventory.UNSETTLED) to keep: the differences an
    apply of this same manifest digest made that did not settle; {} once the manifest
    changed (a new manifest may be tried again)."""
    record = (entry or {}).get(inventory_file.UNSETTLED)
    if not isinstance(record, Mapping) or record.get("digest") != manifest_digest:
        return {}
    changes = record.get("changes")
    if not isinstance(changes, list):
        return {}
    return {inventory_file.UNSETTLED: {"digest": manifest_digest,
                                       "changes": sorted(str(c) for c in changes)}}


def _unsettled(change: Change) -> Change:
    return dataclasses.replace(change, note=(
        f"{UNSETTLED_NOTE}: the VM was restarted for this manifest and still has "
        f"{change.old!r}, not {change.new!r}; not restarting it again for this "
        "(a bug in reconciler: please report it)"
    ))  # fmt: skip


def _restart_history(entry: Mapping[str, Any] | None, manifest_digest: str) -> dict[str, Any]:
    """The VM's ``restartedFor`` record (inventory.RESTARTED_FOR) to keep: the pending
    differences it was restarted for under this same manifest digest; {} once the
    manifest changed (a new manifest may be restarted for again)."""
    record = (entry or {}).get(inventory_file.RESTARTED_FOR)
    if not isinstance(record, Mapping) or record.get("digest") != manifest_digest:
        return {}
    changes = record.get("changes")
    if not isinstance(changes, list):
        return {}
    return {inventory_file.RESTARTED_FOR: {"digest": manifest_digest,
                                           "changes": [str(c) for c in changes],
                                           "boot": record.get("boot")}}  # fmt: skip


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


def _as_running(desired: Mapping[str, object]) -> dict[str, object]:
    """``desired`` (a domain projection) as a running domain shows it: ``maxMemory``
    aligned the way QEMU's start aligns it (rounding.running_memory)."""
    out = dict(desired)
    size = out.get("maxMemory")
    if isinstance(size, int):
        out["maxMemory"] = rounding.running_memory(size)
    return out


def _lost_nics(live: DomainRecord, ctx: _Context) -> list[tuple[str, str]]:
    """(MAC, network) of each NIC of a running domain that is no longer connected to its
    running network: its ``portid`` is not among the network's ports. It happens when
    the network is destroyed and started again under the guest (``virsh net-destroy``,
    then the tool heals the network): the tap device stays off the new bridge, and
    nothing in the domain's own XML changes. (``live.nic_ports`` is read without a
    parse: it runs for every running VM on every plan, in sync or not.)"""
    if not live.active or not live.live_xml or "portid=" not in live.live_xml:
        return []  # (before nic_ports: this runs for every VM, in sync or not)
    lost = []
    for mac, network, port in live.nic_ports:
        net = ctx.observed.networks.get(network)
        if net is None or not net.active or net.ports is None:
            continue  # a network not running is the network's own change to make
        if port not in net.ports:
            lost.append((mac, network))
    return lost


def _host_defaults_note(m: Manifest) -> str:
    """``with host defaults: cpu.features.x=disable (from FILE)`` for a VM created with
    values the host's vmDefaults gave, else ''."""
    if not m.host_defaults:
        return ""
    spec = m.document["spec"]
    shown = []
    for path in m.host_defaults:
        value: Any = spec
        for part in path.split(".", 2) if path.startswith("cpu.features.") else path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        shown.append(f"{path}={value}")
    return f"with host defaults: {', '.join(shown)} (vmDefaults in {m.host_defaults_origin})"


def _from_host(m: Manifest, changes: Iterable[Change]) -> tuple[Change, ...]:
    """``changes``, each naming the host defaults its new value holds (hostdefaults.py)."""
    out = []
    for c in changes:
        taken = [t for t in m.host_defaults if t == c.path or t.startswith(c.path + ".")]
        if taken:
            c = dataclasses.replace(
                c, origin=f"{', '.join(taken)} from vmDefaults in {m.host_defaults_origin}"
            )
        out.append(c)
    return tuple(out)
def _start_failure(
    entry: Mapping[str, Any] | None, spec: VirtualMachineSpec, live: DomainRecord
) -> dict[str, Any]:
    """The VM's last refused start (see inventory.START_FAILURE), kept in its owner
    record while it should run and does not; dropped (at the next apply) otherwise."""
    record = (entry or {}).get(inventory_file.START_FAILURE)
    if not isinstance(record, Mapping) or live.active or spec.state != "running":
        return {}
    return {inventory_file.START_FAILURE: dict(record)}


def _start_failure_note(failure: Mapping[str, Any]) -> str:
    """``last start failed at <when>: <error>`` for the ``state`` change, or ""."""
    record = failure.get(inventory_file.START_FAILURE)
    if not isinstance(record, Mapping):
        return ""
    return f"last start failed at {record.get('at', '?')}: {record.get('error', '?')}"


def _vm_power_and_autostart(
    m: Manifest, spec: VirtualMachineSpec, live: DomainRecord, record: dict[str, Any], fp: str
) -> Action | None:
    """The action for a VM whose definitions are known to be in sync: a no-op,
    unless its power state or autostart (not part of the XML) differ."""
    if (spec.state == "running") != live.active or spec.autostart != live.autostart:
        return None  # take the full path: it handles these with everything else
    return Action(
        Kind.VIRTUAL_MACHINE, m.name, Op.NOOP, source=m.source, owner_record=record,
        fingerprint=fp,
    )  # fmt: skip


def _vm_live_updates(
    desired: Mapping[str, object],
    config: Mapping[str, object],
    live: Mapping[str, object],
    desired_xml: Callable[[], str],
    live_xml: str,
    refused: frozenset[str] = frozenset(),
    incomparable: frozenset[str] = LIVE_INCOMPARABLE,
) -> tuple[list[Step], list[Change], list[Change]]:
    """Steps that change the running domain; what must wait for a restart; what they change.

    Computed against the running definition (not the persistent one), so that
    reverting a manifest clears a pending restart instead of adding one.
    ``refused``: live changes libvirt already refused for this domain (field or
    device paths); they wait for a restart instead of being tried again.
    ``incomparable``: fields the running definition cannot tell (see LIVE_INCOMPARABLE).
    """
    steps: list[Step] = []
    pending: list[Change] = []
    applied: list[Change] = []
    max_memory, max_vcpus = live.get("maxMemory"), live.get("maxVcpus")
    # memory cannot be read back from a running domain (see LIVE_INCOMPARABLE):
    # a changed definition is applied to the balloon when it fits.
    if desired.get("memory") != config.get("memory"):
        change = Change("memory", config.get("memory"), desired.get("memory"), live=True)
        fits = desired.get("maxMemory") == max_memory and int(
            desired.get("memory") or 0  # type: ignore[call-overload]
        ) <= int(max_memory or 0)  # type: ignore[call-overload]
        if fits and "memory" not in refused:
            steps.append(SetMemory("memory", int(desired.get("memory") or 0)))  # type: ignore[call-overload]
            applied.append(change)
        else:
            pending.append(Change("memory", config.get("memory"), desired.get("memory")))
    grouped = by_device(diff(desired, live, ignore=incomparable))

    def going_first(kv: tuple[tuple[str, str] | None, list[Change]]) -> tuple[bool, str]:
        # devices that go are detached before new ones come: a new disk may take
        # the target an old one frees (another image at vdb)
        dev = kv[0]
        gone = dev is not None and dev[1] not in devices(desired, dev[0])
        return (not gone, str(dev))

    for dev, changes in sorted(grouped.items(), key=going_first):
        if dev is None:
            graphics = [c for c in changes if c.path.startswith("graphics.")]
            password = _password_update(graphics, live_xml, desired_xml, refused)
            if password is not None:
                steps.append(password)
                applied += [Change(c.path, c.old, c.new, live=True) for c in graphics]
                changes = [c for c in changes if c not in graphics]
            for change in changes:
                # vCPUs are hot-plugged, not unplugged: taking one away needs the
                # guest's help and often never completes, so that waits for a restart.
                declared = domain_xml.FIELDS_BY_PATH.get(change.path)
                if (
                    change.path == "vcpus"  # the one live field without a step of its own
                    and declared is not None and declared.change is ChangeClass.LIVE
                    and change.path not in refused
                    and desired.get("maxVcpus") == max_vcpus
                    and int(change.old or 0) < int(change.new or 0) <= int(max_vcpus or 0)  # type: ignore[call-overload]
                ):
                    steps.append(SetVcpus("vcpus", int(change.new)))
                    applied.append(Change(change.path, change.old, change.new, live=True))
                else:
                    pending.append(change)
            continue
        section, key = dev
        path = f"{section}[{key}]"
        if path in refused:  # libvirt or the guest refused it during this boot
            pending += changes
            continue
        wanted = key in devices(desired, section)
        present = key in devices(live, section)
        table = _DOMAIN_DEVICES[section]
        hot = table.change is ChangeClass.LIVE and (
            section != "disks"
            or (desired.get(f"disks[{key}].bus") if wanted else live.get(f"disks[{key}].bus"))
            in domain_xml.HOTPLUG_DISK_BUSES
        )
        # a device that stays, changed only in fields done to the running domain
        only_media = (
            wanted
            and present
            and all(change_class(table.fields, c.path.removeprefix(f"{path}."))
                    is ChangeClass.LIVE for c in changes)
        )
        verb: type[UpdateDevice | AttachDevice | DetachDevice]
        if only_media:
            verb, source = UpdateDevice, desired_xml()
        elif hot and wanted and not present and not _target_reused(section, key, desired, live):
            verb, source = AttachDevice, desired_xml()
        elif hot and present and not wanted and not _target_reused(section, key, live, desired):
            verb, source = DetachDevice, live_xml  # the device as the guest has it
        else:
            pending += changes
            continue
        steps.append(verb(path, _found(domain_xml.device_xml(source, section, key), path)))
        applied += [Change(c.path, c.old, c.new, live=True) for c in changes]
    return steps, pending, applied


def _target_reused(
    section: str, key: str, mine: Mapping[str, object], other: Mapping[str, object]
) -> bool:
    """Whether disk ``key``'s target in ``mine`` is another disk's in ``other``: another
    image at the same target (desired vs running, for an attach; running vs desired,
    for a detach). An unplug completes only when the guest lets go, so such a swap
    waits for a restart, whole, instead of racing the detach."""
    if section != "disks":
        return False
    target = mine.get(f"disks[{key}].target")
    return any(
        k != key and other.get(f"disks[{k}].target") == target for k in devices(other, "disks")
    )


def _password_update(
    graphics: list[Change], live_xml: str, desired_xml: Callable[[], str], refused: frozenset[str]
) -> Step | None:
    """A new display password alone is set on the running display (a rotated secret
    must not wait for a restart); any other display change waits for one."""
    if [c.path for c in graphics] != ["graphics.password"] or "graphics" in refused:
        return None
    xml = domain_xml.graphics_update(live_xml, desired_xml())
    return None if xml is None else UpdateDevice("graphics", xml)


# --- prune ------------------------------------------------------------------------


def _plan_prune(
    load: LoadResult, observed: Observed, options: PlanOptions
) -> tuple[list[Action], str, tuple[str, ...]]:
    """Delete what the tool owns and no manifest declares any more (SPEC §3 prune rules);
    also why some are kept, and which removals wait for confirmation."""
    declared = {f"{m.kind.value}/{m.name}" for m in load.manifests}
    # Only the inventory decides what is pruned: a domain's metadata proves ownership
    # but may have been written by another reconciler (another state directory).
    owned: dict[str, Mapping[str, Any]] = dict(observed.inventory.objects)
    orphans = sorted(k for k in owned if k not in declared)
    if not orphans:
        return [], "", ()
    if not load.complete:
        return [], (
            f"{len(orphans)} owned object(s) without a manifest kept: "
            "not every manifest loaded and passed its checks (see the problems), and a "
            "manifest with a problem may still declare them "
            f"({', '.join(orphans)})"
        ), ()
    if not options.prune:
        return [], f"{len(orphans)} owned object(s) without a manifest kept: prune is off", ()
    blocked: str = ""
    held: tuple[str, ...] = ()
    if options.confirmed_removals is not None:
        held = tuple(k for k in orphans if k not in options.confirmed_removals)
        orphans = [k for k in orphans if k in options.confirmed_removals]
        if held:
            blocked = (
                f"{len(held)} owned object(s) without a manifest kept until the removal is "
                f"confirmed by a second read of unchanged files ({', '.join(held)})"
            )
    users = in_use(observed, load.manifests, going=set(orphans))
    busy = [k for k in orphans if k in users]
    if busy:
        orphans = [k for k in orphans if k not in users]
        note = (f"{len(busy)} owned object(s) without a manifest kept while in use: "
                + "; ".join(f"{k} by {', '.join(sorted(users[k]))}" for k in busy))  # fmt: skip
        blocked = f"{blocked}; {note}" if blocked else note
    actions = [a for key in orphans
               if (a := _other_owner(key, observed, options.instance)
                   or _delete(key, owned[key], observed)) is not None]  # fmt: skip
    return _down_order(actions, observed), blocked, held


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


def _down_order(actions: list[Action], observed: Observed) -> list[Action]:
    """Deletes in the order they can run: VMs, networks, volumes (clones first), pools."""
    order = {Kind.VIRTUAL_MACHINE: 0, Kind.NETWORK: 1, Kind.VOLUME: 2, Kind.STORAGE_POOL: 3}
    clones = {a.name for a in actions if a.kind is Kind.VOLUME and _has_backing(a, observed)}
    return sorted(actions, key=lambda a: (order[a.kind], a.name not in clones, a.name))


def plan_delete(keys: Sequence[str], observed: Observed, *, delete_data: bool = False,
                instance: str | None = None) -> Plan:  # fmt: skip
    """The plan of ``reconciler delete``: the owned objects ``keys`` (``Kind/name``, each in
    ``observed.inventory``; KeyError otherwise) deleted as a prune deletes them: a VM
    shut down gracefully (forced off after its shutdownTimeout) and undefined, with its
    cloud-init seed; a network or pool stopped and undefined (a pool's files kept); a
    volume's data deleted only under ``reclaimPolicy: delete`` or with ``delete_data``,
    else it is forgotten (kept, no longer managed). One whose record names another
    instance than ``instance`` (this one's id) is refused. Pure, like ``make_plan``."""
    actions = []
    users = in_use(observed, (), going=set(keys))
    for key in keys:
        owner = other_owner(key, observed, instance)
        if owner is not None:
            kind, _, name = key.partition("/")
            actions.append(Action(Kind(kind), name, Op.ERROR,
                                  reason=f"owned by {owner.describe()} now: not deleted"))
            continue
        if key in users:
            kind, _, name = key.partition("/")
            actions.append(Action(
                Kind(kind), name, Op.ERROR,
                reason=f"in use by {', '.join(sorted(users[key]))}: not deleted; delete those "
                "too, or take it out of their manifests first",
            ))  # fmt: skip
            continue
        entry = dict(observed.inventory.objects[key])
        why = "deleted on request"
        if delete_data and key.startswith(f"{Kind.VOLUME.value}/"):
            if entry.get("reclaimPolicy") != "delete":
                why = "deleted on request with --delete-data (its reclaimPolicy retain overridden)"
            entry["reclaimPolicy"] = "delete"
        action = _delete(key, entry, observed, why=why)
        if action is None:
            continue
        if action.op is Op.FORGET and action.kind is Kind.VOLUME and not delete_data:
            action = dataclasses.replace(action, reason="deleted on request; reclaimPolicy "
                                         "retain keeps its data (pass --delete-data to delete "
                                         "it)")  # fmt: skip
        actions.append(action)
    return Plan(actions=tuple(_down_order(actions, observed)))


def _has_backing(action: Action, observed: Observed) -> bool:
    for (_pool, name), record in observed.volumes.items():
        if name == action.name:
            return record.config.get("backingVolume") is not None
    return False


def _delete(
    key: str, entry: Mapping[str, Any], observed: Observed, why: str = ""
) -> Action | None:
    kind_name, _, name = key.partition("/")
    kind = Kind(kind_name)
    where = why or f"manifest {entry.get('manifest', '?')} is gone"
    gone = Action(kind, name, Op.FORGET, reason="already gone from libvirt; dropped from inventory")
    if kind is Kind.VIRTUAL_MACHINE:
        dom = observed.domains.get(name)
        if dom is None:
            seeds = _delete_seeds(entry, observed)
            if not seeds:
                return gone
            why = where + "; its cloud-init seed goes too"
            return Action(kind, name, Op.DELETE, (Change("exists", True, False),),
                          tuple(seeds), reason=why)  # fmt: skip
        steps: list[Step] = []
        if dom.active:
            timeout = float(entry.get("shutdownTimeout", 120))
            steps.append(StopDomain(timeout))
        if dom.persistent:  # a transient domain is gone once stopped
            steps.append(UndefineDomain())
        steps += _delete_seeds(entry, observed)
        return Action(
            kind, name, Op.DELETE, (Change("exists", True, False),), tuple(steps), reason=where
        )
    if kind is Kind.NETWORK:
        net = observed.networks.get(name)
        if net is None:
            return gone
        steps = [StopNetwork()] if net.active else []
        steps += [UndefineNetwork()] if net.persistent else []
        return Action(
            kind, name, Op.DELETE, (Change("exists", True, False),), tuple(steps), reason=where
        )
    if kind is Kind.STORAGE_POOL:
        pool = observed.pools.get(name)
        if pool is None:
            return gone
        steps = [StopPool()] if pool.active else []
        steps += [UndefinePool()] if pool.persistent else []
        return Action(
            kind,
            name,
            Op.DELETE,
            (Change("exists", True, False),),
            tuple(steps),
            reason=where + "; the pool's directory and files are kept",
        )
    pool_name = str(entry.get("pool", ""))
    live_pool = observed.pools.get(pool_name)
    if live_pool is not None and not live_pool.active and entry.get("reclaimPolicy") == "delete":
        return Action(kind, name, Op.NOOP, reason=where + f"; reclaimPolicy delete, but pool "
                      f"{pool_name} is not active: deleted once it runs")  # fmt: skip
    if (pool_name, name) not in observed.volumes and (live_pool is None or live_pool.active):
        return gone
    if entry.get("reclaimPolicy") != "delete":
        return Action(kind, name, Op.FORGET, reason=where + "; reclaimPolicy retain keeps its data")
    return Action(
        kind,
        name,
        Op.DELETE,
        (Change("exists", True, False),),
        (DeleteVolume(pool_name),),
        reason=where if "--delete-data" in where else where + "; reclaimPolicy delete",
    )


def _delete_seeds(entry: Mapping[str, Any], observed: Observed) -> list[Step]:
    """Steps that delete the cloud-init seed volumes of a VM that goes."""
    steps: list[Step] = []
    for seed in entry.get("seeds", ()):
        if not isinstance(seed, Mapping):
            continue
        pool, volume = str(seed.get("pool")), str(seed.get("volume"))
        if (pool, volume) in observed.volumes:
            steps.append(DeleteSeed(pool, volume))
    return steps
