"""Property: any valid VM spec applies, and the next plan is empty; any sequence of
odd memory sizes and out-of-band (virsh --config) edits settles with no restart loop.

Hypothesis draws VM specs across the fields a typical server VM uses; each
example is written as a manifest, applied, re-planned, then removed. One VM
name serves every example (removed directly between examples); the network
and image files are made once per test.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.report import render_plan
from reconciler.units import parse_size
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    assert_settled,
    describe,
    remove_prefixed,
    vm,
    ws_fixture,
)

MIB = 1024**2


@st.composite
def vm_specs(draw: st.DrawFn) -> dict[str, Any]:
    machine = draw(st.sampled_from(["pc", "q35"]))
    memory = draw(st.sampled_from([64, 96, 128]))
    spec: dict[str, Any] = {"memory": f"{memory}MiB", "machine": machine}
    extra_mem = draw(st.sampled_from([None, 0, 64]))
    if extra_mem is not None:
        spec["maxMemory"] = f"{memory + extra_mem}MiB"
    vcpus = draw(st.integers(1, 2))
    spec["vcpus"] = vcpus
    extra_cpus = draw(st.sampled_from([None, 0, 2]))
    if extra_cpus is not None:
        spec["maxVcpus"] = vcpus + extra_cpus
    spec["clock"] = draw(st.sampled_from(["utc", "localtime"]))
    if draw(st.booleans()):
        spec["cpu"] = "host-model"
    graphics = draw(st.sampled_from(["absent", "none", "vnc"]))
    if graphics == "none":
        spec["graphics"] = {"type": "none"}
    elif graphics == "vnc":
        spec["graphics"] = {"type": "vnc", "port": "auto"}
    inputs = draw(st.lists(st.sampled_from(["tablet", "mouse", "keyboard"]), unique=True,
                           max_size=3))  # fmt: skip
    if inputs:
        spec["inputs"] = inputs
    spec["serial"] = draw(st.sampled_from(["pty", "none"]))
    buses = ["virtio", "sata"] + (["ide"] if machine == "pc" else [])
    disks = draw(st.lists(st.sampled_from(buses), max_size=2))
    spec["disks"] = [{"file": f"@disk{i}", "format": "raw", "bus": bus}
                     for i, bus in enumerate(disks)]  # fmt: skip
    if draw(st.booleans()):
        spec["cdroms"] = [{"file": "@iso"}]
    nics = draw(st.lists(st.booleans(), max_size=2))  # True: an explicit MAC
    spec["interfaces"] = [
        {"network": "@net", **({"mac": f"52:54:00:d0:00:{i:02x}"} if explicit else {})}
        for i, explicit in enumerate(nics)
    ]
    spec["state"] = draw(st.sampled_from(["stopped", "stopped", "running"]))
    spec["autostart"] = draw(st.booleans())
    return spec


def test_any_valid_vm_applies_and_settles(ws: Workspace) -> None:
    net = ws.n("pnet")
    ws.write("net.yaml", ws.isolated_network(net))
    ws.converge()
    files = {"@disk0": str(ws.file("d0.img")), "@disk1": str(ws.file("d1.img")),
             "@iso": str(ws.iso("p.iso")), "@net": net}  # fmt: skip
    name = ws.n("pvm")

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return files.get(value, value) if isinstance(value, str) else value

    @settings(max_examples=int(os.environ.get("RECONCILER_PROPERTY_EXAMPLES", "15")), deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])  # fmt: skip
    @given(vm_specs())
    def check(spec: dict[str, Any]) -> None:
        ws.write("vm.yaml", vm(name, **resolve(spec)))
        try:
            result = ws.apply()
            assert not result.failed, describe(result)
            plan = ws.plan()
            assert not plan.has_changes, render_plan(plan, verbose=True)
            assert not [a for a in plan.actions if a.restart_pending], render_plan(plan)
            dom = ws.domain(name)
            assert bool(dom.isActive()) == (spec["state"] == "running")
            assert bool(dom.autostart()) == spec["autostart"]
        finally:
            remove_prefixed(ws.conn, name)

    check()


def test_any_change_between_stopped_vms_applies_and_settles(ws: Workspace) -> None:
    """From any valid spec to any other (both stopped): one apply, then nothing to do."""
    net = ws.n("pnet")
    ws.write("net.yaml", ws.isolated_network(net))
    ws.converge()
    files = {"@disk0": str(ws.file("d0.img")), "@disk1": str(ws.file("d1.img")),
             "@iso": str(ws.iso("p.iso")), "@net": net}  # fmt: skip
    name = ws.n("tvm")

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return files.get(value, value) if isinstance(value, str) else value

    stopped = vm_specs().map(lambda s: {**s, "state": "stopped"})

    @settings(max_examples=int(os.environ.get("RECONCILER_PROPERTY_EXAMPLES", "15")),
              deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])  # fmt: skip
    @given(stopped, stopped)
    def check(first: dict[str, Any], second: dict[str, Any]) -> None:
        try:
            ws.write("vm.yaml", vm(name, **resolve(first)))
            result = ws.apply()
            assert not result.failed, describe(result)
            ws.write("vm.yaml", vm(name, **resolve(second)))
            result = ws.apply()
            assert not result.failed, describe(result)
            plan = ws.plan()
            assert not plan.has_changes, render_plan(plan, verbose=True)
        finally:
            remove_prefixed(ws.conn, name)

    check()


# --- sizes libvirt rounds, edited in the manifest and behind its back -------------------

ODD_MEMORY = ["64MiB", "100MB", "70000001B", "96.5MiB", "130MB", "98765KiB"]
ODD_MAX_MEMORY = [None, "200MB", "150000001B", "160MiB", "131MB"]


@st.composite
def memory_edits(draw: st.DrawFn) -> list[tuple[str, Any, Any]]:
    """A short sequence of edits to one running VM: the manifest's memory sizes (odd
    ones, decimal units), or its persistent definition changed with virsh (--config)."""
    steps: list[tuple[str, Any, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            memory = draw(st.sampled_from(ODD_MEMORY))
            maximum = draw(st.sampled_from(ODD_MAX_MEMORY))
            if maximum is not None and parse_size(maximum) < parse_size(memory):
                maximum = None
            steps.append(("manifest", memory, maximum))
        else:
            command = draw(st.sampled_from(["setmem", "setmaxmem"]))
            steps.append(("virsh", command, draw(st.sampled_from([65537, 99999, 140001]))))
    return steps


def test_odd_sizes_and_out_of_band_edits_settle_without_a_restart_loop(ws: Workspace) -> None:
    """Any sequence of memory edits (manifest or virsh --config) to a running VM with
    ``updatePolicy: restart``: each apply settles, the plan after it is empty, and an
    apply after that restarts nothing (the domain keeps its id)."""
    name = ws.n("rvm")
    manifest: dict[str, Any] = {"memory": "64MiB", "state": "running",
                                "updatePolicy": "restart"}  # fmt: skip
    ws.write("vm.yaml", vm(name, **manifest))
    ws.converge()

    @settings(max_examples=int(os.environ.get("RECONCILER_PROPERTY_EXAMPLES", "5")),
              deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])  # fmt: skip
    @given(memory_edits())
    def check(steps: list[tuple[str, Any, Any]]) -> None:
        for how, first, second in steps:
            if how == "manifest":
                manifest.update(memory=first, maxMemory=second)
                ws.write("vm.yaml", vm(name, **manifest))
            else:  # behind the tool's back; libvirt may refuse (setmem above the maximum)
                ws.virsh(first, name, f"{second}KiB", "--config", check=False)
            result = ws.apply()
            assert not result.failed, describe(result)
            plan = ws.plan()
            assert not plan.has_changes, render_plan(plan, verbose=True)
            assert not [a for a in plan.actions if a.restart_pending], render_plan(plan)
            booted = ws.domain(name).ID()
            again = ws.apply()
            assert again.results == (), describe(again)
            assert ws.domain(name).ID() == booted

    check()
