"""Executor: the only code that changes libvirt. Plan in, results out.

Runs the plan's actions in order and each action's steps in order, through
``Hypervisor`` (the one module importing libvirt). Consecutive actions that
only define domains (``CONCURRENT_STEPS``) run a few at a time: libvirtd
defines them on its worker pool, and a run starts only once every action
before it has finished, so the plan's order still holds (see ``batches``).
Results and log lines keep the plan's order either way. One failing action is
recorded with libvirt's error and the rest proceed; an action whose
prerequisite failed (a VM whose network could not be created) is skipped
with that reason. A live change libvirt refuses (memory, vCPUs, hot-plug) is
not a failure: the definition already holds the change, which then takes
effect at the next restart, and the result says so.

Ownership is recorded as SPEC §3 asks: in the domain's own metadata (rendered
into its XML by the planner) and in the inventory. The inventory is written
once before anything is created, with every object the plan will create or
update (a crash then leaves owned objects, never unowned ones), and once at
the end, without the objects deleted: two atomic writes per apply.

A define or start that libvirt refuses is explained (hints.py, through
``Executor.explain``): the error names the manifest field most likely
responsible and a hint. A VM start that fails is remembered in the VM's
inventory entry (``inventory.START_FAILURE``: error, hint, when), written with
the inventory at the end of the apply, so that later plans show the cause on
the VM's ``state`` change; a start that succeeds clears it.

Live changes that do not happen (libvirt refuses them, or the guest does not
release a device it was asked to unplug) are recorded in the running
domain's own metadata (``domain_xml.REFUSED_NAMESPACE``): the planner then
shows them as restart pending instead of trying again, in this process or
the next, until the domain restarts.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, assert_never
from urllib.parse import urlsplit

from reconciler import cloudinit, hints, imagefetch, images, statedir
from reconciler import inventory as inventory_file
from reconciler.errors import (
    DefinitionChanged,
    HypervisorError,
    Problem,
    ReconcilerError,
    Refused,
    SourcePosition,
)
from reconciler.hypervisor import VOLUME_EXISTS, Hypervisor
from reconciler.inventory import Inventory
from reconciler.logs import get_logger
from reconciler.model import Kind
from reconciler.plan import (
    Action,
    ActionResult,
    AttachDevice,
    AutostartDomain,
    AutostartNetwork,
    AutostartPool,
    BlockResize,
    BuildPool,
    CreateVolume,
    DefineDomain,
    DefineNetwork,
    DefinePool,
    DeleteSeed,
    DeleteVolume,
    DetachDevice,
    FetchImage,
    ImportVolume,
    LiveStep,
    NetUpdate,
    Op,
    PinCpus,
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
)
from reconciler.planner.usage import volume_users
from reconciler.xml import domain as domain_xml

# Steps that may run for several actions at once: each touches only its own
# domain's definition, and libvirtd serves them on its worker pool. None is a
# live step, a seed write or a delete: those read the domain back or change the
# executor's inventory, one action at a time.
CONCURRENT_STEPS = (DefineDomain, AutostartDomain)
# Steps whose refusal by libvirt is explained with the manifest's position and a hint.
# (A restart's start counts as start-domain; its graceful stop is not explained.)
EXPLAINED_VERBS = frozenset(t.verb for t in (DefineDomain, StartDomain, DefineNetwork,
                                              StartNetwork))  # fmt: skip
# Steps that start a domain: their failure is remembered, their success forgets it.
START_STEPS = (StartDomain, RestartDomain)
# In flight at once, on one connection: libvirtd serves up to max_client_requests
# (default 5) calls of one client at a time and queues the rest.
MAX_CONCURRENT = 4


def concurrent(action: Action) -> bool:
    """Whether ``action`` may run alongside others: a VM whose steps only define it."""
    return (
        action.kind is Kind.VIRTUAL_MACHINE
        and bool(action.steps)
        and all(isinstance(step, CONCURRENT_STEPS) for step in action.steps)
    )


def batches(actions: Sequence[Action]) -> list[tuple[Action, ...]]:
    """The plan's actions, in order, cut into runs that may execute together.

    A run is consecutive ``concurrent`` actions none of which requires another
    of the same run or shares its object; every other action is a run of its
    own. Runs execute one after another, so whatever precedes an action in the
    plan (pools, volumes, networks, the VMs deleted first) has finished before
    it starts.
    """
    runs: list[tuple[Action, ...]] = []
    current: list[Action] = []
    keys: set[str] = set()
    for action in actions:
        if not concurrent(action):
            if current:
                runs.append(tuple(current))
                current, keys = [], set()
            runs.append((action,))
            continue
        if current and (action.key in keys or keys.intersection(action.requires)):
            runs.append(tuple(current))
            current, keys = [], set()
        current.append(action)
        keys.add(action.key)
    if current:
        runs.append(tuple(current))
    return runs


def explain_at_source(action: Action, message: str) -> Problem:
    """``Executor.explain`` without the manifests: the hint, at the manifest's start."""
    source = action.source or SourcePosition(action.key)
    return hints.explain(message, hints.Subjects(source))


