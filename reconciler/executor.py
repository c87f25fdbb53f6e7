"""Executor: the only code that changes libvirt. Plan in, results out.

Runs the plan's actions in order and each action's steps in order, through
``Hypervisor`` (the one module importing libvirt). Consecutive actions that
only define domains (``CONCURRENT_VERBS``) run a few at a time: libvirtd
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler import cloudinit, hints, images
from reconciler import inventory as inventory_file
from reconciler.errors import HypervisorError, Problem, ReconcilerError, Refused, SourcePosition
from reconciler.hypervisor import VOLUME_EXISTS, Hypervisor
from reconciler.inventory import Inventory
from reconciler.logs import get_logger
from reconciler.model import Kind
from reconciler.plan import Action, ActionResult, Op, Plan, Step
from reconciler.xml import domain as domain_xml
from reconciler.xml import volume as volume_xml

_LIVE_VERBS = frozenset({"set-memory", "set-vcpus", "attach-device", "detach-device",
                         "update-device"})  # fmt: skip

# Steps that may run for several actions at once: each touches only its own
# domain's definition, and libvirtd serves them on its worker pool. None is a
# live step, a seed write or a delete: those read the domain back or change the
# executor's inventory, one action at a time.
CONCURRENT_VERBS = frozenset({"define-domain", "autostart-domain"})
# Steps whose refusal by libvirt is explained with the manifest's position and a hint.
# (A restart's start counts as start-domain; its graceful stop is not explained.)
EXPLAINED_VERBS = frozenset({"define-domain", "start-domain", "define-network",
                             "start-network"})  # fmt: skip
# Steps that start a domain: their failure is remembered, their success forgets it.
START_VERBS = frozenset({"start-domain", "restart-domain"})
# In flight at once, on one connection: libvirtd serves up to max_client_requests
# (default 5) calls of one client at a time and queues the rest.
MAX_CONCURRENT = 4


def concurrent(action: Action) -> bool:
    """Whether ``action`` may run alongside others: a VM whose steps only define it."""
    return (
        action.kind is Kind.VIRTUAL_MACHINE
        and bool(action.steps)
        and all(step.verb in CONCURRENT_VERBS for step in action.steps)
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

    def apply(self, plan: Plan) -> list[ActionResult]:
        for action in plan.actions:
            if action.owner_record is not None and action.op not in (Op.CONFLICT, Op.ERROR):
                if self.inventory.get(action.key) is None:
                    self._claimed.add(action.key)
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
            if action.kind is Kind.VOLUME and action.op is Op.CREATE and done == 0 \
                    and action.key in self._claimed and isinstance(exc, HypervisorError) \
                    and exc.code == VOLUME_EXISTS:  # fmt: skip
                # nothing was created (a volume of that name was there already, in a
                # pool made by this apply): not ours, never claimed, never pruned
                self.inventory = self.inventory.without(action.key)
                notes.append("not claimed: the volume was not created by reconciler")
            self._record_refused(action.name, refused)
            duration = self.clock() - start
            explanation, failed_step = None, ""
            if isinstance(exc, HypervisorError):
                explanation, failed_step = exc.explanation, exc.step
            return ActionResult(
                action, "failed", duration, str(exc), tuple(notes), tuple(refused),
                explanation, failed_step,
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
            and any(step.verb in START_VERBS for step in action.steps)
        ):
            kept = {k: v for k, v in entry.items() if k != inventory_file.START_FAILURE}
            self.inventory = self.inventory.with_entry(action.key, kept)

    def _save(self) -> None:
        if self.state_dir is not None:
            inventory_file.save(self.state_dir, self.inventory)

    # -- steps ----------------------------------------------------------------------

    def _step(self, action: Action, step: Step, refused: list[str]) -> list[str]:
        """Run one step; return notes worth reporting."""
        hv, name, args = self.hypervisor, action.name, step.args
        verb = doing = step.verb
        try:
            if verb in _LIVE_VERBS:
                return self._live_step(action, step, refused)
            if verb == "delete-volume":
                self._log_data_loss(action, str(args["pool"]))
            handler = _SIMPLE_STEPS.get(verb)
            if handler is not None:
                handler(hv, name, args)
                return []
            if verb in ("stop-domain", "restart-domain"):
                note = self.graceful_stop(name, float(args["timeout"]))
                if verb == "restart-domain":
                    doing = "start-domain"
                    hv.start_domain(name)
                    note += ", started again"
                return [note]
            if verb == "import-volume":
                note = _import_volume(hv, action.name, args)
                self._content_done(action)
                return [note]
            if verb == "write-seed":
                note = _write_seed(hv, args)
                self._note_seed_written(action, str(args["pool"]), str(args["volume"]))
                return [note]
            if verb == "delete-seed":
                if hv.volume_exists(str(args["pool"]), str(args["volume"])):
                    hv.delete_volume(str(args["pool"]), str(args["volume"]))
                return [f"deleted cloud-init seed {args['pool']}/{args['volume']}"]
        except HypervisorError as exc:
            message = f"{step.describe()}: {exc}"
            explanation = None
            if doing in EXPLAINED_VERBS and isinstance(exc, Refused):
                explanation = self.explain(action, message)
                message = str(explanation)
            raise type(exc)(message, code=exc.code, explanation=explanation, step=doing) from exc
        raise ReconcilerError(f"unknown step {verb!r} (planner and executor disagree)")

    def _live_step(self, action: Action, step: Step, refused: list[str]) -> list[str]:
        hv, name, args = self.hypervisor, action.name, step.args
        try:
            if step.verb == "set-memory":
                hv.set_domain_memory(name, int(args["bytes"]) // 1024)
            elif step.verb == "set-vcpus":
                hv.set_domain_vcpus(name, int(args["count"]))
            elif step.verb == "attach-device":
                hv.attach_domain_device(name, str(args["xml"]))
            elif step.verb == "detach-device":
                hv.detach_domain_device(name, str(args["xml"]))
                return self._check_released(action, str(args["path"]), refused)
            else:
                hv.update_domain_device(name, str(args["xml"]))
        except Refused as exc:
            refused.append(str(args.get("path", step.verb)))
            note = f"live change refused ({step.describe()}: {exc}); takes effect at next restart"
            self.log.warning("apply.live_refused", kind=action.kind.value, name=name,
                             step=step.verb, error=str(exc))  # fmt: skip
            return [note]
        return []

    def _log_data_loss(self, action: Action, pool: str) -> None:
        """A volume about to be deleted: say what is lost and what allowed it (SPEC §5)."""
        try:
            fields = volume_xml.observe(self.hypervisor.volume_xml(pool, action.name))
        except HypervisorError:
            fields = {}
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
            capacity=fields.get("capacity"), why=why,
        )  # fmt: skip

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
        mtime = volume_xml.modified(self.hypervisor.volume_xml(pool, volume))
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


def _import_volume(hv: Hypervisor, name: str, args: dict[str, Any]) -> str:
    """Copy ``source`` into the new volume (as differences from ``backing`` when given).

    On this machine, ``qemu-img convert`` then ``qemu-img compare`` (any format qemu-img
    reads; what a guest sees is compared). For a remote host, through libvirt's storage
    API only (``Hypervisor.import_file``): nothing runs qemu-img or opens the volume's
    path here."""
    if hv.remote:
        return _import_volume_remote(hv, name, args)
    path = hv.volume_path(str(args["pool"]), name)
    fmt = str(volume_xml.observe(hv.volume_xml(str(args["pool"]), name)).get("format") or "raw")
    # the source's format named, never probed: a file that says it is a vmdk or qed
    # (whose descriptors name other files) is read as the raw bytes it is
    try:
        source_format = images.read_header(str(args["source"])).format
    except OSError as exc:
        raise ReconcilerError(
            f"importing {args['source']}: cannot read it: {exc.strerror}") from None
    command = ["qemu-img", "convert", "-n", "-f", source_format, "-O", fmt]
    if args.get("backing"):
        command += ["-B", str(args["backing"])]
    command += [str(args["source"]), path]
    done = subprocess.run(_dies_with_us(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReconcilerError(f"importing {args['source']}: {done.stderr.strip()}")
    # verified: what a guest reads from the volume (through its backing volume, if
    # any) is what it reads from the source; only then is the copy done
    # no -U: a copy still being written (by a qemu-img an earlier, killed run left)
    # holds the image's write lock, and the comparison fails instead of reading half
    check = subprocess.run(_dies_with_us(["qemu-img", "compare", "-f", source_format, "-F", fmt,
                                          str(args["source"]), path]),
                           capture_output=True, text=True, check=False)  # fmt: skip
    if check.returncode != 0:
        said = (check.stdout + check.stderr).strip()
        raise ReconcilerError(f"importing {args['source']}: the copy differs from it ({said})")
    return f"imported {args['source']} (verified)"


def _import_volume_remote(hv: Hypervisor, name: str, args: dict[str, Any]) -> str:
    source = str(args["source"])
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
    hv.import_file(str(args["pool"]), name, source, header.format)
    return f"imported {source} (streamed to {urlsplit(hv.uri).hostname or hv.uri}, verified)"


def _dies_with_us(command: list[str]) -> list[str]:
    """``command`` run so that it is killed when the reconciler dies (SIGKILL included):
    a copy left running by a killed apply would race the next apply's copy of the same
    volume. ``setpriv --pdeathsig`` (util-linux) sets it before exec, without the
    ``preexec_fn`` that is unsafe in a process with threads."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


