"""The daemon: decides when to run a reconcile pass; reconcile.py does the pass.

Metrics (metrics.py, served on ``metricsAddress``) are fed after each status
write and pass. The log line of a planned change is named after what moved
(drift.py): a manifest edit is a *change*, libvirt moving away from it *drift*.

Triggers, all funnelled into one ``Triggers`` value guarded by a lock:
* file events under the manifest directory (watchdog), debounced: each event
  pushes the pass back by ``debounce`` (a git checkout writing hundreds of
  files yields one pass once the writes settle), but never more than ten
  debounce periods after the first;
* libvirt lifecycle events (a VM destroyed, a network stopped, a definition
  edited), coalesced for a moment, so drift is healed at once;
* a periodic full resync, the safety net;
* SIGHUP (reload the configuration, then a pass).
Passes run one at a time on the main thread; a trigger during a pass
schedules exactly one more. SIGTERM lets the action in progress finish and
skips the rest. A lost libvirt connection is retried with capped
exponential backoff while the status file keeps saying so; an object whose
action failed is retried with its own backoff, and the others proceed; a pass
that failed as a whole (a libvirt error while observing) is retried with
backoff too.

After each pass: status file (status.py), sd_notify STATUS, one log line.

With a git source (``source.git``), the files are not watched: gitsource.py's
``Poller`` fetches every ``interval`` (with backoff after a failure), and a
pass runs at once when it switched to a new commit, from that commit's
read-only snapshot, with the commit id as the revision. A refused or failed
fetch is one log line and ``source_error`` in the status file; the snapshot
applied before stays in use. The poller's ``source.observers`` is where
metrics follow each fetch.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler import drift, metrics, passstatus, sdnotify, statedir
from reconciler.backoff import RECONNECT, RETRY
from reconciler.errors import (
    ConfigError,
    ConnectionLost,
    HypervisorError,
    ReconcilerError,
    StateDirError,
)
from reconciler.gitsource import GitSource, Poller, SyncResult
from reconciler.hypervisor import Hypervisor, start_event_loop
from reconciler.lock import StateLock
from reconciler.logs import get_logger
from reconciler.manifests import LoadResult, is_manifest_file, snapshot
from reconciler.plan import Action, Op, Plan, is_unsettled
from reconciler.reconcile import PassOptions, PassResult, Reconciler, source_revision
from reconciler.settings import Settings, check_manifest_dir, load_settings
from reconciler.snapshot import Observed, signature
from reconciler.status import (
    ObjectState,
    ObjectStatus,
    StatusReport,
    keep_last_change,
    read_status,
    summary_line,
    write_status,
)

# Retries (a failed object, a failed pass, libvirtd unreachable) wait as backoff.py says:
# RETRY for the first two, RECONNECT for libvirtd. A failed connect costs next to nothing
# (the socket refuses it), and every second of backoff is a second of not converging once
# libvirtd is back: with 60 s the daemon took 47 s to converge after a 75 s outage
# (issue 11); RECONNECT's cap of 2 s converges within ~2 s.
# What libvirt raises no event for (autostart, memory and maxMemory set with virsh, a
# volume deleted) is found by a cheap check every POLL_INTERVAL: observe, and compare
# a digest with what the last pass left (snapshot.signature); a pass only on a change.
POLL_INTERVAL = 10.0
# ...or, on a host large enough that one check costs more than 1/POLL_BUDGET of the
# interval, as often as keeps it to that share of one core (1 %, at most 5 minutes).
POLL_BUDGET = 100.0
POLL_MAX = 300.0
EVENT_COALESCE = 0.2  # libvirt events come in bursts (our own apply makes some)
MAX_STALL = 1800.0  # watchdog pings stop when the loop made no progress for this long
# A removal (an owned object no manifest declares) is acted on only when a second read,
# at least this long (and at least the debounce) after the first, finds the same
# removal in files that did not change in between: an editor or a slow writer leaves
# a file cut short for a moment (issue 11); a deliberate removal stays.
REMOVAL_HOLD = 2.0


@dataclass
class RemovalGuard:
    """The daemon's two-read rule for prune: which removals have been confirmed.

    ``held``: the removals the last pass held back; ``files``: the manifest files'
    snapshot (manifests.snapshot) when they were first seen, None when the files
    changed while that pass read them; ``since``: when (monotonic)."""

    hold: float = REMOVAL_HOLD
    held: frozenset[str] = frozenset()
    files: tuple[object, ...] | None = None
    since: float = 0.0

    def confirmed(self, files: tuple[object, ...], now: float) -> frozenset[str]:
        """The removals a pass reading ``files`` at ``now`` may carry out."""
        if self.files is None or files != self.files or now - self.since < self.hold:
            return frozenset()
        return self.held

    def note(self, held: tuple[str, ...], files: tuple[object, ...] | None, now: float
             ) -> float | None:  # fmt: skip
        """Remember what a pass held back, read from ``files`` (None: they changed while
        it read them); returns when to look again, or None when nothing is held."""
        if not held:
            self.held, self.files = frozenset(), None
            return None
        if frozenset(held) != self.held or files is None or files != self.files:
            self.held, self.files, self.since = frozenset(held), files, now
        return max(0.0, self.since + self.hold - now) + 0.05


@dataclass
class Triggers:
    """Why and when the next pass is due. Thread-safe; the main loop waits on it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    due: float | None = None  # monotonic time of the next pass
    first: float | None = None  # when the oldest pending debounced (file) trigger arrived
    reasons: list[str] = field(default_factory=list)

    def request(self, reason: str, delay: float, *, max_delay: float | None = None) -> None:
        now = time.monotonic()
        with self.lock:
            due = now + delay
            if max_delay is not None:
                # the cap counts from the first file event only: a retry or libvirt
                # trigger pending for a while must not cut the debounce short
                if self.first is None:
                    self.first = now
                due = min(due, self.first + max_delay)
            # a later file event pushes the pass back (debounce); others only bring it forward
            if self.due is None or max_delay is not None or due < self.due:
                self.due = due
            if len(self.reasons) < 20:
                self.reasons.append(reason)
        self.wake.set()

    def take(self) -> list[str] | None:
        """The reasons, if a pass is due now; resets the triggers."""
        with self.lock:
            if self.due is None or time.monotonic() < self.due:
                return None
            reasons, self.reasons = self.reasons, []
            self.due = self.first = None
            return reasons

    def seconds_until_due(self) -> float | None:
        with self.lock:
            return None if self.due is None else max(0.0, self.due - time.monotonic())


