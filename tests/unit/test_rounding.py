"""Rounding (reconciler/rounding.py): every rule as measured on libvirt 9.0 / QEMU 7.2,
and the planner comparing rounded values, so odd sizes settle (issue 10, case 4)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from reconciler import rounding
from reconciler.inventory import RESTARTED_FOR, Inventory
from reconciler.manifests import LoadResult
from reconciler.model import Kind
from reconciler.observe import Observed
from reconciler.plan import Action, Change, Op, Plan, is_unsettled
from reconciler.planner import digest
from reconciler.report import render_plan, render_unsettled
from reconciler.units import parse_size
from reconciler.xml import volume as volume_xml
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import action, converged, edit, load, plan_for

KIB = 1024

# --- the rules, with the numbers measured on this project's host --------------------


@pytest.mark.parametrize(
    ("kib", "running_kib"),
    [(97656, 98304), (195312, 195584), (100001, 100352), (1000, 1024), (2047, 2048),
     (1048577, 1049600), (131073, 132096), (1536001, 1537024), (1024, 1024)],
)  # fmt: skip
def test_running_memory_is_the_definition_aligned_up_to_a_mib(kib: int, running_kib: int) -> None:
    # measured: define <memory unit='KiB'>kib</memory>, start, read the live XML
    assert rounding.running_memory(kib * KIB) == running_kib * KIB
    assert rounding.definition_memory(kib * KIB) == kib * KIB  # kept exactly


@pytest.mark.parametrize(
    ("text", "definition_kib", "running_kib"),
    [("100MB", 97656, 98304), ("200MB", 195312, 195584), ("1.5GB", 1464843, 1465344),
     ("1GB", 976562, 976896), ("100MiB", 102400, 102400), ("1000KB", 976, 1024),
     ("1.5GiB", 1572864, 1572864)],
)  # fmt: skip
def test_decimal_units_round_down_to_kib_then_up_to_mib(
    text: str, definition_kib: int, running_kib: int
) -> None:
    size = parse_size(text)
    assert rounding.definition_memory(size) == definition_kib * KIB
    assert rounding.running_memory(size) == running_kib * KIB


def test_balloon_target_is_whole_kib() -> None:
    assert rounding.balloon_target(100_000_000) == 97656 * KIB
    assert rounding.balloon_target(512 * 1024**2) == 512 * 1024**2


@pytest.mark.parametrize(
    ("size", "qcow2", "raw"),
    [(100_000_000, 100_000_768, 100_000_000), (1000, 1024, 1000), (1, 1024, 1),
     (511, 1024, 511), (513, 1024, 513), (1_500_000_000, 1_500_000_256, 1_500_000_000),
     (1_048_577, 1_049_600, 1_048_577), (65537, 66560, 65537), (1024**3, 1024**3, 1024**3)],
)  # fmt: skip
def test_created_capacity_measured(size: int, qcow2: int, raw: int) -> None:
    # measured: pool.createXML(<capacity unit='bytes'>size</capacity>), read XMLDesc
    assert rounding.created_capacity(size, "qcow2") == qcow2
    assert rounding.created_capacity(size, "raw") == raw


@pytest.mark.parametrize(
    ("size", "qcow2"),
    [(101_000_001, 101_000_192), (1_001_001, 1_001_472), (1_000_002, 1_000_448),
     (2_048_578, 2_049_024), (1_501_000_001, 1_501_000_192)],
)  # fmt: skip
def test_resized_capacity_measured(size: int, qcow2: int) -> None:
    # measured: vol.resize(size), read XMLDesc
    assert rounding.resized_capacity(size, "qcow2") == qcow2
    assert rounding.resized_capacity(size, "raw") == size


def test_volume_capacity_accepts_either_path_and_asks_for_whole_kib() -> None:
    size = 100_000_000
    assert rounding.volume_capacity(size, "qcow2") == 100_000_768
    assert rounding.volume_capacity(size, "qcow2", 100_000_768) == 100_000_768  # created
    assert rounding.volume_capacity(size, "qcow2", 100_000_256) == 100_000_256  # resized
    assert rounding.volume_capacity(size, "qcow2", 99_999_744) == 100_000_768  # smaller
    assert rounding.volume_capacity(size, "raw", 100_000_768) == size  # raw is exact
    # what it asks for, libvirt keeps on both paths
    wanted = rounding.volume_capacity(size, "qcow2")
    assert rounding.resized_capacity(wanted, "qcow2") == wanted
    assert rounding.created_capacity(wanted, "qcow2") == wanted


def test_rounded_note() -> None:
    assert rounding.rounded_note(1024, 1024) == ""
    assert "100000768" in rounding.rounded_note(100_000_000, 100_000_768)


# --- the planner compares rounded values ------------------------------------------

ODD = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: /srv/images}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: root}
spec: {pool: images, capacity: 100000000B}
---
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  memory: 100MB
  maxMemory: 200MB
  vcpus: 1
  disks: [{volume: root}]
  state: running
  updatePolicy: restart
"""


