"""metrics.py and drift.py: the values after a synthetic pass, the exposition, the textfile,
the endpoint on loopback; a manifest edit is a change, libvirt moving is drift."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from reconciler.drift import Cause, cause, causes
from reconciler.errors import ConfigError
from reconciler.inventory import Inventory
from reconciler.metrics import Metrics, split_address
from reconciler.model import Kind
from reconciler.plan import Action, ActionResult, Change, DefineDomain, Op, Plan, UndefineDomain
from reconciler.status import ObjectState, ObjectStatus, StatusReport

NOW = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


def action(kind: Kind, name: str, op: Op, digest: str = "sha256:new") -> Action:
    steps = (DefineDomain("<domain/>"),) if op is not Op.NOOP else ()
    return Action(kind, name, op, changes=(Change("memory", 1, 2),) if steps else (),
                  steps=steps, owner_record={"digest": digest})  # fmt: skip


def report(*states: tuple[str, str, ObjectState], connected: bool = True,
           revision: str | None = "3f9c2e1") -> StatusReport:  # fmt: skip
    return StatusReport(
        written_at=NOW, daemon_pid=1, revision=revision, reconcile_count=1, last_duration=0.5,
        objects=tuple(ObjectStatus(k, n, s, "", NOW) for k, n, s in states),
        connected=connected,
    )  # fmt: skip


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry, as the exposition text says it (parsed back)."""
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


# --- drift.py ---------------------------------------------------------------------------


def test_a_manifest_edit_is_a_change_and_libvirt_moving_is_drift() -> None:
    inventory = Inventory({"VirtualMachine/web": {"digest": "sha256:old"},
                           "VirtualMachine/db": {"digest": "sha256:same"},
                           "Network/lab": {"digest": "sha256:same"}})  # fmt: skip
    edited = action(Kind.VIRTUAL_MACHINE, "web", Op.UPDATE_LIVE, "sha256:new")
    drifted = action(Kind.VIRTUAL_MACHINE, "db", Op.UPDATE_LIVE, "sha256:same")
    recreated = action(Kind.NETWORK, "lab", Op.CREATE, "sha256:same")  # undefined out of band
    new = action(Kind.VIRTUAL_MACHINE, "new", Op.CREATE)
    gone = Action(Kind.VIRTUAL_MACHINE, "old", Op.DELETE, steps=(UndefineDomain(),))
    same = action(Kind.VIRTUAL_MACHINE, "calm", Op.NOOP, "sha256:same")
    assert cause(edited, inventory) is Cause.CHANGE
    assert cause(drifted, inventory) is Cause.DRIFT
    assert cause(recreated, inventory) is Cause.DRIFT
    assert cause(new, inventory) is Cause.CREATE
    assert cause(gone, inventory) is Cause.REMOVAL
    assert cause(same, inventory) is Cause.NONE
    plan = Plan((edited, drifted, same))
    assert causes(plan, inventory) == {"VirtualMachine/web": Cause.CHANGE,
                                       "VirtualMachine/db": Cause.DRIFT}  # fmt: skip


# --- metrics.py: values after a synthetic pass -----------------------------------------


def test_values_after_a_pass() -> None:
    m = Metrics()
    m.status_written(report(
        ("VirtualMachine", "web", ObjectState.IN_SYNC),
        ("VirtualMachine", "db", ObjectState.FAILED),
        ("VirtualMachine", "app", ObjectState.RESTART_PENDING),
        ("Network", "lab", ObjectState.HEALED),
        ("StoragePool", "images", ObjectState.IN_SYNC),
    ))  # fmt: skip
    healed = action(Kind.NETWORK, "lab", Op.UPDATE_LIVE)
    failed = action(Kind.VIRTUAL_MACHINE, "db", Op.CREATE)
    m.pass_done(
        [ActionResult(healed, "ok"), ActionResult(failed, "failed", error="boom")],
        {"Network/lab": Cause.DRIFT, "VirtualMachine/db": Cause.CREATE},
        duration=0.7, outcome="failed", now=1764493200.0,
    )  # fmt: skip
    assert value(m, "reconciler_objects", kind="VirtualMachine", state="in-sync") == 1
    assert value(m, "reconciler_objects", kind="VirtualMachine", state="failed") == 1
    assert value(m, "reconciler_objects", kind="VirtualMachine", state="restart-pending") == 1
    assert value(m, "reconciler_objects", kind="Network", state="healed") == 1
    assert value(m, "reconciler_objects", kind="Volume", state="conflict") == 0  # zeros too
    assert value(m, "reconciler_drift_detected_total", kind="Network") == 1
    assert value(m, "reconciler_drift_healed_total", kind="Network") == 1
    assert value(m, "reconciler_drift_detected_total", kind="VirtualMachine") == 0
    assert value(m, "reconciler_actions_total", kind="Network", op="update-live",
                 outcome="ok") == 1  # fmt: skip
    assert value(m, "reconciler_actions_total", kind="VirtualMachine", op="create",
                 outcome="failed") == 1  # fmt: skip
    assert value(m, "reconciler_passes_total", outcome="failed") == 1
    assert value(m, "reconciler_pass_duration_seconds_count") == 1
    assert value(m, "reconciler_pass_duration_seconds_bucket", le="1.0") == 1
    assert value(m, "reconciler_pass_duration_seconds_bucket", le="0.5") == 0
    assert value(m, "reconciler_last_successful_pass_timestamp_seconds") == 1764493200.0
    assert value(m, "reconciler_libvirt_up") == 1
    assert value(m, "reconciler_applied_revision_info", revision="3f9c2e1") == 1
    assert value(m, "reconciler_git_fetch_failures_total") == 0
    build = [k for k in samples(m) if k[0] == "reconciler_build_info"]
    assert len(build) == 1 and ("version", "0.1.0") in build[0][1]


