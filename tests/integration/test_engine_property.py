"""Property: any valid VM spec applies, and the next plan is empty.

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
