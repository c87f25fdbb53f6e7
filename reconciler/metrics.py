"""Prometheus metrics of the daemon: one registry, fed at pass end, served over HTTP.

``Metrics`` owns a ``prometheus_client`` registry of its own (not the
library's global one, so a test can make several) and the metric objects
in it. The daemon calls it at the points where it already reports: after
each status write (``status_written``: objects by kind and state, libvirt
up, the applied revision), after each pass (``pass_done``: actions, drift,
duration, the last successful pass), when a pass fails as a whole
(``pass_failed``). The git source (gitsource.py, through the daemon) calls
``git_fetch_failed`` on each failed fetch, and its commit reaches
``reconciler_applied_revision_info``
through the status report's ``revision``.

``serve`` starts prometheus_client's HTTP server (a daemon thread) on the
configured ``host:port``; ``write_textfile`` writes the node_exporter
textfile format atomically. Names, labels and meanings: docs/metrics.md.
Nothing here talks to libvirt or decides anything.
"""

from __future__ import annotations

import platform
import time
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler import __version__, statedir
from reconciler.atomicfile import write_atomically
from reconciler.drift import Cause
from reconciler.errors import ConfigError
from reconciler.model import Kind
from reconciler.plan import ActionResult
from reconciler.status import ObjectState, StatusReport

# a pass of a converged host takes well under a second; a first apply of hundreds of VMs,
# or graceful shutdowns, minutes
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
KINDS = tuple(k.value for k in Kind)


class _Objects(Collector):
    """``reconciler_objects``: a snapshot replaced whole after each status write, so a
    scrape never sees half of one pass and half of the next. Every kind and state is
    exported, 0 included, so that ``sum by (state)`` and alerts on 0 need no ``or``."""

    def __init__(self) -> None:
        self.counts: Mapping[tuple[str, str], int] = {
            (kind, state.value): 0 for kind in KINDS for state in ObjectState
        }

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "reconciler_objects",
            "Objects the manifests declare, by kind and state "
            f"(the states of {statedir.STATUS}).",
            labels=["kind", "state"],
        )
        for (kind, state), count in sorted(self.counts.items()):
            family.add_metric([kind, state], count)
        yield family

    def update(self, report: StatusReport) -> None:
        counts: dict[tuple[str, str], int] = {
            (kind, state.value): 0 for kind in KINDS for state in ObjectState
        }
        counts.update(Tally((o.kind, o.state.value) for o in report.objects))
        self.counts = counts  # one assignment: the scrape thread sees old or new