@dataclass(slots=True)
class Executor:
    """Carries out plans against one hypervisor, keeping the inventory in ``state_dir``."""

    hypervisor: Hypervisor
    inventory: Inventory
    state_dir: Path | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_interval: float = 0.5
    log: Any = field(default_factory=get_logger)
    should_stop: Callable[[], bool] = lambda: False
    # reason to leave an action alone this time (the daemon's retry backoff), or None
    should_skip: Callable[[Action], str | None] = lambda action: None
    # libvirt's refusal of an action's define or start -> the message placed in its manifest
    explain: Callable[[Action, str], Problem] = explain_at_source
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # keys this apply recorded as owned before creating them (the write-ahead)
    _claimed: set[str] = field(default_factory=set)
    # new volumes from a URL: claimed once their image is fetched (a download takes
    # minutes; a kill during it must not leave a claim on a volume never made, which a
    # hand-made volume of that name would later be pruned under)
    _after_fetch: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def apply(self, plan: Plan) -> list[ActionResult]:
        for action in plan.actions:
            if action.owner_record is not None and action.op not in (Op.CONFLICT, Op.ERROR):
                if self.inventory.get(action.key) is None:
                    self._claimed.add(action.key)
                    if action.op is Op.CREATE and action.steps \
                            and isinstance(action.steps[0], FetchImage):  # fmt: skip
                        self._after_fetch[action.key] = action.owner_record
                        continue
                self.inventory = self.inventory.with_entry(action.key, action.owner_record)
        self._save()
        try:
            return self._apply(plan)
        finally:
            self._save()

    def _apply(self, plan: Plan) -> list[ActionResult]:
        results: list[ActionResult] = []
        failed: set[str] = set()
        for run in batches(plan.actions):
            # per action of the run, in order: a result, None (nothing to report), or _RUN
            slots = [self._before(action, failed) for action in run]
            ran = iter(self._run_all([a for a, slot in zip(run, slots, strict=True)
                                      if slot is _RUN]))  # fmt: skip
            for slot in slots:
                result = next(ran) if slot is _RUN else slot
                if not isinstance(result, ActionResult):
                    continue
                if slot is _RUN and result.outcome != "ok":
                    failed.add(result.action.key)
                if slot is _RUN:
                    self._remember_start(result)
                if result.action.changes_anything or result.outcome != "ok":
                    results.append(result)
        return results

    def _before(self, action: Action, failed: set[str]) -> ActionResult | object | None:
        """``_RUN``, or why not: a result (skipped) or None (nothing to report)."""
        if self.should_stop():
            return ActionResult(action, "skipped", error="stopping")
        if action.refused:
            # a network in conflict exists (another owner's, or hand-made): a VM that
            # uses it can still run on it; anything else refused is missing or broken
            if not (action.op is Op.CONFLICT and action.kind is Kind.NETWORK):
                failed.add(action.key)
            return None
        later = self.should_skip(action) if action.steps else None
        if later is not None:
            failed.add(action.key)
            return ActionResult(action, "skipped", error=later)
        blocked = ", ".join(k for k in action.requires if k in failed)
        if blocked:
            failed.add(action.key)
            self.log.warning(
                "apply.skipped", kind=action.kind.value, name=action.name,
                action=action.op.value, reason=f"needs {blocked}",
            )  # fmt: skip
            return ActionResult(action, "skipped", error=f"needs {blocked}, which failed")
        return _RUN

    def _run_all(self, actions: list[Action]) -> list[ActionResult]:
        """Run ``actions`` (one, or a run of ``concurrent`` ones); results in their order.

        Several run on a few threads (libvirt calls release the GIL); each checks
        ``should_stop`` as it starts, so a stop lets only the calls in flight finish.
        Log lines are written here, in plan order, as the results come in."""
        if len(actions) <= 1:
            return [self._logged(self._run(action)) for action in actions]

        def run(action: Action) -> ActionResult:
            if self.should_stop():
                return ActionResult(action, "skipped", error="stopping")
            return self._run(action)

        pool = ThreadPoolExecutor(max_workers=min(MAX_CONCURRENT, len(actions)))
        try:
            return [self._logged(result) for result in pool.map(run, actions)]
        finally:  # on ^C (or a bug) no queued action starts; the calls in flight end
            pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, action: Action) -> ActionResult:
        """Carry out one action's steps; logs nothing (``_logged`` does, in plan order)."""
        start = self.clock()
        notes: list[str] = []
        refused: list[str] = []  # this action's live changes that did not happen
        done = 0  # steps carried out
        try:
            for step in action.steps:
                notes += self._step(action, step, refused)
                done += 1
            if action.op in (Op.DELETE, Op.FORGET):
                self.inventory = self.inventory.without(action.key)
        except (HypervisorError, ReconcilerError, OSError) as exc:
            # steps that touched libvirt (a URL's fetch-image comes first and does not)
            touched = done - sum(isinstance(s, FetchImage) for s in action.steps[:done])
            if action.kind is Kind.VOLUME and action.op is Op.CREATE and touched == 0 \
                    and action.key in self._claimed and isinstance(exc, HypervisorError) \
                    and exc.code == VOLUME_EXISTS:  # fmt: skip
                # nothing was created (a volume of that name was there already, in a
                # pool made by this apply): not ours, never claimed, never pruned
                self.inventory = self.inventory.without(action.key)
                notes.append("not claimed: the volume was not created by reconciler")
            elif action.kind is Kind.VOLUME and action.op is Op.CREATE and done == 0 \
                    and action.key in self._claimed \
                    and isinstance(action.steps[0], FetchImage):  # fmt: skip
                # its image could not be had: nothing was created, nothing is claimed
                self.inventory = self.inventory.without(action.key)
            self._record_refused(action.name, refused)
            duration = self.clock() - start
            explanation, failed_step = None, ""
            if isinstance(exc, HypervisorError):
                explanation, failed_step = exc.explanation, exc.step
            return ActionResult(
                action, "failed", duration, str(exc), tuple(notes), tuple(refused),
                explanation, failed_step, stale=isinstance(exc, DefinitionChanged),
            )  # fmt: skip
        self._record_refused(action.name, refused)
        duration = self.clock() - start
        return ActionResult(action, "ok", duration, "", tuple(notes), tuple(refused))

    def _logged(self, result: ActionResult) -> ActionResult:
        action = result.action
        if result.outcome == "skipped":
            return result
        log = self.log.bind(kind=action.kind.value, name=action.name, action=action.op.value)
        if result.outcome == "failed":
            hint = result.explanation.hint if result.explanation is not None else ""
            log.error("apply.action", outcome="failed", duration=round(result.duration, 3),
                      error=result.error, hint=hint or None)  # fmt: skip
        elif action.changes_anything:
            log.info("apply.action", outcome="ok", duration=round(result.duration, 3),
                     steps=[s.verb for s in action.steps],
                     notes=list(result.notes) or None)  # fmt: skip
        return result

    def _remember_start(self, result: ActionResult) -> None:
        """Keep a VM's failed start in its inventory entry; forget it once a start works.

        Called in plan order on the applying thread (never from the define pool)."""
        action = result.action
        entry = self.inventory.get(action.key)
        if action.kind is not Kind.VIRTUAL_MACHINE or entry is None:
            return
        if result.outcome == "failed" and result.failed_step == "start-domain":
            record = inventory_file.start_failure(result.error, result.explanation, self.now())
            self.inventory = self.inventory.with_entry(
                action.key, {**entry, inventory_file.START_FAILURE: record}
            )
        elif (
            result.outcome == "ok"
            and inventory_file.START_FAILURE in entry
            and any(isinstance(step, START_STEPS) for step in action.steps)
        ):
            kept = {k: v for k, v in entry.items() if k != inventory_file.START_FAILURE}
            self.inventory = self.inventory.with_entry(action.key, kept)

    def _save(self) -> None:
        if self.state_dir is not None:
            inventory_file.save(self.state_dir, self.inventory)

    # -- steps ----------------------------------------------------------------------

    def _step(self, action: Action, step: Step, refused: list[str]) -> list[str]:
        """Run one step; return notes worth reporting."""
        doing = step.verb
        try:
            if isinstance(step, LiveStep):
                return self._live_step(action, step, refused)
            if isinstance(step, RestartDomain):
                note = self.graceful_stop(action.name, step.timeout)
                doing = "start-domain"
                self.hypervisor.start_domain(action.name)
                return [note + ", started again"]
            return self._call(action, step)
        except HypervisorError as exc:
            message = f"{step.describe()}: {exc}"
            if isinstance(exc, DefinitionChanged):  # its message is the whole story
                message = str(exc)
            explanation = None
            if doing in EXPLAINED_VERBS and isinstance(exc, Refused):
                explanation = self.explain(action, message)
                message = str(explanation)
            raise type(exc)(message, code=exc.code, explanation=explanation, step=doing) from exc

    def _call(self, action: Action, step: Step) -> list[str]:
        """The libvirt calls of one step other than a live change or a restart, by its
        type: every member of ``Step`` has its case (mypy checks it: ``assert_never``)."""
        hv, name = self.hypervisor, action.name
        match step:
            case DefinePool(xml=xml, current=current):
                hv.define_pool(xml, current=current)
            case BuildPool(format=fmt):
                hv.build_pool(name, format=bool(fmt))
            case StartPool():
                hv.start_pool(name)
            case StopPool():
                hv.stop_pool(name)
            case UndefinePool():
                hv.undefine_pool(name)
            case AutostartPool(on=on):
                hv.set_pool_autostart(name, on)
            case CreateVolume(pool=pool, xml=xml):
                hv.create_volume(pool, xml)
            case FetchImage():
                note = self._fetch_image(action, step)
                record = self._after_fetch.pop(action.key, None)
                if record is not None:  # the write-ahead of the volume about to be made
                    self.inventory = self.inventory.with_entry(action.key, record)
                    self._save()
                return [note]
            case ImportVolume():
                note = _import_volume(hv, name, step, self._image_cache())
                self._content_done(action)
                return [note]
            case DeleteVolume(pool=pool):
                if action.op is Op.DELETE:  # prune or `delete`: check the host again now
                    users = volume_users(hv.domains(), pool, name, hv.volume_path(pool, name))
                    if users:
                        raise Refused(
                            f"volume {pool}/{name} not deleted: domain(s) {', '.join(users)} "
                            "use it now (libvirt keeps no owner on volumes: another "
                            "reconciler instance may have taken it over); its data is kept")
                self._log_data_loss(action, pool)
                hv.delete_volume(pool, name)
            case ResizeVolume(pool=pool, capacity=capacity):
                hv.resize_volume(pool, name, capacity)
            case BlockResize(domain=domain, target=target, capacity=capacity):
                hv.block_resize(domain, target, capacity)
            case DefineNetwork(xml=xml, current=current):
                hv.define_network(xml, current=current)
            case StartNetwork():
                hv.start_network(name)
            case StopNetwork():
                hv.stop_network(name)
            case UndefineNetwork():
                hv.undefine_network(name)
            case AutostartNetwork(on=on):
                hv.set_network_autostart(name, on)
            case NetUpdate(command=command, section=section, xml=xml, index=index):
                hv.update_network(name, command, section, xml, -1 if index is None else index)
            case WriteSeed():
                note = _write_seed(hv, step)
                self._note_seed_written(action, step.pool, step.volume)
                return [note]
            case DeleteSeed(pool=pool, volume=volume):
                if hv.volume_exists(pool, volume):
                    hv.delete_volume(pool, volume)
                return [f"deleted cloud-init seed {pool}/{volume}"]
            case DefineDomain(xml=xml, current=current):
                hv.define_domain(xml, current=current)
            case StartDomain():
                hv.start_domain(name)
            case StopDomain(timeout=timeout):
                return [self.graceful_stop(name, timeout)]
            case UndefineDomain():
                hv.undefine_domain(name)
            case AutostartDomain(on=on):
                hv.set_domain_autostart(name, on)
            case RestartDomain() | SetMemory() | SetVcpus() | AttachDevice() | DetachDevice() \
                    | UpdateDevice() | PinCpus():  # fmt: skip
                raise ReconcilerError(f"{step.verb}: not a plain call (see Executor._step)")
            case _:
                assert_never(step)
        return []

    def _live_step(self, action: Action, step: LiveStep, refused: list[str]) -> list[str]:
        hv, name = self.hypervisor, action.name
        try:
            match step:
                case SetMemory(bytes=size):
                    hv.set_domain_memory(name, size // 1024)
                case SetVcpus(count=count):
                    hv.set_domain_vcpus(name, count)
                case AttachDevice(xml=xml):
                    hv.attach_domain_device(name, xml)
                case DetachDevice(xml=xml, path=path):
                    hv.detach_domain_device(name, xml)
                    return self._check_released(action, path, refused)
                case UpdateDevice(xml=xml):
                    hv.update_domain_device(name, xml)
                case PinCpus(vcpu=vcpu, iothread=iothread, cpuset=cpuset):
                    hv.pin_domain_cpus(name, cpuset, vcpu=vcpu, iothread=iothread)
                case _:
                    assert_never(step)
        except Refused as exc:
            refused.append(step.path)
            note = f"live change refused ({step.describe()}: {exc}); takes effect at next restart"
            self.log.warning("apply.live_refused", kind=action.kind.value, name=name,
                             step=step.verb, error=str(exc))  # fmt: skip
            return [note]
        return []

    def _log_data_loss(self, action: Action, pool: str) -> None:
        """A volume about to be deleted: say what is lost and what allowed it (SPEC §5)."""
        try:
            capacity = self.hypervisor.volume(pool, action.name).capacity
        except HypervisorError:
            capacity = None
        entry = self.inventory.get(action.key) or {}
        if action.op is Op.REPLACE:
            why = f"replace allowed with --allow-replace {action.key}"
        else:
            why = action.reason or "reclaimPolicy: delete"
        self.log.warning(
            "data.lost", kind=action.kind.value, name=action.name, action=action.op.value,
            lost=f"volume {pool}/{action.name} and all its content"
            + (" (its copy had never completed)" if inventory_file.CONTENT_PENDING in entry
               else ""),
            capacity=capacity, why=why,
        )  # fmt: skip

    def _image_cache(self) -> Path:
        if self.state_dir is None:
            raise ReconcilerError("a Volume from a URL needs a state directory for its "
                                  "image cache (--state-dir)")  # fmt: skip
        return statedir.path(self.state_dir, statedir.IMAGES)

    def _fetch_image(self, action: Action, step: FetchImage) -> str:
        """The image of ``step`` in the cache, verified, and one the volume can hold;
        ``ReconcilerError`` (the action fails, libvirt untouched) otherwise. Logs
        ``image.fetch`` (start) and ``image.fetched`` (size, duration); a progress line
        goes to a terminal only."""
        cache = self._image_cache()
        log = self.log.bind(kind=action.kind.value, name=action.name, url=step.url)
        # a qcow2 file is a little larger than what it holds; more than this is not an
        # image for this volume (or a server that never stops)
        limit = step.capacity + step.capacity // 8 + 64 * 1024**2
        start = self.clock()
        downloading = imagefetch.cached(cache, step.sha256) is None
        if downloading:
            log.info("image.fetch", sha256=step.sha256, limit=limit)
        progress = imagefetch.TtyProgress(f"fetching {step.url}")

        def proceed(done: int, total: int | None) -> None:
            progress(done, total)
            if self.should_stop():  # SIGTERM: a long download is not waited for
                raise imagefetch.FetchError(f"fetching {step.url}: stopped after {done} "
                                            "bytes; the next apply resumes it")  # fmt: skip

        try:
            path, downloaded = imagefetch.fetch(step.url, step.sha256, cache, limit=limit,
                                                progress=proceed)  # fmt: skip
        finally:
            progress.done()
        size = path.stat().st_size
        if downloaded:
            log.info("image.fetched", sha256=step.sha256, size=size,
                     duration=round(self.clock() - start, 3))  # fmt: skip
        problem = image_problem(str(path), step.url, step.format, step.capacity)
        if problem is not None:
            raise ReconcilerError(problem)
        how = "downloaded" if downloaded else "cached"
        return f"image {step.url} {how} ({size} bytes, sha256 verified)"

    def _content_done(self, action: Action) -> None:
        """The copy into a volume is complete and verified: drop its ``contentPending``
        mark and save the inventory at once, so a kill after this point does not copy
        the volume again (a kill before it does, which is harmless)."""
        entry = self.inventory.get(action.key)
        if entry is None or inventory_file.CONTENT_PENDING not in entry:
            return
        kept = {k: v for k, v in entry.items() if k != inventory_file.CONTENT_PENDING}
        self.inventory = self.inventory.with_entry(action.key, kept)
        self._save()

    def _note_seed_written(self, action: Action, pool: str, volume: str) -> None:
        """Keep, in the VM's inventory entry, when its seed's content was written: the
        planner tells a seed changed outside the tool by a later modification time."""
        entry = self.inventory.get(action.key)
        if entry is None:
            return
        mtime = self.hypervisor.volume(pool, volume).modified
        seeds = [
            {**s, "written": mtime} if s.get("pool") == pool and s.get("volume") == volume else s
            for s in entry.get("seeds", ())
            if isinstance(s, dict)
        ]
        self.inventory = self.inventory.with_entry(action.key, {**entry, "seeds": seeds})

    def _check_released(self, action: Action, path: str, refused: list[str]) -> list[str]:
        """libvirt returns from an unplug after waiting 5 s for the guest, released or not
        (a guest without ACPI hot-plug support never releases it)."""
        live = self.hypervisor.domain_live_xml(action.name)
        if live is None or not domain_xml.has_device(live, path):
            return []
        refused.append(path)
        self.log.warning("apply.live_refused", kind=action.kind.value, name=action.name,
                         step="detach-device", error="the guest kept the device")  # fmt: skip
        return [f"unplug of {path} requested, but the guest has not released it; "
                "it goes at the next restart"]  # fmt: skip

    def _record_refused(self, name: str, refused: list[str]) -> None:
        """Note this boot's refused live changes in the running domain (see module doc)."""
        if not refused:
            return
        try:
            live = self.hypervisor.domain_live_xml(name)
            if live is None:
                return  # stopped: the definition applies at the next start anyway
            paths = domain_xml.read_refused(live) | set(refused)
            self.hypervisor.set_domain_live_metadata(
                name, domain_xml.REFUSED_PREFIX, domain_xml.REFUSED_NAMESPACE,
                domain_xml.refused_xml(paths),
            )  # fmt: skip
        except HypervisorError as exc:
            self.log.warning("apply.record_refused", kind="VirtualMachine", name=name,
                             error=str(exc))  # fmt: skip

    def graceful_stop(self, name: str, timeout: float) -> str:
        """ACPI shutdown, wait up to ``timeout``, then force off; says how it ended."""
        log = self.log.bind(kind="VirtualMachine", name=name)
        start = self.clock()
        if not self.hypervisor.domain_active(name):
            return "already stopped"
        self.hypervisor.shutdown_domain(name)
        log.info("vm.shutdown", how="acpi", timeout=timeout)
        while self.clock() - start < timeout:
            if not self.hypervisor.domain_active(name):
                took = self.clock() - start
                log.info("vm.stopped", how="acpi", duration=round(took, 3))
                return f"shut down by ACPI in {took:.1f}s"
            self.sleep(self.poll_interval)
        self.hypervisor.destroy_domain(name)
        log.warning("vm.stopped", how="forced", duration=round(self.clock() - start, 3),
                    reason=f"no ACPI shutdown within {timeout:g}s")  # fmt: skip
        log.warning(
            "data.lost", action="force-off",
            lost="whatever the guest had not written to its disks (forced power-off)",
            why=f"it ignored the ACPI shutdown for its shutdownTimeout of {timeout:g}s",
        )  # fmt: skip
        return f"forced off: guest ignored ACPI shutdown for {timeout:g}s"


def image_problem(path: str, url: str, fmt: str, capacity: int) -> str | None:
    """Why the verified image at ``path`` (fetched from ``url``) cannot fill a ``fmt``
    volume of ``capacity`` bytes, or None: another format (libvirt's upload copies the
    image as it is), a qcow2 image on a backing file (the host cannot follow it), a
    qcow2 image whose data is in an external file (its header names a host file that
    libvirt's copy would read into the volume), or a virtual size larger than the
    volume."""
    found = images.read_format(path) or "raw"
    if found != fmt:
        return (f"image {url} is a {found} image, but the volume's format is {fmt}; "
                + (f"set format: {found}" if found in ("qcow2", "raw")
                   else "convert it to qcow2 or raw (qemu-img convert) and publish that"))
    header = images.read_header(path)
    if header.has_backing:
        return f"image {url} is a qcow2 image on a backing file; use a flattened image"
    if images.external_data_file(path):
        # libvirt's copy (qemu-img convert, as root) would read the host file the header
        # names into the volume, where a guest reads it
        return (f"image {url} is a qcow2 image whose data is in an external file its "
                "header names; use a self-contained image (qemu-img convert -O qcow2)")
    if header.virtual_size > capacity:
        return (f"image {url} holds {header.virtual_size} bytes (virtual size), more than "
                f"capacity {capacity}; set capacity: {header.virtual_size}B or more")
    return None


def _import_volume(hv: Hypervisor, name: str, step: ImportVolume,
                   cache: Path | None = None) -> str:
    """Copy ``source`` into the new volume (as differences from ``backing`` when given).

    On this machine, ``qemu-img convert`` then ``qemu-img compare`` (any format qemu-img
    reads; what a guest sees is compared). For a remote host, through libvirt's storage
    API only (``Hypervisor.import_file``): nothing runs qemu-img or opens the volume's
    path here. An image from a URL (``step.sha256``, fetched into ``cache`` by the
    action's ``FetchImage``) always goes through libvirt's storage API, local or not."""
    if step.sha256 is not None:
        return _import_cached_image(hv, name, step, cache)
    if hv.remote:
        return _import_volume_remote(hv, name, step)
    source = str(step.source)
    created = hv.volume(step.pool, name)
    path, fmt = created.path, created.format or "raw"
    # the source's format named, never probed: a file that says it is a vmdk or qed
    # (whose descriptors name other files) is read as the raw bytes it is
    try:
        source_format = images.read_header(source).format
    except OSError as exc:
        raise ReconcilerError(
            f"importing {source}: cannot read it: {exc.strerror}") from None
    command = ["qemu-img", "convert", "-n", "-f", source_format, "-O", fmt]
    if step.backing:
        command += ["-B", step.backing]
    command += [source, path]
    done = subprocess.run(_dies_with_us(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReconcilerError(f"importing {source}: {done.stderr.strip()}")
    # verified: what a guest reads from the volume (through its backing volume, if
    # any) is what it reads from the source; only then is the copy done
    # no -U: a copy still being written (by a qemu-img an earlier, killed run left)
    # holds the image's write lock, and the comparison fails instead of reading half
    check = subprocess.run(_dies_with_us(["qemu-img", "compare", "-f", source_format, "-F", fmt,
                                          source, path]),
                           capture_output=True, text=True, check=False)  # fmt: skip
    if check.returncode != 0:
        said = (check.stdout + check.stderr).strip()
        raise ReconcilerError(f"importing {source}: the copy differs from it ({said})")
    return f"imported {source} (verified)"


def _import_volume_remote(hv: Hypervisor, name: str, step: ImportVolume) -> str:
    source = str(step.source)
    try:
        header = images.read_header(source)
    except OSError as exc:
        raise ReconcilerError(f"importing {source}: cannot read it: {exc.strerror}") from None
    if header.has_backing:
        raise ReconcilerError(
            f"importing {source}: a qcow2 image on a backing file cannot be streamed to a "
            f"remote host; flatten it first (qemu-img convert -O qcow2 {source} NEW) and "
            "name NEW as source"
        )
    hv.import_file(step.pool, name, source, header.format)
    return f"imported {source} (streamed to {urlsplit(hv.uri).hostname or hv.uri}, verified)"


def _import_cached_image(hv: Hypervisor, name: str, step: ImportVolume,
                         cache: Path | None) -> str:
    """Stream the cached image ``step.sha256`` into the volume through libvirt
    (``Hypervisor.import_file``: upload, read back and compared, converted into the
    volume); its digest is checked again first (the cache is a plain folder)."""
    path = None if cache is None else imagefetch.cached(cache, str(step.sha256))
    if path is None:
        raise ReconcilerError(f"importing {step.url}: its image is not in the cache; "
                              "apply again to fetch it")  # fmt: skip
    actual = imagefetch.file_sha256(path)
    if actual != step.sha256:
        path.unlink()
        raise ReconcilerError(imagefetch.mismatch_message(str(step.url), str(step.sha256),
                                                          actual))  # fmt: skip
    fmt = images.read_header(str(path)).format
    progress = imagefetch.TtyProgress(f"streaming {path.name[:12]} into {step.pool}/{name}")
    try:
        hv.import_file(step.pool, name, str(path), fmt, progress)
    finally:
        progress.done()
    where = urlsplit(hv.uri).hostname or hv.uri if hv.remote else "libvirt"
    return f"imported {step.url} (streamed through {where}, verified)"


def _dies_with_us(command: list[str]) -> list[str]:
    """``command`` run so that it is killed when the reconciler dies (SIGKILL included):
    a copy left running by a killed apply would race the next apply's copy of the same
    volume. ``setpriv --pdeathsig`` (util-linux) sets it before exec, without the
    ``preexec_fn`` that is unsafe in a process with threads."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def _write_seed(hv: Hypervisor, step: WriteSeed) -> str:
    """Make the seed volume if missing, and write the seed image into it."""
    pool, volume = step.pool, step.volume
    if not hv.volume_exists(pool, volume):
        hv.create_volume(pool, step.xml)
    image = cloudinit.build_iso(step.files)
    hv.write_volume(pool, volume, image)
    return f"wrote cloud-init seed {pool}/{volume} ({step.digest}, {len(image)} bytes)"


_RUN = object()  # Executor._before: the action runs
