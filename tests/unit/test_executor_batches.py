"""Which actions the executor runs together, and that doing so keeps its promises:
plan order first, results and log lines in plan order, failures isolated,
prerequisites honoured, a stop leaves the rest alone. No libvirt: a fake hypervisor."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from reconciler.errors import Refused
from reconciler.executor import MAX_CONCURRENT, Executor, batches, concurrent
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import (
    STEPS_BY_VERB,
    Action,
    AutostartDomain,
    DefineDomain,
    DefineNetwork,
    Op,
    Plan,
    SetMemory,
    StopDomain,
    WriteSeed,
)


def vm(name: str, *verbs: str, op: Op = Op.CREATE, requires: tuple[str, ...] = ()) -> Action:
    steps = tuple(
        DefineDomain(f"<domain><name>{name}</name></domain>") if v == "define-domain"
        else StopDomain(1.0) if v == "stop-domain"
        else AutostartDomain(on=True) if v == "autostart-domain"
        else WriteSeed("p", f"{name}-cidata", "d", "<volume/>", {}) if v == "write-seed"
        else SetMemory("memory", 2**30) if v == "set-memory"
        else STEPS_BY_VERB[v]()
        for v in (verbs or ("define-domain",))
    )
    return Action(Kind.VIRTUAL_MACHINE, name, op, steps=steps, requires=requires)


def net(name: str) -> Action:
    return Action(Kind.NETWORK, name, Op.CREATE, steps=(DefineNetwork(name),))


def names(runs: list[tuple[Action, ...]]) -> list[list[str]]:
    return [[a.name for a in run] for run in runs]


# --- the scheduling, pure ------------------------------------------------------


def test_only_vms_that_just_define_run_together() -> None:
    assert concurrent(vm("a"))
    assert concurrent(vm("a", "define-domain", "autostart-domain"))
    assert concurrent(vm("a", op=Op.UPDATE_RESTART))
    assert not concurrent(vm("a", "define-domain", "start-domain"))  # boots a guest
    assert not concurrent(vm("a", "write-seed", "define-domain"))  # writes a volume
    assert not concurrent(vm("a", "stop-domain", "undefine-domain", op=Op.DELETE))
    assert not concurrent(vm("a", "set-memory"))  # live steps record refusals one at a time
    assert not concurrent(Action(Kind.VIRTUAL_MACHINE, "a", Op.NOOP))  # nothing to run
    assert not concurrent(Action(Kind.VIRTUAL_MACHINE, "a", Op.CONFLICT))
    assert not concurrent(net("n"))


def test_runs_are_consecutive_and_keep_plan_order() -> None:
    plan = [
        vm("old", "stop-domain", "undefine-domain", op=Op.DELETE),
        net("lab"),
        vm("a"),
        vm("b", "define-domain", "autostart-domain"),
        vm("c", "define-domain", "start-domain"),
        vm("d"),
        vm("e"),
        net("last"),
    ]
    runs = batches(plan)
    assert names(runs) == [["old"], ["lab"], ["a", "b"], ["c"], ["d", "e"], ["last"]]
    assert [a for run in runs for a in run] == plan


def test_a_run_never_holds_an_action_and_its_prerequisite() -> None:
    plan = [vm("a"), vm("b", requires=("VirtualMachine/a",)), vm("c"), vm("d")]
    assert names(batches(plan)) == [["a"], ["b", "c", "d"]]
    twice = [vm("a"), vm("a", op=Op.UPDATE_RESTART), vm("b")]
    assert names(batches(twice)) == [["a"], ["a", "b"]]


def test_prerequisites_outside_the_run_do_not_split_it() -> None:
    plan = [net("lab"), *(vm(f"v{i}", requires=("Network/lab",)) for i in range(5))]
    assert names(batches(plan)) == [["lab"], ["v0", "v1", "v2", "v3", "v4"]]


def test_no_actions_no_runs() -> None:
    assert batches([]) == []


# --- the executor with a fake hypervisor -----------------------------------------


class FakeHypervisor:
    """Records calls; defines may block, fail, or take a while, per domain name."""

    def __init__(self, *, delays: dict[str, float] | None = None,
                 failing: frozenset[str] = frozenset(),
                 barrier: threading.Barrier | None = None) -> None:  # fmt: skip
        self.delays = delays or {}
        self.failing = failing
        self.barrier = barrier
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def _call(self, verb: str, name: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.barrier is not None and verb == "define-domain":
                self.barrier.wait(timeout=5)  # only passes if that many run at once
            time.sleep(self.delays.get(name, 0.001))
            with self.lock:
                self.calls.append((verb, name))
            if name in self.failing:
                raise Refused(f"{verb} {name}: no")
        finally:
            with self.lock:
                self.in_flight -= 1

    def define_domain(self, xml: str, current: str | None = None) -> None:
        self._call("define-domain", xml.split("<name>")[1].split("</name>")[0])

    def set_domain_autostart(self, name: str, on: bool) -> None:
        self._call("autostart-domain", name)

    def start_domain(self, name: str) -> None:
        self._call("start-domain", name)

    def define_network(self, xml: str, current: str | None = None) -> None:
        self._call("define-network", xml)


class FakeLog:
    def __init__(self, lines: list[tuple[str, dict[str, Any]]], **bound: Any) -> None:
        self.lines = lines
        self.bound = bound

    def bind(self, **more: Any) -> FakeLog:
        return FakeLog(self.lines, **self.bound, **more)

    def _write(self, event: str, **fields: Any) -> None:
        self.lines.append((event, {**self.bound, **fields}))

    info = warning = error = _write


def executor(hv: FakeHypervisor, lines: list[tuple[str, dict[str, Any]]] | None = None,
             **kwargs: Any) -> Executor:  # fmt: skip
    return Executor(hv, Inventory(), None, log=FakeLog([] if lines is None else lines),  # type: ignore[arg-type]
                    **kwargs)  # fmt: skip


def test_defines_run_at_the_same_time() -> None:
    hv = FakeHypervisor(barrier=threading.Barrier(MAX_CONCURRENT))
    results = executor(hv).apply(Plan(tuple(vm(f"v{i}") for i in range(2 * MAX_CONCURRENT))))
    assert [r.outcome for r in results] == ["ok"] * 2 * MAX_CONCURRENT  # no barrier timed out
    assert hv.most_in_flight == MAX_CONCURRENT


def test_results_and_log_lines_follow_the_plan_not_the_finish() -> None:
    # the first VMs take longest, so they finish last
    delays = {f"v{i}": 0.002 * (8 - i) for i in range(8)}
    hv = FakeHypervisor(delays=delays)
    lines: list[tuple[str, dict[str, Any]]] = []
    plan = Plan(tuple(vm(f"v{i}") for i in range(8)))
    results = executor(hv, lines).apply(plan)
    assert [r.action.name for r in results] == [f"v{i}" for i in range(8)]
    assert [fields["name"] for event, fields in lines if event == "apply.action"] == [
        f"v{i}" for i in range(8)
    ]
    assert [name for _, name in hv.calls] != [f"v{i}" for i in range(8)]  # they did overlap


def test_a_failing_define_fails_alone() -> None:
    hv = FakeHypervisor(failing=frozenset({"v2"}))
    lines: list[tuple[str, dict[str, Any]]] = []
    results = executor(hv, lines).apply(Plan(tuple(vm(f"v{i}") for i in range(6))))
    assert [(r.action.name, r.outcome) for r in results] == [
        ("v0", "ok"), ("v1", "ok"), ("v2", "failed"), ("v3", "ok"), ("v4", "ok"), ("v5", "ok"),
    ]  # fmt: skip
    assert "v2: no" in results[2].error
    assert [f["outcome"] for e, f in lines if e == "apply.action"].count("failed") == 1


def test_other_steps_never_overlap_and_prerequisites_still_count() -> None:
    hv = FakeHypervisor(failing=frozenset({"lab"}))
    plan = Plan((
        net("lab"),
        vm("a", requires=("Network/lab",)),
        vm("b"),
        vm("c", "define-domain", "start-domain"),
        vm("d", "define-domain", "start-domain"),
    ))  # fmt: skip
    results = executor(hv).apply(plan)
    assert [(r.action.name, r.outcome) for r in results] == [
        ("lab", "failed"), ("a", "skipped"), ("b", "ok"), ("c", "ok"), ("d", "ok"),
    ]  # fmt: skip
    assert results[1].error == "needs Network/lab, which failed"
    # c and d start guests: one after the other, each defined before it is started
    assert hv.calls[-4:] == [("define-domain", "c"), ("start-domain", "c"),
                             ("define-domain", "d"), ("start-domain", "d")]  # fmt: skip


def test_a_stop_lets_the_calls_in_flight_finish_and_skips_the_rest() -> None:
    stop = threading.Event()

    class Stopping(FakeHypervisor):
        def define_domain(self, xml: str, current: str | None = None) -> None:
            super().define_domain(xml, current=current)
            stop.set()  # SIGTERM arrives during the first defines

    hv = Stopping(delays={"v0": 0.05})
    plan = Plan(tuple(vm(f"v{i}") for i in range(3 * MAX_CONCURRENT)))
    results = executor(hv, should_stop=stop.is_set).apply(plan)
    done = [r for r in results if r.outcome == "ok"]
    left = [r for r in results if r.outcome == "skipped"]
    assert 1 <= len(done) <= MAX_CONCURRENT
    assert len(done) + len(left) == len(plan.actions)
    assert all(r.error == "stopping" for r in left)
    assert [r.action.name for r in results] == [a.name for a in plan.actions]
    assert len(hv.calls) == len(done)


@pytest.mark.parametrize("skip", ["v1", "v3"])
def test_backoff_skips_only_its_own_action(skip: str) -> None:
    hv = FakeHypervisor()
    results = executor(
        hv, should_skip=lambda a: "backing off" if a.name == skip else None
    ).apply(Plan(tuple(vm(f"v{i}") for i in range(5))))
    assert [(r.action.name, r.outcome) for r in results] == [
        (f"v{i}", "skipped" if f"v{i}" == skip else "ok") for i in range(5)
    ]
    assert {name for _, name in hv.calls} == {f"v{i}" for i in range(5)} - {skip}


def test_an_interrupt_starts_no_queued_action() -> None:
    class Interrupted(FakeLog):
        def bind(self, **more: Any) -> FakeLog:
            return self

        def _write(self, event: str, **fields: Any) -> None:
            raise KeyboardInterrupt  # ^C while the first result is logged

        info = warning = error = _write

    hv = FakeHypervisor(delays={f"v{i}": 0.01 for i in range(40)})
    ex = Executor(hv, Inventory(), None, log=Interrupted([]))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        ex.apply(Plan(tuple(vm(f"v{i}") for i in range(40))))
    assert len(hv.calls) <= 2 * MAX_CONCURRENT  # those in flight, not all 40


def test_a_network_in_conflict_is_no_failure_for_the_vms_on_it() -> None:
    """A network another instance took over exists: our VM on it proceeds (a conflict
    is not a failure); a VM needing a volume in conflict still waits."""
    hv = FakeHypervisor()
    taken = Action(Kind.NETWORK, "lab", Op.CONFLICT, reason="owned by reconciler instance B")
    clash = Action(Kind.VOLUME, "root", Op.CONFLICT, reason="not in this inventory")
    plan = Plan((taken, clash, vm("a", requires=("Network/lab",)),
                 vm("b", requires=("Volume/root",))))  # fmt: skip
    results = executor(hv).apply(plan)
    assert [(r.action.name, r.outcome) for r in results] == [
        ("a", "ok"), ("b", "skipped")]  # fmt: skip
    assert results[1].error == "needs Volume/root, which failed"