class Metrics:
    """The daemon's metrics; every method is cheap and never raises for a bad value."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # no <name>_created series beside every counter: a second line per series that
        # PromQL does not use (a process-wide switch of the library; idempotent)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds, memory, CPU, open files
        self.objects = _Objects()
        r.register(self.objects)
        self.drift_detected = Counter(
            "reconciler_drift_detected", "Objects found drifted from the manifest last applied "
            "(libvirt changed out of band, the manifest did not).", ["kind"], registry=r)
        self.drift_healed = Counter(
            "reconciler_drift_healed", "Drifted objects put back by the pass that found them.",
            ["kind"], registry=r)
        self.actions = Counter(
            "reconciler_actions", "Actions carried out, by kind, operation (plan op: create, "
            "update-live, update-restart, replace, delete, forget) and outcome (ok, failed, "
            "skipped).", ["kind", "op", "outcome"], registry=r)
        self.passes = Counter(
            "reconciler_passes", "Reconcile passes, by outcome: ok, failed (an object failed), "
            "interrupted (SIGTERM), error (the pass failed as a whole).", ["outcome"], registry=r)
        self.pass_duration = Histogram(
            "reconciler_pass_duration_seconds", "Time a reconcile pass took, load to settled.",
            buckets=PASS_BUCKETS, registry=r)
        self.last_success = Gauge(
            "reconciler_last_successful_pass_timestamp_seconds", "When the last pass that ran "
            "to its end finished (Unix time); objects that failed in it are in "
            "reconciler_objects.", registry=r)
        self.libvirt_up = Gauge(
            "reconciler_libvirt_up", "1 when libvirt answered at the last attempt, else 0.",
            registry=r)
        self.revision = Info(
            "reconciler_applied_revision", "Source revision (git commit) of the manifests of "
            "the last pass; empty when not known.", registry=r)
        self.git_fetch_failures = Counter(
            "reconciler_git_fetch_failures", "Failed fetches of the git source (set by the git "
            "source; 0 while the manifests come from a plain folder).", registry=r)
        self.git_refused = Counter(
            "reconciler_git_commits_refused", "Commits of the git source refused (unsigned, "
            "signed by a key not allowed, a force push off the applied commit, a missing path); "
            "the last good commit stays applied.", registry=r)
        self.build = Info("reconciler_build", "The running reconciler.", registry=r)
        self.build.info({"version": __version__, "python": platform.python_version()})
        self.revision.info({"revision": ""})
        self.libvirt_up.set(0)
        for kind in KINDS:  # exported from the start, at 0: rate() needs the first sample
            self.drift_detected.labels(kind)
            self.drift_healed.labels(kind)
        for outcome in ("ok", "failed", "interrupted", "error"):
            self.passes.labels(outcome)
        self._server: Any = None

    # -- fed by the daemon ----------------------------------------------------------

    def status_written(self, report: StatusReport) -> None:
        """What a status report says: objects by kind and state, libvirt up, revision."""
        self.objects.update(report)
        self.libvirt_up.set(1 if report.connected else 0)
        self.revision.info({"revision": report.revision or ""})

    def pass_done(
        self,
        results: Iterable[ActionResult],
        causes: Mapping[str, Cause],
        *,
        duration: float,
        outcome: str,
        unsettled: Iterable[str] = (),
        now: float | None = None,
    ) -> None:
        """A pass that ran to its end: its actions, the drift it found and healed (``causes``
        by action key, drift.causes), its duration and outcome (ok, failed, interrupted)."""
        still = set(unsettled)
        ok = set()
        for r in results:
            self.actions.labels(r.action.kind.value, r.action.op.value, r.outcome).inc()
            if r.outcome == "ok" and r.action.key not in still:
                ok.add(r.action.key)
        for key, why in causes.items():
            if why is Cause.DRIFT:
                kind = key.split("/", 1)[0]
                self.drift_detected.labels(kind).inc()
                if key in ok:
                    self.drift_healed.labels(kind).inc()
        self.pass_duration.observe(duration)
        self.passes.labels(outcome).inc()
        self.last_success.set(time.time() if now is None else now)

    def pass_failed(self, duration: float) -> None:
        """A pass that failed as a whole (libvirt lost, manifest directory refused)."""
        self.pass_duration.observe(duration)
        self.passes.labels("error").inc()

    def git_fetch_failed(self) -> None:
        """For the git source: one fetch of the repository failed."""
        self.git_fetch_failures.inc()

    def git_commit_refused(self) -> None:
        """For the git source: a fetched commit was refused (verification, history)."""
        self.git_refused.inc()

    # -- exposition -----------------------------------------------------------------

    def serve(self, address: str) -> tuple[str, int]:
        """Serve ``GET /metrics`` on ``address`` (``host:port``; port 0: any free one) from
        a daemon thread; returns the address bound. ``ConfigError`` if it cannot listen."""
        host, port = split_address(address)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"metricsAddress {address}: cannot listen: {exc.strerror or exc} "
                "(set another address, or metricsAddress: off)"
            ) from None
        self._server = server
        bound = server.server_address
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def write_textfile(self, path: Path) -> None:
        """The node_exporter textfile format, replaced atomically
        (atomicfile.write_atomically; mode 0644 when new, so node_exporter can read it).
        ``OSError`` when it cannot."""
        write_atomically(path, generate_latest(self.registry), mode=0o644)


def split_address(address: str) -> tuple[str, int]:
    """``127.0.0.1:9731`` -> ("127.0.0.1", 9731); ``[::1]:9731`` -> ("::1", 9731)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
