"""A refused start, remembered: the executor keeps it in the VM's inventory entry,
the planner shows it on the VM's ``state`` change (text and JSON), and it goes once
the VM runs. No libvirt: a fake hypervisor and the planner's own snapshots."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import inventory as inventory_file
from reconciler.errors import Refused, SourcePosition
from reconciler.executor import Executor
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import Action, DefineDomain, Op, Plan, RestartDomain, StartDomain
from reconciler.report import plan_json, render_plan, render_results, results_json
from reconciler.snapshot import DomainRecord, Observed
from tests.unit.conftest import WriteFiles
from tests.unit.test_executor_batches import FakeLog
from tests.unit.test_planner import action, converged, load, plan_for

REFUSAL = (
    "internal error: process exited while connecting to monitor: 2026-11-30T08:50:18.996624Z "
    "qemu-system-x86_64: -blockdev {}: Could not open '/srv/images/root': Permission denied"
)
SOURCE = SourcePosition("vms/web.yaml", 3, 1)
WHEN = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


class StartingHypervisor:
    """Starts domains, or refuses with ``REFUSAL`` while ``refuse`` is set."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.started: list[str] = []

    def define_domain(self, xml: str, current: str | None = None) -> None:
        pass

    def start_domain(self, name: str) -> None:
        if self.refuse:
            raise Refused(f"starting domain {name}: {REFUSAL}")
        self.started.append(name)

    def domain_active(self, name: str) -> bool:
        return False


def start(name: str = "web") -> Action:
    record = {"manifest": "vms/web.yaml", "digest": "sha256:x", "shutdownTimeout": 1.0}
    return Action(Kind.VIRTUAL_MACHINE, name, Op.UPDATE_LIVE, steps=(StartDomain(),),
                  source=SOURCE, owner_record=record)  # fmt: skip


def run(hv: StartingHypervisor, state: Path, lines: list[Any] | None = None) -> Any:
    inventory = inventory_file.load(state)
    ex = Executor(hv, inventory, state, log=FakeLog([] if lines is None else lines),  # type: ignore[arg-type]
                  now=lambda: WHEN)  # fmt: skip
    [result] = ex.apply(Plan((start(),)))
    return result


def test_a_refused_start_is_explained_and_remembered(tmp_path: Path) -> None:
    lines: list[Any] = []
    result = run(StartingHypervisor(refuse=True), tmp_path, lines)
    assert result.outcome == "failed" and result.failed_step == "start-domain"
    # the message: manifest position, libvirt's text, the hint
    assert result.error.startswith("vms/web.yaml:3:1: start-domain: starting domain web: ")
    assert "Could not open '/srv/images/root': Permission denied; QEMU runs as" in result.error
    assert result.explanation is not None and "chmod 0755 /srv/images" in result.explanation.hint
    # logs, apply output and JSON results carry it
    [(_event, fields)] = [x for x in lines if x[0] == "apply.action"]
    assert fields["error"] == result.error and fields["hint"] == result.explanation.hint
    assert result.error in render_results([result])
    [shown] = results_json([result], [])["results"]
    assert shown["error"] == result.error and shown["hint"] == result.explanation.hint
    # the inventory entry keeps it, written atomically with the rest of the entry
    entry = inventory_file.load(tmp_path).get("VirtualMachine/web")
    assert entry is not None and entry["digest"] == "sha256:x"
    assert entry[inventory_file.START_FAILURE] == {
        "error": result.error,
        "message": f"start-domain: starting domain web: {REFUSAL}",
        "hint": result.explanation.hint,
        "field": "",
        "at": "2026-11-30T09:00:00Z",
    }
    assert not list(tmp_path.glob(".inventory.json.*"))  # no temporary left behind


def test_a_start_that_works_forgets_the_failure(tmp_path: Path) -> None:
    run(StartingHypervisor(refuse=True), tmp_path)
    hv = StartingHypervisor(refuse=False)
    assert run(hv, tmp_path).outcome == "ok" and hv.started == ["web"]
    entry = inventory_file.load(tmp_path).get("VirtualMachine/web")
    assert entry is not None and inventory_file.START_FAILURE not in entry


def test_a_failed_define_is_explained_but_is_no_start_failure(tmp_path: Path) -> None:
    class Refusing(StartingHypervisor):
        def define_domain(self, xml: str, current: str | None = None) -> None:
            raise Refused("defining domain: internal error: Failed to reserve port 5902")

    define = dataclasses.replace(start(), op=Op.CREATE,
                                 steps=(DefineDomain("<domain/>"),
                                        StartDomain()))  # fmt: skip
    ex = Executor(Refusing(refuse=False), Inventory(), tmp_path, log=FakeLog([]))  # type: ignore[arg-type]
    [result] = ex.apply(Plan((define,)))
    assert result.failed_step == "define-domain"
    assert result.error.startswith("vms/web.yaml:3:1: define-domain: defining domain: ")
    assert "graphics.port: auto" in result.error
    entry = inventory_file.load(tmp_path).get("VirtualMachine/web")
    assert entry is not None and inventory_file.START_FAILURE not in entry