@dataclass
class _Backoff:
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""


class Daemon:
    """``reconciler run``: one long-lived process converging the manifest directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        overrides: dict[str, object] | None = None,
        connect: Callable[[str], Hypervisor] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.connect = connect or (lambda uri: Hypervisor.open(uri))
        self.log: Any = get_logger(component="daemon")
        self.triggers = Triggers()
        self.stopping = threading.Event()
        self.reload = threading.Event()
        self.hypervisor: Hypervisor | None = None
        self.reconciler: Reconciler | None = None
        self.connection_lost = threading.Event()
        self.failures: dict[str, _Backoff] = {}
        self.failed_passes = 0  # passes in a row that failed as a whole (retried with backoff)
        self.passes = 0
        self.heartbeat = time.monotonic()
        self.metrics = metrics.Metrics()  # served from run(); fed after each status write
        self._observer: Any = None
        self._handler: Any = None
        self._root_watch: Any = None
        self._watched_root: str | None = None
        self._previous: StatusReport | None = None
        # (kind, name) of every object the last pass planned for; None: react to all
        self.managed: set[tuple[str, str]] | None = None
        # source.git: fetches and snapshots (gitsource.py); None: the manifest directory
        self.poller: Poller | None = self._make_poller()
        self._source_error_shown: str | None = None
        self.removals = RemovalGuard(hold=max(REMOVAL_HOLD, settings.debounce))
        self.baseline: str | None = None  # snapshot.signature of libvirt after the last pass
        self.connect_failures = 0
        self.poll_interval = POLL_INTERVAL  # grows on a host where a check costs more

    # -- main loop -----------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        with StateLock(self.settings.state_dir, wait=0):
            start_event_loop()
            self._serve_metrics()
            self._previous = read_status(self.settings.state_dir)
            self._start_watchdog_pings()
            if self.poller is None:  # a git source's snapshots never change in place
                self._watch_files()
            self.triggers.request("startup", 0)
            next_resync = time.monotonic() + self.settings.resync_interval
            next_connect = 0.0
            next_poll = time.monotonic() + POLL_INTERVAL
            ready = False
            while not self.stopping.is_set():
                self.heartbeat = time.monotonic()
                if self.reload.is_set():
                    self._reload()
                disconnected = self.hypervisor is None or self.connection_lost.is_set()
                if disconnected and time.monotonic() >= next_connect:
                    if self._connect():
                        self.triggers.request("connected", 0)
                    else:
                        wait = RECONNECT.delay(self.connect_failures)
                        next_connect = time.monotonic() + wait
                        self._write_status(None, error=self._last_connect_error)
                if not ready:
                    sdnotify.notify(ready=True, status="starting")
                    ready = True
                if time.monotonic() >= next_resync:
                    self.triggers.request("periodic resync", 0)
                    next_resync = time.monotonic() + self.settings.resync_interval
                if self.poller is not None:
                    self._poll_source()
                reasons = self.triggers.take() if self.hypervisor is not None else None
                if reasons is not None:
                    self._pass(reasons)
                    next_poll = time.monotonic() + self.poll_interval
                    continue
                if time.monotonic() >= next_poll:
                    if self.hypervisor is not None and not self.connection_lost.is_set():
                        self._poll()
                    next_poll = time.monotonic() + self.poll_interval
                    continue
                waits = [next_resync - time.monotonic(), next_poll - time.monotonic(), 5.0]
                due = self.triggers.seconds_until_due()
                if due is not None and self.hypervisor is not None:
                    waits.append(due)
                if self.hypervisor is None:
                    waits.append(next_connect - time.monotonic())
                if self.poller is not None:
                    waits.append(self.poller.seconds_until_due())
                self.triggers.wake.wait(max(0.0, min(waits)))
                self.triggers.wake.clear()
            sdnotify.notify(stopping=True, status="stopping")
            self.log.info("daemon.stopped", passes=self.passes)
            self._stop_watching()
            self.metrics.close()
            if self.hypervisor is not None:
                self.hypervisor.close()
        return 0

    _last_connect_error: str = ""
    host_name: str | None = None  # the connected host's, read at each connect

    def _connect(self) -> bool:
        if self.hypervisor is not None:
            self.hypervisor.close()
            self.hypervisor = None
        try:
            hv = self.connect(self.settings.uri)
            hv.watch(self._on_libvirt_event, self._on_connection_closed)
            # the host manifests are matched against, unless configured: the connected one
            self.host_name = self.settings.host or hv.host_name()
        except HypervisorError as exc:
            self._last_connect_error = str(exc)
            self.connect_failures += 1
            n = self.connect_failures
            if n & (n - 1) == 0:  # attempts 1, 2, 4, 8...: the log stays readable
                self.log.warning("libvirt.unreachable", uri=self.settings.uri, error=str(exc),
                                 attempts=n, retry_every=RECONNECT.cap)  # fmt: skip
            return False
        self.connect_failures = 0
        self.connection_lost.clear()
        self.hypervisor = hv
        self.reconciler = Reconciler(
            hv,
            self._pass_options(),
            should_stop=self.stopping.is_set,
            should_skip=self._in_backoff,
        )
        self.log.info("libvirt.connected", uri=self.settings.uri, host=self.host_name)
        return True

    def _pass_options(self) -> PassOptions:
        s = self.settings
        current = self.poller.source.current() if self.poller is not None else None
        return PassOptions(
            directory=current[1] if current else s.manifest_dir,
            revision=current[0] if current else None,
            state_dir=s.state_dir,
            host=s.host or self.host_name,
            prune=s.prune,
            default_update_policy=s.default_update_policy,
            allowed_roots=s.allowed_disk_roots,
            vm_defaults=s.vm_defaults,
            allowed_secret_roots=s.allowed_secret_roots,
            instance=statedir.instance_id(s.state_dir, create=True),
        )

    def _pass(self, reasons: list[str]) -> None:
        assert self.reconciler is not None
        started = time.monotonic()
        self.passes += 1
        log = self.log.bind(reconcile=self.passes)
        revision: str | None = None
        if self.poller is not None and self.poller.source.current() is None:
            # a git source with no commit applied yet: nothing to reconcile, nothing pruned
            error = f"no commit of {self.poller.source.config.url} applied yet"
            self._write_status(None, error=f"{error}: {self.poller.error or 'fetching'}")
            return
        current = self.poller.source.current() if self.poller is not None else None
        directory = current[1] if current else self.settings.manifest_dir
        try:
            # permissions first: nothing of the directory (.git included) is read before
            if not self.settings.allow_writable_manifest_dir:
                check_manifest_dir(directory, self.settings)
            revision = current[0] if current else source_revision(directory)
            self._follow_root()
            load, observed, plan = self._plan()
            for problem in load.problems:
                log.error("manifest.problem", problem=str(problem), revision=revision)
            for note in load.notes:  # a preflight check that could not be made
                log.warning("manifest.note", note=note, revision=revision)
            # an object the tool owns that libvirt no longer has (a `vol-delete`, an
            # undefine) is made again: drift healed, not a mere create
            recreated = {
                a.key
                for a in plan.actions
                if a.op is Op.CREATE and observed.inventory.get(a.key) is not None
            }
            # objects whose manifest was edited: an applied change, not drift healed
            edited = {a.key for a in plan.actions if a.changes_anything
                      and drift.cause(a, observed.inventory) is drift.Cause.CHANGE}  # fmt: skip
            for action in plan.actions:
                if action.key in recreated:
                    log.info("drift", kind=action.kind.value, name=action.name,
                             action="recreate", fields=["exists"], revision=revision,
                             detail="owned, but missing from libvirt (deleted out of band, or "
                             "an earlier apply was cut short): made again")  # fmt: skip
                elif action.changes_anything:
                    log.info(
                        drift.EVENTS[drift.cause(action, observed.inventory)],
                        kind=action.kind.value, name=action.name, action=action.op.value,
                        fields=[c.path for c in action.changes][:20], revision=revision,
                    )  # fmt: skip
            result = (
                self.reconciler.apply(plan, observed, load)
                if plan.has_changes
                else PassResult(load, plan, observed=observed)
            )
        except ConnectionLost as exc:
            log.warning("libvirt.connection_lost", error=str(exc))
            self.connection_lost.set()
            self.triggers.request("reconnected", 0)
            self.metrics.pass_failed(time.monotonic() - started)
            self._write_status(None, error=str(exc))
            return
        except (ReconcilerError, OSError) as exc:
            # the triggers are spent: without a retry a transient error (a busy pool)
            # would leave a change unapplied until some unrelated trigger
            self.failed_passes += 1
            delay = RETRY.delay(self.failed_passes)
            self.triggers.request("retry after a failed pass", delay)
            log.error("reconcile.failed", error=str(exc), reasons=sorted(set(reasons)),
                      retry_in=delay, revision=revision)  # fmt: skip
            self.metrics.pass_failed(time.monotonic() - started)
            self._write_status(None, error=str(exc))
            return
        self.failed_passes = 0
        if self.passes == 1:
            # What the first pass leaves (modules, schemas, caches) lives as long as the
            # daemon: out of the collector's way, so that an idle daemon's occasional
            # full collection scans only what later passes and checks allocate (seen:
            # one such collection cost 0.15 s of CPU, 1 % of an idle minute).
            gc.collect()
            gc.freeze()
        self._note_failures(result)
        self.managed = {(a.kind.value, a.name) for a in plan.actions}
        self.baseline = (
            signature(result.observed, self.managed) if result.observed is not None else None
        )
        if result.after is not None:
            # what the apply's own changes brought to light (a VM's NIC found cut off once
            # its network was healed): another pass now, not at the next trigger
            tried = {r.action.key for r in result.results}
            if any(a.changes_anything and a.key not in tried for a in result.after.actions):
                self.triggers.request("follow-up: changes found after the apply", EVENT_COALESCE)
        duration = time.monotonic() - started
        report = self._write_status(result, duration=duration, revision=revision,
                                    recreated=recreated, edited=edited)  # fmt: skip
        log.info(
            "reconcile.done",
            reasons=sorted(set(reasons)),
            duration=round(duration, 3),
            outcome=_outcome(result, stopping=self.stopping.is_set()),
            summary=summary_line(report),
            revision=revision,
        )
        sdnotify.notify(status=summary_line(report))
        self.metrics.pass_done(
            result.results,
            drift.causes(plan, observed.inventory),
            duration=duration,
            outcome=_outcome(result, stopping=self.stopping.is_set()),
            unsettled=[a.key for a in result.unsettled],
        )
        self._write_textfile()

    def _plan(self) -> tuple[LoadResult, Observed, Plan]:
        """A plan that prunes only removals confirmed by two reads (``RemovalGuard``).
        With a git source the pass reads an immutable snapshot of one commit, switched
        to atomically: a removal there is the commit's, and needs no second read."""
        assert self.reconciler is not None
        if self.poller is not None:
            return self.reconciler.plan()
        directory = self.settings.manifest_dir
        before = snapshot(directory)
        confirmed = self.removals.confirmed(before, time.monotonic())
        load, observed, plan = self.reconciler.plan(confirmed_removals=confirmed)
        after = snapshot(directory)
        if confirmed and after != before:  # the files moved while read: confirm nothing
            load, observed, plan = self.reconciler.plan(confirmed_removals=frozenset())
        confirm_in = self.removals.note(plan.held_removals, before if after == before else None,
                                        time.monotonic())  # fmt: skip
        if confirm_in is not None:
            self.log.info("prune.held", objects=list(plan.held_removals),
                          confirm_in=round(confirm_in, 2),
                          reason="a removal is carried out once a second read of unchanged "
                          "files finds it again")  # fmt: skip
            self.triggers.request("confirm removal", confirm_in)
        pruned = [a.key for a in plan.actions if a.op in (Op.DELETE, Op.FORGET)]
        if pruned:
            self.log.info("prune.confirmed", objects=pruned,
                          reason="no manifest declares them in two reads of unchanged files "
                          f"{self.removals.hold:g}s apart")  # fmt: skip
        return load, observed, plan

    def _poll(self) -> None:
        """The cheap periodic check: libvirt read as a pass reads it, compared with what
        the last pass left; a pass when it differs (see POLL_INTERVAL)."""
        assert self.reconciler is not None
        if self.baseline is None:
            return
        cpu = time.process_time()
        try:
            now = signature(self.reconciler.observe(), self.managed)
            cost = time.process_time() - cpu
            self.poll_interval = min(max(POLL_INTERVAL, POLL_BUDGET * cost), POLL_MAX)
        except ConnectionLost as exc:
            self.log.warning("libvirt.connection_lost", error=str(exc))
            self.connection_lost.set()
            self.triggers.request("reconnected", 0)
            return
        except (ReconcilerError, OSError) as exc:
            self.log.warning("drift.check_failed", error=str(exc))
            return
        if now != self.baseline:
            self.log.info("drift.suspected", reason="libvirt changed without an event "
                          f"(found by the check every {self.poll_interval:.0f}s)")  # fmt: skip
            self.baseline = now
            self.triggers.request("periodic check: libvirt changed", 0)

    # -- per-object retry backoff -------------------------------------------------

    def _in_backoff(self, action: Action) -> str | None:
        backoff = self.failures.get(action.key)
        if backoff is None or time.monotonic() >= backoff.next_try:
            return None
        wait = backoff.next_try - time.monotonic()
        return f"failed {backoff.attempts}x ({backoff.error}); retry in {wait:.0f}s"

    def _note_failures(self, result: PassResult) -> None:
        attempted = {r.action.key for r in result.results}
        for key in [k for k in self.failures if k not in attempted]:
            del self.failures[key]  # nothing left to do for it (in sync now, or gone)
        for r in result.results:
            if r.outcome == "ok":
                self.failures.pop(r.action.key, None)
            elif r.outcome == "failed":
                b = self.failures.setdefault(r.action.key, _Backoff())
                b.attempts += 1
                b.error = r.error
                # a definition changed since the plan: the next pass plans again at once,
                # then backs off as any failure does if it keeps changing under us
                b.next_try = time.monotonic() + RETRY.delay(b.attempts - r.stale)
                if r.stale and b.attempts == 1:
                    self.triggers.request(f"retry {r.action.key}: changed since planned", 0)
        # Every pass consumes the pending triggers, retry timers included: set them
        # again, or an object skipped by this pass (still in backoff) would wait for
        # some unrelated trigger, up to the periodic resync.
        now = time.monotonic()
        for key, b in self.failures.items():
            if b.next_try > now:
                self.triggers.request(f"retry {key}", b.next_try - now)

    # -- status ------------------------------------------------------------------------

    def _write_status(
        self,
        result: PassResult | None,
        *,
        duration: float | None = None,
        revision: str | None = None,
        error: str | None = None,
        recreated: AbstractSet[str] = frozenset(),
        edited: AbstractSet[str] = frozenset(),
    ) -> StatusReport:
        now = datetime.now(UTC)
        if result is None:
            previous = self._previous
            objects = previous.objects if previous else ()
            connected = self.hypervisor is not None and not self.connection_lost.is_set()
        else:
            objects = tuple(
                keep_last_change(
                    self._previous,
                    _object_statuses(result, now, revision, failing=set(self.failures),
                                     recreated=recreated, edited=edited),
                )
            )
            connected = True
            if result.load.problems:
                error = passstatus.load_error(result.load.problems)
        report = StatusReport(
            written_at=now,
            daemon_pid=os.getpid(),
            revision=revision if result is not None else (self._previous.revision
                                                          if self._previous else None),
            reconcile_count=self.passes,
            last_duration=duration,
            objects=objects,
            connected=connected,
            last_error=error,
            source_error=self.poller.error if self.poller is not None else None,
        )  # fmt: skip
        try:
            write_status(self.settings.state_dir, report)
        except StateDirError as exc:  # a full or read-only disk: say so, keep converging
            self.log.error("status.write_failed", error=str(exc))
        self.metrics.status_written(report)
        if result is None:  # after a pass that ran to its end: see _pass
            self._write_textfile()
        self._previous = report
        return report

    # -- the git source -----------------------------------------------------------------

    def _make_poller(self) -> Poller | None:
        config = self.settings.git_source
        if config is None:
            return None
        source = GitSource(config, self.settings.state_dir, should_stop=self.stopping.is_set)
        source.observers.append(self._count_fetch)  # the metrics follow each fetch
        return Poller(source, self.log.bind(source="git"))

    def _count_fetch(self, result: SyncResult) -> None:
        if result.fetch_failed:
            self.metrics.git_fetch_failed()
        elif result.refused is not None:
            self.metrics.git_commit_refused()

    def _poll_source(self) -> None:
        """Fetch when due; a new commit switched to: its pass at once."""
        assert self.poller is not None
        result = self.poller.poll_if_due()
        if result is None:
            return
        if result.changed and result.revision is not None:
            if self.reconciler is not None:
                self.reconciler.options = self._pass_options()
            self.triggers.request(f"git commit {result.revision[:12]}", 0)
        elif self.poller.error != self._source_error_shown:
            # the refusal (or its end) in the status file now; the pass's own error stays
            self._write_status(None, error=self._previous.last_error if self._previous else None)
        self._source_error_shown = self.poller.error

    # -- triggers: files, libvirt, signals ---------------------------------------------

    def _on_libvirt_event(self, kind: str, name: str, event: str) -> None:
        if self.managed is not None and (kind, name) not in self.managed:
            return  # not ours and not named by a manifest: nothing to heal
        self.log.info("libvirt.event", kind=kind, name=name, change=event)
        self.triggers.request(f"{kind} {name} {event}", EVENT_COALESCE)

    def _on_connection_closed(self, reason: str) -> None:
        self.log.warning("libvirt.connection_closed", reason=reason)
        self.connection_lost.set()
        self.triggers.wake.set()

    def _watch_files(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if any(_relevant(p, daemon.settings.manifest_dir) for p in paths if p):
                    daemon.triggers.request(
                        f"file {event.event_type} {os.path.basename(paths[0])}",
                        daemon.settings.debounce,
                        max_delay=10 * daemon.settings.debounce,
                    )

        self._observer = Observer()
        self._handler = Handler()
        root = self.settings.manifest_dir
        # the root may be a symlink swapped atomically (git-sync): watch its parent too
        if root.parent.is_dir():
            self._observer.schedule(self._handler, str(root.parent), recursive=False)
        self._observer.start()
        self._follow_root()

    def _follow_root(self) -> None:
        """Watch the directory the manifest root points to now (it may have been swapped)."""
        if self._observer is None:
            return
        target = os.path.realpath(self.settings.manifest_dir)
        if target == self._watched_root or not os.path.isdir(target):
            return
        if self._root_watch is not None:
            self._observer.unschedule(self._root_watch)
        self._root_watch = self._observer.schedule(self._handler, target, recursive=True)
        if self._watched_root is not None:
            self.log.info("manifests.root_moved", target=target)
        self._watched_root = target

    def _stop_watching(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def _install_signals(self) -> None:
        # A Python signal handler runs in the main thread between any two bytecodes,
        # perhaps while that thread holds a lock the handler would take too (an Event's,
        # the log's): a deadlock (seen: SIGHUP during ``wake.clear()``). So the handlers
        # do nothing; the interpreter writes each signal's number to a pipe
        # (set_wakeup_fd) and a thread of ours acts on it.
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _ignore)

        def relay() -> None:
            while True:
                for signum in os.read(read_fd, 64):
                    self._on_signal(signum)

        threading.Thread(target=relay, name="signals", daemon=True).start()

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload.set()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            if not self.stopping.is_set():
                self.log.info("daemon.signal", signal=signal.Signals(signum).name,
                              effect="finishing the action in progress, then exiting")  # fmt: skip
            self.stopping.set()
        else:
            return
        self.triggers.wake.set()

    def _reload(self) -> None:
        self.reload.clear()
        sdnotify.notify(reloading=True, status="reloading configuration")
        try:
            settings = load_settings(config_path=self.config_path, overrides=self.overrides)
        except ConfigError as exc:
            self.log.error("config.reload_failed", error=str(exc), kept="previous configuration")
        else:
            uri_changed = settings.uri != self.settings.uri
            source_changed = settings.git_source != self.settings.git_source
            self.settings = settings
            if source_changed:
                self.poller = self._make_poller()
                if self.poller is None and self._observer is None:
                    self._watch_files()  # from a git source back to the manifest directory
            if self.reconciler is not None:
                self.reconciler.options = self._pass_options()
            if uri_changed:
                self.connection_lost.set()
            self.log.info("config.reloaded", file=str(settings.config_file))
            self._follow_root()
        sdnotify.notify(ready=True, status="reloaded")
        self.triggers.request("configuration reloaded", 0)

    def _start_watchdog_pings(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return

        def ping() -> None:
            while not self.stopping.is_set():
                if time.monotonic() - self.heartbeat < MAX_STALL:
                    sdnotify.notify(watchdog=True)
                self.stopping.wait(interval)

        threading.Thread(target=ping, name="watchdog", daemon=True).start()

    # -- metrics (metrics.py) ------------------------------------------------------------

    def _serve_metrics(self) -> None:
        """The Prometheus endpoint at ``metricsAddress``; a port in use is logged, not fatal:
        converging matters more (and Prometheus then says the target is down)."""
        address = self.settings.metrics_address
        if address is None:
            return
        try:
            host, port = self.metrics.serve(address)
        except ConfigError as exc:
            self.log.error("metrics.listen_failed", error=str(exc))
            return
        self.log.info("metrics.listening", address=address, port=port, host=host)

    def _write_textfile(self) -> None:
        path = self.settings.metrics_textfile
        if path is None:
            return
        try:
            self.metrics.write_textfile(path)
        except OSError as exc:
            self.log.error("metrics.textfile_failed", path=str(path), error=str(exc))


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the signal is handled by ``Daemon._on_signal``."""


def _outcome(result: PassResult, *, stopping: bool) -> str:
    """``ok``, ``failed``, or ``interrupted`` (SIGTERM: the actions after the current one
    were left for the next run, which is not a failure of theirs)."""
    if not result.failed:
        return "ok"
    left = [r.outcome == "skipped" and r.error == "stopping" for r in result.results]
    others = any(r.outcome != "ok" and not was_left
                 for r, was_left in zip(result.results, left, strict=True))  # fmt: skip
    interrupted = stopping and any(left) and not others
    broken = result.load.problems or result.plan.has_errors or result.unsettled
    return "interrupted" if interrupted and not broken else "failed"


def _relevant(path: str, root: Path) -> bool:
    """Whether a changed path can affect the manifests (not .git, not editor litter)."""
    parts = Path(path).parts
    if any(p.startswith(".") for p in parts[len(Path(os.path.realpath(root)).parts) :]):
        return Path(path).name == root.name  # the root link itself being swapped
    name = os.path.basename(path)
    return is_manifest_file(name) or "." not in name  # a file, or a folder moved/removed


def _object_statuses(
    result: PassResult,
    now: datetime,
    revision: str | None,
    *,
    failing: AbstractSet[str] = frozenset(),
    recreated: AbstractSet[str] = frozenset(),
    edited: AbstractSet[str] = frozenset(),
) -> list[ObjectStatus]:
    """Per object, its state after the pass. ``failing``: keys whose last attempt failed
    and that wait out their backoff; they stay *failed* while skipped, not *pending*.
    Manifests that failed to load are failed objects too (passstatus.py)."""
    results = {r.action.key: r for r in result.results}
    after = {a.key: a for a in result.after.actions} if result.after is not None else {}
    statuses = []
    for action in result.plan.actions:
        if action.op in (Op.DELETE, Op.FORGET):
            continue
        final = after.get(action.key, action)
        r = results.get(action.key)
        if action.op is Op.CONFLICT:
            state, message = ObjectState.CONFLICT, action.reason
        elif action.refused:
            state, message = ObjectState.FAILED, action.reason
        elif r is not None and (
            r.outcome == "failed" or (r.outcome == "skipped" and action.key in failing)
        ):
            state, message = ObjectState.FAILED, r.error
        elif r is not None and r.outcome == "skipped":
            state, message = ObjectState.PENDING, r.error
        elif final.restart_pending:
            state = ObjectState.RESTART_PENDING
            message = "restart pending: " + ", ".join(c.said for c in final.restart_pending)
            unsettled = [c for c in final.restart_pending if is_unsettled(c)]
            if unsettled:  # a restart did not settle it: said, and not restarted again
                message += "; unsettled (a bug, not restarted again): " + "; ".join(
                    f"{c.said} is {c.old!r}, wanted {c.new!r}" for c in unsettled
                )
        elif r is not None and action.op is not Op.CREATE and action.key in edited:
            # the manifest was edited and applied: in sync, not drift healed
            state = ObjectState.IN_SYNC
            message = "applied: " + ", ".join(c.said for c in action.changes)[:300]
        elif r is not None and action.op is not Op.CREATE:
            state = ObjectState.HEALED
            message = "changed: " + ", ".join(c.said for c in action.changes)[:300]
        elif r is not None and action.key in recreated:
            state = ObjectState.HEALED
            message = "recreated: it was missing from libvirt"
        else:
            state, message = ObjectState.IN_SYNC, ""
        statuses.append(ObjectStatus(action.kind.value, action.name, state, message, now, revision))
    return passstatus.with_load_failures(statuses, result.load.problems, now, revision)


# the same objects for the status that a one-shot apply writes (cli.py)
object_statuses = _object_statuses