def _aligned(match: re.Match[str]) -> str:
    kib = rounding.running_memory(int(match.group(1)) * KIB) // KIB
    return f"<memory unit='KiB'>{kib}</memory>"


def _as_libvirt_has_it(observed: Observed) -> Observed:
    """``observed`` with the sizes libvirt really shows: the running domains' memory
    aligned to MiB, the volumes' capacity as qemu-img created it."""
    domains = {}
    for name, vm in observed.domains.items():
        live = vm.live_xml
        if live is not None:
            live = re.sub(r"<memory unit=.KiB.>(\d+)</memory>", _aligned, live)
        domains[name] = dataclasses.replace(vm, live_xml=live)
    volumes = {}
    for key, vol in observed.volumes.items():
        spec_capacity = volume_xml.observe(vol.xml)["capacity"]
        assert isinstance(spec_capacity, int)
        volumes[key] = dataclasses.replace(vol, xml=re.sub(
            r">\d+</capacity>", f">{rounding.created_capacity(spec_capacity, 'qcow2')}</capacity>",
            vol.xml,
        ))  # fmt: skip
    return dataclasses.replace(observed, domains=domains, volumes=volumes)


def _odd(write: WriteFiles) -> tuple[LoadResult, Observed]:
    result = load(write, ODD)
    observed = _as_libvirt_has_it(converged(result))
    live = observed.domains["web"].live_xml
    assert live is not None and ">195584</memory>" in live  # what libvirt shows, running
    return result, observed


def test_odd_memory_on_a_running_vm_is_in_sync(write: WriteFiles) -> None:
    result, observed = _odd(write)
    vm = action(plan_for(result, observed), Kind.VIRTUAL_MACHINE, "web")
    assert vm.op is Op.NOOP and vm.steps == () and vm.restart_pending == ()


def test_a_definition_edit_the_running_domain_already_has_is_live(write: WriteFiles) -> None:
    result, observed = _odd(write)
    # maxMemory 200MB -> 195313KiB: the same MiB when running, so no restart is due
    edited = edit(result, "web", max_memory=195313 * KIB)
    vm = action(plan_for(edited, observed), Kind.VIRTUAL_MACHINE, "web")
    assert vm.op is Op.UPDATE_LIVE and vm.restart_pending == ()
    assert [(c.path, c.live) for c in vm.changes] == [("maxMemory", True)]
    assert [s.verb for s in vm.steps] == ["define-domain"]


def test_a_real_max_memory_change_still_restarts(write: WriteFiles) -> None:
    result, observed = _odd(write)
    vm = action(plan_for(edit(result, "web", max_memory=300 * 1000**2), observed),
                Kind.VIRTUAL_MACHINE, "web")  # fmt: skip
    assert vm.op is Op.UPDATE_RESTART
    assert [s.verb for s in vm.steps] == ["define-domain", "restart-domain"]


def test_odd_qcow2_capacity_is_in_sync_on_either_path(write: WriteFiles) -> None:
    result, observed = _odd(write)
    vol = action(plan_for(result, observed), Kind.VOLUME, "root")
    assert vol.op is Op.NOOP  # created: 100000768
    [(key, record)] = observed.volumes.items()
    resized = dataclasses.replace(record, xml=re.sub(
        r">\d+</capacity>", ">100000256</capacity>", record.xml))  # fmt: skip
    again = dataclasses.replace(observed, volumes={key: resized})
    assert action(plan_for(result, again), Kind.VOLUME, "root").op is Op.NOOP