# --- the planner shows it --------------------------------------------------------


def failed_start(observed: Observed, *, running: bool) -> Observed:
    """``observed`` with VM web stopped (or running) and a start failure in its entry."""
    dom = observed.domains["web"]
    dom = DomainRecord(dom.name, dom.uuid, running, dom.autostart, dom.config_xml,
                       dom.config_xml if running else None)  # fmt: skip
    record = inventory_file.start_failure("vms/web.yaml:3:1: start-domain: no; fix it", None,
                                          WHEN)  # fmt: skip
    objects = dict(observed.inventory.objects)
    objects["VirtualMachine/web"] = {**objects["VirtualMachine/web"],
                                     inventory_file.START_FAILURE: record}  # fmt: skip
    return dataclasses.replace(observed, domains={**observed.domains, "web": dom},
                               inventory=Inventory(objects))  # fmt: skip


def test_the_plan_shows_the_cause_on_the_state_change(write: WriteFiles) -> None:
    result = load(write)
    plan = plan_for(result, failed_start(converged(result), running=False))
    web = action(plan, Kind.VIRTUAL_MACHINE, "web")
    [state] = [c for c in web.changes if c.path == "state"]
    assert (state.old, state.new) == ("stopped", "running")
    note = "last start failed at 2026-11-30T09:00:00Z: vms/web.yaml:3:1: start-domain: no; fix it"
    assert state.note == note
    text = render_plan(plan)
    assert f"    state: stopped -> running (live)\n      {note}\n" in text
    [shown] = [a for a in plan_json(plan)["actions"] if a["name"] == "web"]
    assert {"path": "state", "old": "stopped", "new": "running", "live": True, "origin": None,
            "note": note} in shown["changes"]  # fmt: skip
    assert all("note" not in c for a in plan_json(plan)["actions"] for c in a["changes"]
               if c["path"] != "state")  # fmt: skip
    # carried in the owner record, so that an apply skipped by backoff keeps it
    assert web.owner_record is not None
    assert web.owner_record[inventory_file.START_FAILURE]["at"] == "2026-11-30T09:00:00Z"


def test_a_running_vm_shows_no_cause_and_drops_it(write: WriteFiles) -> None:
    result = load(write)
    plan = plan_for(result, failed_start(converged(result), running=True))
    web = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert not plan.has_changes and web.op is Op.NOOP
    assert web.owner_record is not None and inventory_file.START_FAILURE not in web.owner_record
    assert "last start failed" not in render_plan(plan, verbose=True)


def test_a_vm_meant_to_stay_stopped_drops_it(write: WriteFiles) -> None:
    result = load(write, STACK_STOPPED)
    plan = plan_for(result, failed_start(converged(result, running=False), running=False))
    web = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert web.owner_record is not None and inventory_file.START_FAILURE not in web.owner_record


def _stopped_stack() -> str:
    from tests.unit.test_planner import STACK

    return STACK.replace("  state: running\n", "  state: stopped\n")


STACK_STOPPED = _stopped_stack()


# --- reconciler status --------------------------------------------------------------


def test_status_shows_the_explained_failure(write: WriteFiles, tmp_path: Path) -> None:
    from reconciler.daemon import _object_statuses
    from reconciler.reconcile import PassResult
    from reconciler.status import ObjectState

    result = run(StartingHypervisor(refuse=True), tmp_path)
    loaded = load(write)
    plan = Plan((result.action,))
    now = datetime.now(UTC)
    [status] = _object_statuses(PassResult(loaded, plan, (result,)), now, None)
    assert status.state is ObjectState.FAILED and status.message == result.error
    assert "vms/web.yaml:3:1" in status.message and "chmod 0755 /srv/images" in status.message


def test_a_restart_whose_start_is_refused_is_a_start_failure(tmp_path: Path) -> None:
    restart = dataclasses.replace(start(), op=Op.UPDATE_RESTART,
                                  steps=(RestartDomain(1.0),))  # fmt: skip
    ex = Executor(StartingHypervisor(refuse=True), Inventory(), tmp_path, log=FakeLog([]),  # type: ignore[arg-type]
                  now=lambda: WHEN)  # fmt: skip
    [result] = ex.apply(Plan((restart,)))
    assert result.failed_step == "start-domain"
    assert result.error.startswith("vms/web.yaml:3:1: restart-domain timeout=1.0: starting ")
    assert "QEMU runs as user libvirt-qemu" in result.error
    entry = inventory_file.load(tmp_path).get("VirtualMachine/web")
    assert entry is not None and entry[inventory_file.START_FAILURE]["error"] == result.error
