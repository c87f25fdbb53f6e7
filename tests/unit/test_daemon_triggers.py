"""The daemon's triggers: debounce of file events, and retry timers that survive passes."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.daemon import Daemon, Triggers
from reconciler.settings import Settings


def test_file_events_push_the_pass_back_up_to_the_cap() -> None:
    t = Triggers()
    t.request("file a", 0.3, max_delay=3.0)
    first = t.due
    assert first is not None
    time.sleep(0.05)
    t.request("file b", 0.3, max_delay=3.0)
    assert t.due is not None and t.due > first  # pushed back
    assert t.take() is None  # not due yet


def test_a_pending_retry_does_not_cut_the_debounce_short() -> None:
    t = Triggers()
    t.request("retry VirtualMachine/x", 100.0)
    if t.first is not None:  # as if that retry had been requested a minute ago
        t.first -= 60
    t.request("file a", 0.3, max_delay=3.0)
    wait = t.seconds_until_due()
    assert wait is not None and wait > 0.2, "a file event must still be debounced"


def _result(*outcomes: tuple[str, str], stale: bool = False) -> Any:
    results = tuple(
        SimpleNamespace(action=SimpleNamespace(key=key), outcome=outcome, error="boom",
                        stale=stale)
        for key, outcome in outcomes
    )
    return SimpleNamespace(results=results)


def test_retry_timer_is_set_again_after_a_pass_that_skipped_the_object() -> None:
    daemon = Daemon(Settings(host="h"))
    daemon._note_failures(_result(("VirtualMachine/bad", "failed")))
    assert daemon.triggers.take() is None  # due in 5 s
    daemon.triggers.request("VirtualMachine good started", 0)
    assert daemon.triggers.take() is not None  # an unrelated pass consumes the triggers...
    daemon._note_failures(_result(("VirtualMachine/bad", "skipped")))  # ...skipping it (backoff)
    wait = daemon.triggers.seconds_until_due()
    assert wait is not None and 3 < wait <= 5  # the retry is still coming
    assert daemon.triggers.reasons == ["retry VirtualMachine/bad"]


def test_a_definition_changed_since_the_plan_is_planned_again_at_once_then_backs_off() -> None:
    daemon = Daemon(Settings(host="h"))
    daemon._note_failures(_result(("VirtualMachine/x", "failed"), stale=True))
    assert daemon.triggers.take() is not None  # the next pass is due now, and re-plans
    assert daemon._in_backoff(SimpleNamespace(key="VirtualMachine/x")) is None  # type: ignore[arg-type]
    # changed under us again: from now on, the backoff of any failure
    daemon._note_failures(_result(("VirtualMachine/x", "failed"), stale=True))
    assert daemon.triggers.take() is None
    wait = daemon.triggers.seconds_until_due()
    assert wait is not None and 3 < wait <= 5
    assert daemon._in_backoff(SimpleNamespace(key="VirtualMachine/x")) is not None  # type: ignore[arg-type]


def test_objects_no_longer_acted_on_leave_the_backoff() -> None:
    daemon = Daemon(Settings(host="h"))
    daemon._note_failures(_result(("VirtualMachine/bad", "failed")))
    assert set(daemon.failures) == {"VirtualMachine/bad"}
    daemon._note_failures(_result())  # in sync now (fixed by hand), or its manifest is gone
    assert daemon.failures == {}


def test_a_refused_manifest_directory_is_not_read_not_even_its_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The permission check comes before the first read of the directory's .git."""
    from reconciler import daemon as daemon_module
    from reconciler.status import read_status

    manifests = tmp_path / "manifests"
    (manifests / ".git").mkdir(parents=True)
    (manifests / ".git").chmod(0o777)
    read: list[Path] = []
    monkeypatch.setattr(daemon_module, "source_revision", lambda d: read.append(d) or "x")
    daemon = Daemon(Settings(host="h", manifest_dir=manifests, state_dir=tmp_path / "state"))
    daemon.reconciler = object()  # type: ignore[assignment]  # never reached
    daemon._pass(["test"])
    assert read == []
    report = read_status(tmp_path / "state")
    assert report is not None and report.last_error is not None
    assert f"{manifests / '.git'} is writable by others" in report.last_error