def test_odd_qcow2_growth_asks_for_whole_kib(write: WriteFiles) -> None:
    result, observed = _odd(write)
    stopped = dataclasses.replace(observed, domains={})
    grow = action(plan_for(edit(result, "root", capacity=100_001_001), stopped),
                  Kind.VOLUME, "root")  # fmt: skip
    assert grow.op is Op.UPDATE_LIVE
    assert [s.describe() for s in grow.steps] == [
        "resize-volume pool=images capacity=100001792"
    ]


# --- a restart that does not settle is reported once and never repeated ----------


def _unsettled_vm(write: WriteFiles) -> tuple[LoadResult, Observed]:
    """A running VM whose running domain differs in a way no restart fixes (as if
    libvirt rounded maxMemory in a way this tool does not know): 1 MiB more."""
    result, observed = _odd(write)
    vm = observed.domains["web"]
    assert vm.live_xml is not None
    odd_live = vm.live_xml.replace(">195584</memory>", ">196608</memory>")
    odd_live = odd_live.replace("<domain ", "<domain id='7' ", 1)  # its 7th boot
    return result, dataclasses.replace(
        observed, domains={"web": dataclasses.replace(vm, live_xml=odd_live)}
    )


def _with_entry(observed: Observed, key: str, **extra: Any) -> Observed:
    objects = dict(observed.inventory.objects)
    objects[key] = {**objects[key], **extra}
    return dataclasses.replace(observed, inventory=Inventory(objects))


def test_restart_is_recorded_and_not_repeated_for_the_same_change(write: WriteFiles) -> None:
    result, observed = _unsettled_vm(write)
    first = action(plan_for(result, observed), Kind.VIRTUAL_MACHINE, "web")
    assert first.op is Op.UPDATE_RESTART
    assert [s.verb for s in first.steps] == ["restart-domain"]
    record = first.owner_record[RESTARTED_FOR]
    [m] = [x for x in result.manifests if x.name == "web"]
    assert record["digest"] == digest(m)
    assert record["changes"] == ["maxMemory: 201326592 -> 200278016"]
    assert record["boot"] == "7"
    # the restart never happened (skipped, failed): the domain has the same id
    skipped = _with_entry(observed, "VirtualMachine/web", **{RESTARTED_FOR: record})
    assert action(plan_for(result, skipped), Kind.VIRTUAL_MACHINE, "web").op is (
        Op.UPDATE_RESTART)  # fmt: skip
    # it was restarted (boot 8) and left as it was: the next plan does not restart again
    vm = observed.domains["web"]
    assert vm.live_xml is not None
    rebooted = dataclasses.replace(vm, live_xml=vm.live_xml.replace("id='7'", "id='8'"))
    observed = dataclasses.replace(observed, domains={"web": rebooted})
    after = _with_entry(observed, "VirtualMachine/web", **{RESTARTED_FOR: record})
    second = action(plan_for(result, after), Kind.VIRTUAL_MACHINE, "web")
    assert second.op is Op.NOOP and second.steps == ()
    [pending] = second.restart_pending
    assert pending.path == "maxMemory" and is_unsettled(pending)
    assert "201326592" in pending.note and "200278016" in pending.note
    assert second.owner_record[RESTARTED_FOR] == record  # kept, so never repeated
    text = render_plan(Plan(actions=(second,)))
    assert "unsettled" in text and "not restarting it again" in text


def test_a_new_manifest_may_restart_again(write: WriteFiles) -> None:
    result, observed = _unsettled_vm(write)
    stale = {"digest": "sha256:older", "changes": ["maxMemory: 201326592 -> 200278016"],
             "boot": "6"}
    after = _with_entry(observed, "VirtualMachine/web", **{RESTARTED_FOR: stale})
    act = action(plan_for(result, after), Kind.VIRTUAL_MACHINE, "web")
    assert act.op is Op.UPDATE_RESTART
    assert act.owner_record[RESTARTED_FOR]["digest"] != "sha256:older"


