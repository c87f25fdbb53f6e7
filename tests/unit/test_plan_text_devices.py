"""Plan text of issue 13's devices and tuning (a newcomer's report): filesystems and
host devices added or removed are one ``+``/``-`` line like disks and NICs; a vCPU pin
to every host CPU is shown as the manifest writes it; bandwidth values carry units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reconciler.planner import PlanOptions, make_plan
from reconciler.report import render_plan
from tests.unit.plan_text_support import applied, load_text, plan_edit, stack

FS = "\n  memoryBacking: {shared: true}"
SHARE = FS + "\n  filesystems: [{source: /srv/share, target: share}]"
HEAD = "~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)\n"
TAIL = "\nPlan: 0 to create, 1 to update, 0 to delete.\n"


def shown(tmp: Path, before: str, after: str) -> str:
    return render_plan(plan_edit(tmp, before, after)).replace(str(tmp), "ROOT") + "\n"


def test_a_filesystem_added_or_removed_is_one_line(tmp_path: Path) -> None:
    assert shown(tmp_path / "a", stack(vm=FS), stack(vm=SHARE)) == (
        HEAD + "    + filesystem /srv/share (share, virtiofs), live\n" + TAIL)
    # removed: the manifest says filesystems: [] (not naming the field keeps them)
    assert shown(tmp_path / "r", stack(vm=SHARE), stack(vm=FS + "\n  filesystems: []")) == (
        HEAD + "    - filesystem /srv/share (share, virtiofs), live\n" + TAIL)


def test_a_filesystem_changed_in_place_is_one_line_at_its_manifest_index(
    tmp_path: Path,
) -> None:
    p9 = SHARE.replace("target: share}", "target: share, driver: 9p}")
    ro = SHARE.replace("target: share}", "target: share, driver: 9p, readonly: true}")
    text = shown(tmp_path, stack(vm=p9), stack(vm=ro))
    assert "    ~ filesystems[0] (share): readonly false -> true" in text, text
    assert "(none)" not in text


def test_host_devices_added_or_removed_are_one_line_each(tmp_path: Path) -> None:
    devs = ("\n  hostdevs: [{type: pci, address: '0000:03:00.0'}, "
            "{type: usb, vendor: '0x046d', product: '0xc52b'}]")  # fmt: skip
    assert shown(tmp_path / "a", stack(), stack(vm=devs)) == (
        HEAD + "    + host device pci 0000:03:00.0, live\n"
        "    + host device usb 046d:c52b, live\n" + TAIL)
    assert shown(tmp_path / "r", stack(vm=devs), stack(vm="\n  hostdevs: []")) == (
        HEAD + "    - host device pci 0000:03:00.0, live\n"
        "    - host device usb 046d:c52b, live\n" + TAIL)


def test_a_pin_to_every_host_cpu_is_shown_as_the_manifest_writes_it(tmp_path: Path) -> None:
    pins = "\n  vcpus: 2\n  cputune: {{vcpupin: [{{vcpu: 0, cpuset: '0'}}, {{vcpu: 1, cpuset: '{}'}}]}}"
    observed = applied(load_text(tmp_path / "before", stack(vm=pins.format("1"))))
    observed = dataclasses.replace(observed, host_cpus=frozenset({0, 1}))
    plan = make_plan(load_text(tmp_path / "m", stack(vm=pins.format("0-1"))), observed,
                     PlanOptions())  # fmt: skip
    text = render_plan(plan)
    # compared as no pin (0:0), said as written: it read "0:0 1:1 -> 0:0"
    assert "    cputune.vcpupin: 0:0 1:1 -> 0:0 1:0-1 (0-1 = all host CPUs) (live)\n" in text, text
    [action] = [a for a in plan.actions if a.name == "web"]
    [change] = [c for c in action.changes if c.path == "cputune.vcpupin"]
    assert change.new == "0:0"  # what steps and settle keys are made from


def test_bandwidth_values_carry_their_units(tmp_path: Path) -> None:
    limited = stack().replace(
        'mac: "52:54:00:00:00:01"}',
        'mac: "52:54:00:00:00:01", bandwidth: {inbound: {average: 1024, burst: 2048}}}')
    assert shown(tmp_path, stack(), limited) == (
        HEAD + "    ~ interfaces[0] (52:54:00:00:00:01): bandwidth.inbound.average (none) -> "
        "1024KiB/s, bandwidth.inbound.burst (none) -> 2048KiB, live\n" + TAIL)


def test_format_bandwidth_only_for_bandwidth_fields() -> None:
    from reconciler.report import show_value
    from reconciler.units import format_bandwidth

    assert format_bandwidth("interfaces[m].bandwidth.outbound.peak", 8) == "8KiB/s"
    assert format_bandwidth("portgroups[a].bandwidth.inbound.floor", 8) == "8KiB/s"
    assert format_bandwidth("disks[x].burst", 8) is None
    assert format_bandwidth("bandwidth.inbound.average", None) is None
    assert show_value("bandwidth.inbound.burst", 64) == "64KiB"
