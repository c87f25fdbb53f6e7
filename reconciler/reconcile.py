"""One reconcile pass: load -> observe -> preflight -> plan -> (apply -> observe -> check
it settled).

Shared by ``reconciler plan``, ``reconciler apply`` and the daemon, which
only decide when to call it. The inputs that are not pure (manifest files,
password files, the git revision of the manifest directory, libvirt) are
gathered here and handed to the pure planner. Preflight (preflight.py) turns
what this host cannot run into load problems before anything is planned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import unescape

from reconciler import gitrev, gitsource, hints, imagefetch, images, preflight, statedir
from reconciler import inventory as inventory_file
from reconciler.atomicfile import write_atomically
from reconciler.errors import Problem
from reconciler.executor import Executor, explain_at_source
from reconciler.hostdefaults import VmDefaults, apply_vm_defaults
from reconciler.hostpaths import PathPolicy, host_paths, read_secret
from reconciler.hypervisor import Hypervisor
from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult, check_against, drop_findings, load_unchecked
from reconciler.model import (
    FieldPath,
    FieldProblem,
    Kind,
    Manifest,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    plain_path,
)
from reconciler.observe import Observed, observe, observe_again
from reconciler.plan import Action, ActionResult, Op, Plan, is_unsettled
from reconciler.planner import PlanOptions, digest, make_plan, settle_key
from reconciler.planner.prune import manifests_elsewhere
from reconciler.references import KnownObjects
from reconciler.yamlsource import ParseCache

# Steps that change nothing but the domain they act on: after an apply of only
# these, networks, pools and volumes need not be read again.
DOMAIN_ONLY_VERBS = frozenset({
    "define-domain", "start-domain", "stop-domain", "restart-domain", "undefine-domain",
    "autostart-domain", "set-memory", "set-vcpus", "attach-device", "detach-device",
    "update-device",
})  # fmt: skip
# Domain steps that connect or disconnect a guest's NICs: the networks' ports change,
# and the settle check compares them (planner/vm.py, _lost_nics).
PORT_VERBS = frozenset({"start-domain", "restart-domain", "stop-domain", "undefine-domain",
                        "attach-device", "detach-device", "update-device"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class PassOptions:
    directory: Path
    state_dir: Path | None  # None: no inventory (read-only plan of a fresh host)
    host: str | None = None
    prune: bool = True
    default_update_policy: str = "manual"
    allow_replace: frozenset[str] = frozenset()
    allowed_roots: tuple[Path, ...] | None = None  # None: disk paths are not restricted
    # the host's vmDefaults, merged under every VM manifest (hostdefaults.py)
    vm_defaults: VmDefaults = field(default_factory=VmDefaults)
    allowed_secret_roots: tuple[Path, ...] | None = None  # None: password files: any
    # the source revision recorded on applied objects; None: read from ``directory``'s
    # git work tree (gitrev.py). The git source (gitsource.py) sets its commit id here.
    revision: str | None = None
    # this reconciler instance's id (statedir.instance_id), recorded as the owner of
    # what it applies; None: the state directory has none yet (read-only commands)
    instance: str | None = None
    # lost instances being taken back (``reconciler adopt --from-instance``; planner/context.py)
    take_over: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PassResult:
    load: LoadResult
    plan: Plan
    results: tuple[ActionResult, ...] = ()
    unsettled: tuple[Action, ...] = ()  # still differing right after apply: a bug, reported
    after: Plan | None = None  # the plan right after apply
    # libvirt as the last plan of the pass saw it (after the apply, when there was one)
    observed: Observed | None = None

    @property
    def failed(self) -> bool:
        return (
            bool(self.load.problems)
            or self.plan.has_errors
            or any(r.outcome != "ok" for r in self.results)
            or bool(self.unsettled)
        )


@dataclass(slots=True)
class Reconciler:
    hypervisor: Hypervisor
    options: PassOptions
    machine_aliases: dict[str, str] | None = None
    should_stop: Callable[[], bool] = lambda: False  # checked between actions (SIGTERM)
    should_skip: Callable[[Action], str | None] = lambda action: None  # retry backoff
    # the options of the last plan, with the load they were made for (see _plan_options)
    _options_of: tuple[LoadResult | None, PlanOptions] = (None, PlanOptions())

    def observe(self) -> Observed:
        observed = observe(
            self.hypervisor, self._inventory(), machine_aliases=self.machine_aliases
        )
        self.machine_aliases = dict(observed.machine_aliases)
        return observed

    def _inventory(self) -> Inventory:
        state_dir = self.options.state_dir
        return inventory_file.load(state_dir) if state_dir else Inventory()

    def plan(
        self, *, confirmed_removals: frozenset[str] | None = None
    ) -> tuple[LoadResult, Observed, Plan]:
        """Load, observe and plan. ``confirmed_removals``: prune only these owned objects
        without a manifest, hold the others (the daemon's two-read rule); None: all.
        ``StateDirError`` naming the path when the state directory cannot be created or
        read: never a plan against an empty inventory. (It need not be writable: a plan's
        caches there are optional.)"""
        if self.options.state_dir is not None:
            statedir.prepare(self.options.state_dir, write=False)
        # libvirt answers while the manifests are parsed: its calls release the GIL
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.observe)
            state = self.options.state_dir
            cache = ParseCache(statedir.path(state, statedir.PARSE_CACHE) if state else None)
            load = load_unchecked(self.options.directory, host=self.options.host, cache=cache)
            observed = pending.result()
        load = check_against(apply_vm_defaults(load, self.options.vm_defaults),
                             known_objects(observed))  # fmt: skip
        load = self.preflight(load, observed)
        verified = self._verified()
        options = self._plan_options(load, verified, observed)
        plan = make_plan(load, observed, replace(options, confirmed_removals=confirmed_removals))
        self._options_of = (load, replace(self._options_of[1],
                                          confirmed_removals=confirmed_removals))  # fmt: skip
        self._save_verified(plan, verified)
        return load, observed, plan

    def preflight(self, load: LoadResult, observed: Observed) -> LoadResult:
        """``load`` with what this host cannot run (preflight.py) as load problems: those
        manifests are not planned, the rest is, and nothing is pruned. The host facts
        that last are read once per connection (``Hypervisor.host_facts``); checks that
        could not be made become ``load.notes``."""
        facts = self.hypervisor.host_facts(preflight.wanted(load.manifests, self._paths().allows))
        notes = tuple(f"preflight: {line}" for line in facts.unknown)
        findings = preflight.check(load.manifests, facts, observed)
        if facts.local:
            findings += image_chain_problems(load.manifests, self._paths())
        return drop_findings(load, findings, notes)

    # VMs found in sync, by fingerprint (planner.fingerprint): a cache in the state
    # directory, so that a plan of a large, converged host skips their XML. Losing
    # it costs time only; a stale entry cannot match, since the fingerprint covers
    # both sides byte for byte.
    def _verified(self) -> dict[str, str]:
        if self.options.state_dir is None:
            return {}
        try:
            path = statedir.path(self.options.state_dir, statedir.VERIFIED_PLANS)
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _save_verified(self, plan: Plan, before: dict[str, str]) -> None:
        now = {a.name: a.fingerprint for a in plan.actions if a.fingerprint is not None}
        if now == before or self.options.state_dir is None:
            return
        with contextlib.suppress(OSError):
            self.options.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomically(
                statedir.path(self.options.state_dir, statedir.VERIFIED_PLANS), json.dumps(now)
            )

    def apply(self, plan: Plan, observed: Observed, load: LoadResult) -> PassResult:
        executor = Executor(
            self.hypervisor,
            observed.inventory,
            self.options.state_dir,
            should_stop=self.should_stop,
            should_skip=self.should_skip,
            explain=explainer(load.manifests, observed),
        )
        results = executor.apply(plan)
        after_observed, after = self._settle(plan, observed, load, results)
        # A live change libvirt refused or the guest ignored (an unplug) is restart
        # pending now; a VM whose updatePolicy is restart gets that restart in this
        # very apply, as it would have had the change been planned for a restart.
        tried = {r.action.key for r in results if r.outcome == "ok"}
        restarts = tuple(
            a for a in after.actions
            if a.key in tried and a.kind is Kind.VIRTUAL_MACHINE
            and [s.verb for s in a.steps] == ["restart-domain"]
        )  # fmt: skip
        if restarts and not self.should_stop():
            more = executor.apply(Plan(actions=restarts))
            results = [*results, *more]
            after_observed, after = self._settle(plan, after_observed, load, more)
        # still to change right after its apply; or a restart for it left it differing
        # (planner.is_unsettled): reported by this apply, never restarted for again
        unsettled = tuple(
            a for a in after.actions if a.key in tried and a.op not in (Op.FORGET,)
            and (a.changes_anything or any(is_unsettled(c) for c in a.restart_pending))
        )  # fmt: skip
        self._remember_unsettled(unsettled, load)
        return PassResult(load, plan, tuple(results), unsettled, after, after_observed)

    def _remember_unsettled(self, unsettled: tuple[Action, ...], load: LoadResult) -> None:
        """Record, in each unsettled VM's inventory entry (inventory.UNSETTLED), what
        this apply set that libvirt did not keep, under the manifest's digest: later
        plans (apply's and the daemon's) show it as unsettled and never define or
        restart the VM again for it under that digest (no define loop)."""
        state_dir = self.options.state_dir
        vms = {a.key: a for a in unsettled if a.kind is Kind.VIRTUAL_MACHINE}
        if state_dir is None or not vms:
            return
        manifests = {f"{m.kind.value}/{m.name}": m for m in load.manifests}
        inventory = self._inventory()
        for key, action in vms.items():
            entry, m = inventory.get(key), manifests.get(key)
            if entry is None or m is None:
                continue
            made = digest(m)
            old = entry.get(inventory_file.UNSETTLED)
            keys = set(old.get("changes", ())) if isinstance(old, dict) and (
                old.get("digest") == made) else set()
            keys |= {settle_key(c) for c in (*action.changes, *action.restart_pending)
                     if c.path != "ownership"}
            inventory = inventory.with_entry(key, {**entry, inventory_file.UNSETTLED: {
                "digest": made, "changes": sorted(keys)}})
        inventory_file.save(state_dir, inventory)

    def _settle(
        self, plan: Plan, observed: Observed, load: LoadResult, results: list[ActionResult]
    ) -> tuple[Observed, Plan]:
        """Did it settle? Read again what ``results`` touched, and plan again: the VMs it
        did not touch keep their records, and those found in sync before are taken as
        in sync by their fingerprint (which covers their XML byte for byte)."""
        touched = [r.action for r in results if r.outcome != "skipped" and r.action.steps]
        vms = {a.name for a in touched if a.kind is Kind.VIRTUAL_MACHINE}
        after_observed = observe_again(
            self.hypervisor, observed, self._inventory(), domains=vms,
            everything_else=any(a.kind is not Kind.VIRTUAL_MACHINE
                                or any(s.verb not in DOMAIN_ONLY_VERBS for s in a.steps)
                                for a in touched),
            networks=any(s.verb in PORT_VERBS for a in touched for s in a.steps),
        )  # fmt: skip
        verified = {
            a.name: a.fingerprint
            for a in plan.actions
            if a.fingerprint is not None and a.name not in vms
        }
        after = make_plan(load, after_observed, self._plan_options(load, verified))
        self._save_verified(after, verified)  # the VMs just made: a quick next plan
        return after_observed, after

    def _paths(self) -> PathPolicy:
        return PathPolicy(self.options.allowed_roots, self.options.allowed_secret_roots,
                          remote=self.hypervisor.remote)  # fmt: skip

    def _plan_options(
        self,
        load: LoadResult,
        verified: dict[str, str] | None = None,
        observed: Observed | None = None,
    ) -> PlanOptions:
        # The check after an apply plans with what the apply's plan was made with
        # (revision, passwords, allowed paths): asking git and the files again
        # would cost time, and would compare with what was not applied.
        reused = self._options_of if self._options_of[0] is load else None
        if reused is None:
            state_dir = self.options.state_dir
            snapshots = (str(statedir.path(state_dir, statedir.GIT_SNAPSHOTS))
                         if state_dir else None)  # fmt: skip
            base = PlanOptions(
                manifests_elsewhere=(
                    manifests_elsewhere(observed.inventory.objects, load.root,
                                        snapshots=snapshots)
                    if observed is not None and self.options.prune
                    else {}
                ),
                manifest_root=recorded_root(load.root, snapshots),
                prune=self.options.prune,
                default_update_policy=self.options.default_update_policy,
                allow_replace=self.options.allow_replace,
                instance=self.options.instance,
                take_over=self.options.take_over,
                revision=self.options.revision or source_revision(self.options.directory),
                secrets=read_secrets(load.manifests, self._paths()),
                paths=self._paths(),
                remote=self.hypervisor.remote,
                real_paths=real_paths(load.manifests, observed, self._paths()),
                source_sizes=(
                    source_sizes(load.manifests, observed, self._paths().allows,
                                 measure=images.virtual_size if self.hypervisor.remote
                                 else image_virtual_size)
                    if observed is not None
                    else {}
                ),
            )
            if observed is not None:
                sizes, formats = url_sources(load.manifests, observed, image_cache(state_dir))
                base = replace(base, source_sizes={**base.source_sizes, **sizes},
                               source_formats=formats)  # fmt: skip
            self._options_of = (load, base)
        else:
            base = reused[1]
        return replace(base, verified=verified or {})


def explainer(
    manifests: tuple[Manifest, ...], observed: Observed
) -> Callable[[Action, str], Problem]:
    """``Executor.explain`` for these manifests: libvirt's refusal of an action's define
    or start placed at the field of its manifest most likely responsible (hints.py)."""
    by_key = {f"{m.kind.value}/{m.name}": m for m in manifests}
    volumes = {m.name: m.spec for m in manifests if isinstance(m.spec, VolumeSpec)}
    pool_paths = {m.name: m.spec.path for m in manifests
                  if isinstance(m.spec, StoragePoolSpec) and m.spec.path is not None}  # fmt: skip

    def volume_path(name: str) -> str | None:
        spec = volumes.get(name)
        for (pool, volume), record in observed.volumes.items():
            if volume == name and (spec is None or spec.pool == pool):
                return record.path
        if spec is None:
            return None
        base = pool_paths.get(spec.pool)
        live = observed.pools.get(spec.pool)
        if base is None and live is not None:
            base = live.path
        return None if base is None else os.path.join(base, name)

    def explain(action: Action, message: str) -> Problem:
        manifest = by_key.get(action.key)
        if manifest is None:
            return explain_at_source(action, message)
        return hints.explain(message, hints.subjects_of(manifest, volume_path))

    return explain


def known_objects(observed: Observed) -> KnownObjects:
    """What exists in libvirt, for references to objects without a manifest."""
    return KnownObjects(
        networks=frozenset(observed.networks),
        pools=frozenset(observed.pools),
        volumes=frozenset(observed.volumes),
        consulted=True,
    )


def image_chain_problems(manifests: tuple[Manifest, ...], policy: PathPolicy) -> list[
        tuple[Manifest, FieldProblem]]:  # fmt: skip
    """A Volume ``source`` or a qcow2 disk ``file`` whose backing chain leaves the allowed
    roots (images.chain_problem): QEMU, qemu-img and libvirt's relabelling would read
    files no manifest named (a qcow2 made with ``-b /etc/shadow``). Local files only,
    each read once, and only when the path itself is allowed."""
    found: list[tuple[Manifest, FieldProblem]] = []
    for m in manifests:
        spec = m.spec
        named: list[tuple[FieldPath, str]] = []
        if isinstance(spec, VolumeSpec) and spec.source:
            named.append((("spec", "source"), spec.source))
        elif isinstance(spec, VirtualMachineSpec):
            named += [(("spec", "disks", i, "file"), d.file) for i, d in enumerate(spec.disks)
                      if d.file and d.format == "qcow2"]  # fmt: skip
        for where, path in named:
            if not policy.allows(path):
                continue  # refused as a path already
            problem = images.chain_problem(path, policy.allows)
            if problem is not None:
                found.append((m, FieldProblem(where, problem)))
    return found


def recorded_root(root: str, snapshots: str | None) -> str:
    """The absolute folder ownership records name manifests under (SPEC §3): the
    manifest directory ``root``, made absolute with links resolved; a git source's
    snapshot of one commit (under ``snapshots``) is named by ``snapshots/current``, the
    same path for every commit (the record's revision says which), so that a new
    commit rewrites no record."""
    real = os.path.realpath(root)
    if snapshots is not None and os.path.dirname(real) == os.path.realpath(snapshots):
        return os.path.join(os.path.abspath(snapshots), gitsource.CURRENT)
    # the folder itself, links resolved: a daemon configured with a link to the
    # repository and an `apply` given the repository's own path name one manifest
    # by one path (else each would rewrite the other's records)
    return real


def source_revision(directory: Path) -> str | None:
    """The git commit of the manifest directory (``-dirty`` with local changes), if any.

    Read from the repository's files by gitrev.py: no git program runs, so
    nothing the repository's configuration names (``core.fsmonitor``, hooks,
    filters) is ever executed. None outside a git work tree.
    """
    return gitrev.revision(directory)


def source_sizes(
    manifests: tuple[Manifest, ...],
    observed: Observed,
    allowed: Callable[[str], bool] | None = None,
    *,
    measure: Callable[[str], int | None] | None = None,
) -> dict[str, int]:
    """The virtual size of each Volume source that a plan may copy (the volume does not
    exist yet, or its copy is pending), by path: ``measure`` of the local file
    (default ``qemu-img info``; for a remote host, ``images.virtual_size``, which reads
    the header and runs no qemu-img).
    A file that cannot be read is left out (the copy reports it); so is a path outside
    the allowed roots (the planner refuses it)."""
    sizes: dict[str, int] = {}
    for m in manifests:
        spec = m.spec
        if not isinstance(spec, VolumeSpec) or not spec.source or spec.source in sizes:
            continue
        entry = observed.inventory.get(f"Volume/{m.name}") or {}
        exists = (spec.pool, m.name) in observed.volumes
        if exists and inventory_file.CONTENT_PENDING not in entry:
            continue
        if allowed is not None and not allowed(spec.source):
            continue
        size = (measure or image_virtual_size)(spec.source)
        if size is not None:
            sizes[spec.source] = size
    return sizes


def image_cache(state_dir: Path | None) -> Path | None:
    """The folder of images fetched from URLs (statedir.IMAGES), or None without a
    state directory."""
    return None if state_dir is None else statedir.path(state_dir, statedir.IMAGES)


def url_sources(
    manifests: tuple[Manifest, ...],
    observed: Observed,
    cache: Path | None,
    *,
    look: Callable[[str], imagefetch.Probe] = imagefetch.probe,
) -> tuple[dict[str, int], dict[str, str]]:
    """(virtual size, format) by URL of each Volume URL source a plan may copy (the
    volume does not exist yet, or its copy is pending): from the cached image, else
    from the first bytes the server sends (``look``: one ranged GET, nothing saved).
    A URL neither can tell about is left out: the fetch at apply time reports it."""
    sizes: dict[str, int] = {}
    formats: dict[str, str] = {}
    for m in manifests:
        spec = m.spec
        if not isinstance(spec, VolumeSpec) or not spec.source_url or not spec.source_sha256:
            continue
        if spec.source_url in formats or spec.source_url in sizes:
            continue
        entry = observed.inventory.get(f"Volume/{m.name}") or {}
        exists = (spec.pool, m.name) in observed.volumes
        if exists and inventory_file.CONTENT_PENDING not in entry:
            continue
        size, fmt = imagefetch.image_facts(spec.source_url, spec.source_sha256, cache, look)
        if size is not None:
            sizes[spec.source_url] = size
        if fmt is not None:
            formats[spec.source_url] = fmt
    return sizes, formats


_SOURCE_FILE = re.compile(r"""<source\b[^>]*?\bfile=(['"])(.*?)\1""")


def real_paths(
    manifests: tuple[Manifest, ...], observed: Observed | None, policy: PathPolicy
) -> dict[str, str]:
    """Plain path -> real file (symlinks resolved) of each disk image a plan compares,
    where the two differ: the ``file:`` disks of the VM manifests, the files the
    domains they name have (persistent and running definitions), and every observed
    volume's path. Disks are matched by the real file (xml/domain.py switch_sources),
    so ``/x/link/v1`` through a symlinked folder is the volume at ``/pool/v1``, not a
    new disk. Empty for a remote host: this machine's links say nothing of its files.
    A path that cannot be resolved is left out (it is compared as written)."""
    if policy.remote:
        return {}
    paths: set[str] = set()
    for m in manifests:
        spec = m.spec
        if not isinstance(spec, VirtualMachineSpec):
            continue
        paths.update(d.file for d in spec.disks if d.file)
        record = None if observed is None else observed.domains.get(m.name)
        if record is not None:
            for xml in (record.config_xml, record.live_xml or ""):
                paths.update(unescape(found[1], {"&apos;": "'", "&quot;": '"'})
                             for found in _SOURCE_FILE.findall(xml))  # fmt: skip
    if observed is not None:
        paths.update(v.path for v in observed.volumes.values() if v.path)
    found: dict[str, str] = {}
    for path in paths:
        plain = plain_path(path)
        real = policy.real_path(plain)
        if real is not None and real != plain:
            found[plain] = real
    return found


def image_virtual_size(path: str) -> int | None:
    """What a guest would see of the image at ``path`` (``qemu-img info``), or None."""
    try:
        done = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", path],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        size = json.loads(done.stdout).get("virtual-size") if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) else None


def read_secrets(manifests: tuple[Manifest, ...], policy: PathPolicy) -> dict[str, str]:
    """The display passwords named by ``graphics.passwordFile`` (first line of each file).

    Only files that pass ``policy`` (hostpaths.py) are read; a refused or
    unreadable one is left out, and the planner reports its VM.
    """
    secrets: dict[str, str] = {}
    for m in manifests:
        for host_path in host_paths(m):
            if host_path.secret and host_path.path not in secrets:
                password = read_secret(host_path, policy)
                if password is not None:
                    secrets[host_path.path] = password
    return secrets