def test_a_different_difference_may_restart_again(write: WriteFiles) -> None:
    result, observed = _unsettled_vm(write)
    [m] = [x for x in result.manifests if x.name == "web"]
    other = {"digest": digest(m), "changes": ["machine: 'pc' -> 'q35'"], "boot": "6"}
    after = _with_entry(observed, "VirtualMachine/web", **{RESTARTED_FOR: other})
    act = action(plan_for(result, after), Kind.VIRTUAL_MACHINE, "web")
    assert act.op is Op.UPDATE_RESTART
    assert sorted(act.owner_record[RESTARTED_FOR]["changes"]) == [
        "machine: 'pc' -> 'q35'", "maxMemory: 201326592 -> 200278016"
    ]


def test_render_unsettled_names_field_and_both_values() -> None:
    change = Change("maxMemory", 201326592, 200278016, note="unsettled: x")
    act = Action(Kind.VIRTUAL_MACHINE, "web", Op.NOOP, restart_pending=(change,))
    text = render_unsettled([act])
    assert "web does not settle" in text and "maxMemory" in text and "unsettled: x" in text


def test_status_flags_an_unsettled_change(write: WriteFiles) -> None:
    from datetime import UTC, datetime

    from reconciler.daemon import _object_statuses
    from reconciler.reconcile import PassResult
    from reconciler.status import ObjectState

    result, observed = _unsettled_vm(write)
    [m] = [x for x in result.manifests if x.name == "web"]
    record = {"digest": digest(m), "changes": ["maxMemory: 201326592 -> 200278016"],
              "boot": "6"}
    after = _with_entry(observed, "VirtualMachine/web", **{RESTARTED_FOR: record})
    vm = action(plan_for(result, after), Kind.VIRTUAL_MACHINE, "web")
    statuses = _object_statuses(PassResult(result, Plan((vm,))), datetime.now(UTC), None)
    [status] = [s for s in statuses if s.name == "web"]
    assert status.state is ObjectState.RESTART_PENDING
    assert "unsettled (a bug, not restarted again): maxMemory is 201326592, wanted 200278016" in (
        status.message
    )


# --- what libvirt refuses, and what the plan says of a rounded size -----------------


def test_resize_refused_below_the_allocation() -> None:
    assert rounding.resize_refused(100_001_001, 100_003_840)
    assert not rounding.resize_refused(100_003_840, 100_003_840)
    assert not rounding.resize_refused(100_001_001, None)


def _with_allocation(observed: Observed, allocation: int) -> Observed:
    [(key, record)] = observed.volumes.items()
    xml = record.xml.replace("</capacity>", f"</capacity><allocation unit='bytes'>"
                                            f"{allocation}</allocation>")  # fmt: skip
    return dataclasses.replace(observed, volumes={key: dataclasses.replace(record, xml=xml)})


def test_growth_below_the_allocation_is_refused_with_the_size_to_set(write: WriteFiles) -> None:
    raw = load(write, ODD.replace("capacity: 100000000B}", "capacity: 100000000B, format: raw}"))
    observed = dataclasses.replace(converged(raw), domains={})  # not in use: resize-volume
    observed = _with_allocation(observed, 100_003_840)
    grow = action(plan_for(edit(raw, "root", capacity=100_001_001), observed), Kind.VOLUME, "root")
    assert grow.op is Op.ERROR and grow.steps == ()
    assert "set capacity: 100003840B or more" in grow.reason
    fine = action(plan_for(edit(raw, "root", capacity=100_003_840), observed), Kind.VOLUME, "root")
    assert fine.op is Op.UPDATE_LIVE


def test_the_plan_notes_what_libvirt_keeps_of_an_odd_size(write: WriteFiles) -> None:
    result, observed = _odd(write)
    stopped = dataclasses.replace(observed, domains={})
    grow = action(plan_for(edit(result, "root", capacity=100_001_001), stopped),
                  Kind.VOLUME, "root")  # fmt: skip
    [change] = grow.changes
    assert change.note == "manifest: 100001001 bytes, which libvirt keeps as 100001792"
    assert "which libvirt keeps as 100001792" in render_plan(Plan((grow,)))
    vm = action(plan_for(edit(result, "web", memory=90 * 1000**2), observed),
                Kind.VIRTUAL_MACHINE, "web")  # fmt: skip
    [memory] = [c for c in vm.changes if c.path == "memory"]
    assert memory.new == 87890 * KIB and "90000000 bytes" in memory.note