def _write_seed(hv: Hypervisor, args: dict[str, Any]) -> str:
    """Make the seed volume if missing, and write the seed image into it."""
    pool, volume = str(args["pool"]), str(args["volume"])
    if not hv.volume_exists(pool, volume):
        hv.create_volume(pool, str(args["xml"]))
    image = cloudinit.build_iso(args["files"])
    hv.write_volume(pool, volume, image)
    return f"wrote cloud-init seed {pool}/{volume} ({args['digest']}, {len(image)} bytes)"


_RUN = object()  # Executor._before: the action runs

_SIMPLE_STEPS: dict[str, Callable[[Hypervisor, str, dict[str, Any]], None]] = {
    "define-pool": lambda hv, name, a: hv.define_pool(a["xml"]),
    "build-pool": lambda hv, name, a: hv.build_pool(name),
    "start-pool": lambda hv, name, a: hv.start_pool(name),
    "stop-pool": lambda hv, name, a: hv.stop_pool(name),
    "undefine-pool": lambda hv, name, a: hv.undefine_pool(name),
    "autostart-pool": lambda hv, name, a: hv.set_pool_autostart(name, bool(a["on"])),
    "create-volume": lambda hv, name, a: hv.create_volume(a["pool"], a["xml"]),
    "delete-volume": lambda hv, name, a: hv.delete_volume(a["pool"], name),
    "resize-volume": lambda hv, name, a: hv.resize_volume(a["pool"], name, int(a["capacity"])),
    "block-resize": lambda hv, name, a: hv.block_resize(a["domain"], a["target"],
                                                        int(a["capacity"])),
    "define-network": lambda hv, name, a: hv.define_network(a["xml"]),
    "start-network": lambda hv, name, a: hv.start_network(name),
    "stop-network": lambda hv, name, a: hv.stop_network(name),
    "undefine-network": lambda hv, name, a: hv.undefine_network(name),
    "autostart-network": lambda hv, name, a: hv.set_network_autostart(name, bool(a["on"])),
    "net-update": lambda hv, name, a: hv.update_network(name, a["command"], a["section"],
                                                        a["xml"], int(a.get("index", -1))),
    "define-domain": lambda hv, name, a: hv.define_domain(a["xml"]),
    "start-domain": lambda hv, name, a: hv.start_domain(name),
    "undefine-domain": lambda hv, name, a: hv.undefine_domain(name),
    "autostart-domain": lambda hv, name, a: hv.set_domain_autostart(name, bool(a["on"])),
}  # fmt: skip