def test_drift_that_did_not_settle_is_not_healed() -> None:
    m = Metrics()
    drifted = action(Kind.VIRTUAL_MACHINE, "db", Op.UPDATE_LIVE)
    m.pass_done([ActionResult(drifted, "ok")], {"VirtualMachine/db": Cause.DRIFT},
                duration=0.1, outcome="failed", unsettled=["VirtualMachine/db"])  # fmt: skip
    assert value(m, "reconciler_drift_detected_total", kind="VirtualMachine") == 1
    assert value(m, "reconciler_drift_healed_total", kind="VirtualMachine") == 0


def test_a_new_report_replaces_the_counts_and_the_revision() -> None:
    m = Metrics()
    m.status_written(report(("VirtualMachine", "web", ObjectState.FAILED)))
    m.status_written(report(("VirtualMachine", "web", ObjectState.IN_SYNC),
                            connected=False, revision="abc1234"))  # fmt: skip
    assert value(m, "reconciler_objects", kind="VirtualMachine", state="failed") == 0
    assert value(m, "reconciler_objects", kind="VirtualMachine", state="in-sync") == 1
    assert value(m, "reconciler_libvirt_up") == 0
    revisions = [k for k in samples(m) if k[0] == "reconciler_applied_revision_info"]
    assert revisions == [("reconciler_applied_revision_info", (("revision", "abc1234"),))]


def test_a_failed_pass_and_the_git_hook() -> None:
    m = Metrics()
    m.pass_failed(0.2)
    m.git_fetch_failed()
    m.git_fetch_failed()
    assert value(m, "reconciler_passes_total", outcome="error") == 1
    assert value(m, "reconciler_passes_total", outcome="ok") == 0
    assert value(m, "reconciler_git_fetch_failures_total") == 2
    assert value(m, "reconciler_last_successful_pass_timestamp_seconds") == 0


def test_registries_are_separate() -> None:
    a, b = Metrics(), Metrics(CollectorRegistry())
    a.git_fetch_failed()
    assert value(a, "reconciler_git_fetch_failures_total") == 1
    assert value(b, "reconciler_git_fetch_failures_total") == 0


# --- exposition ---------------------------------------------------------------------------


def test_textfile_is_written_whole(tmp_path: Path) -> None:
    m = Metrics()
    m.status_written(report(("Volume", "root", ObjectState.CONFLICT)))
    path = tmp_path / "reconciler.prom"
    m.write_textfile(path)
    text = path.read_text()
    assert 'reconciler_objects{kind="Volume",state="conflict"} 1.0' in text
    assert [p.name for p in tmp_path.iterdir()] == ["reconciler.prom"]  # no temporary left


def test_endpoint_on_loopback() -> None:
    m = Metrics()
    m.status_written(report(("VirtualMachine", "web", ObjectState.IN_SYNC)))
    host, port = m.serve("127.0.0.1:0")
    try:
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'reconciler_objects{kind="VirtualMachine",state="in-sync"} 1.0' in text
        with pytest.raises(ConfigError, match=r"metricsAddress 127\.0\.0\.1:\d+: cannot listen"):
            Metrics().serve(f"127.0.0.1:{port}")  # the port is taken
    finally:
        m.close()


def test_split_address() -> None:
    assert split_address("127.0.0.1:9731") == ("127.0.0.1", 9731)
    assert split_address("[::1]:9731") == ("::1", 9731)
    assert split_address("localhost:1") == ("localhost", 1)


# --- the example alert rules --------------------------------------------------------------

ALERTS = Path(__file__).resolve().parents[2] / "systemd" / "reconciler-alerts.yml"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian's prometheus package)")
def test_promtool_accepts_the_alert_rules_and_they_fire() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout, checked.stdout
    data = Path(__file__).parent / "data"
    tested = subprocess.run([PROMTOOL, "test", "rules", "reconciler-alerts-test.yml"], cwd=data,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alert_rules_name_only_metrics_that_exist() -> None:
    import re

    rules = ALERTS.read_text()
    used = set(re.findall(r"\breconciler_[a-z_]+", rules))
    exported = {name for name, _ in samples(Metrics())}
    assert used and used <= exported, used - exported