def test_an_applied_manifest_edit_is_in_sync_and_drift_put_back_is_healed() -> None:
    """status: 'healed' means libvirt had drifted and was put back; a manifest edit that
    was applied is in sync ('applied: ...'), as the logs call it a change."""
    from datetime import UTC, datetime

    from reconciler.daemon import object_statuses
    from reconciler.manifests import LoadResult
    from reconciler.model import Kind
    from reconciler.plan import Action, ActionResult, Change, Op, Plan
    from reconciler.reconcile import PassResult
    from reconciler.status import ObjectState

    edit = Action(Kind.VIRTUAL_MACHINE, "web", Op.UPDATE_LIVE, (Change("memory", 1, 2, True),))
    drifted = Action(Kind.VIRTUAL_MACHINE, "db", Op.UPDATE_LIVE, (Change("state", "a", "b"),))
    plan = Plan((edit, drifted))
    results = tuple(ActionResult(a, "ok", 0.1) for a in plan.actions)
    result = PassResult(LoadResult("m", (), (), ()), plan, results, (), Plan(()))
    states = {s.name: (s.state, s.message) for s in object_statuses(
        result, datetime.now(UTC), None, edited={"VirtualMachine/web"})}  # fmt: skip
    assert states == {"web": (ObjectState.IN_SYNC, "applied: memory"),
                      "db": (ObjectState.HEALED, "changed: state")}  # fmt: skip


def test_an_unreachable_libvirtd_is_retried_as_the_reconnect_backoff_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 s after the first refused connect, then every 2 s (backoff.RECONNECT), and the
    status file says why meanwhile."""
    from reconciler.backoff import RECONNECT
    from reconciler.errors import HypervisorError
    from reconciler.status import read_status

    attempts: list[float] = []

    def refuse(_uri: str) -> Any:
        attempts.append(time.monotonic())
        if len(attempts) == 4:
            daemon.stopping.set()
            daemon.triggers.wake.set()
        raise HypervisorError("cannot connect: Connection refused")

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    daemon = Daemon(Settings(host="h", manifest_dir=manifests, state_dir=tmp_path / "state"),
                    connect=refuse)  # fmt: skip
    monkeypatch.setattr(daemon, "_install_signals", lambda: None)
    assert daemon.run() == 0
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    expected = [RECONNECT.delay(n) for n in (1, 2, 3)]
    assert expected == [1.0, 2.0, 2.0]
    assert all(want - 0.05 <= gap <= want + 0.5 for gap, want in zip(gaps, expected, strict=True))
    report = read_status(tmp_path / "state")
    assert report is not None and not report.connected
    assert "Connection refused" in (report.last_error or "")


def test_status_names_a_disk_as_the_manifest_does_with_its_image() -> None:
    """status: 'applied: disks[1].bus (/var/lib/x-data.img)', not the identity path
    'disks[/var/lib/x-data.img].bus' that plans never show."""
    from datetime import UTC, datetime

    from reconciler.daemon import object_statuses
    from reconciler.manifests import LoadResult
    from reconciler.model import Kind
    from reconciler.plan import Action, ActionResult, Change, Op, Plan
    from reconciler.reconcile import PassResult

    change = Change("disks[/var/lib/x-data.img].bus", "virtio", "sata",
                    where="disks[1].bus")
    edit = Action(Kind.VIRTUAL_MACHINE, "web", Op.UPDATE_RESTART, (change,))
    plan = Plan((edit,))
    result = PassResult(LoadResult("m", (), (), ()), plan, (ActionResult(edit, "ok", 0.1),),
                        (), Plan(()))
    (status,) = object_statuses(result, datetime.now(UTC), None, edited={"VirtualMachine/web"})
    assert status.message == "applied: disks[1].bus (/var/lib/x-data.img)"
