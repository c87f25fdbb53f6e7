"""Owners are distinct (SPEC §3): the rules, the records, and the planner applying them.

Instance ids are made once per state directory (statedir.instance_id); a record naming
another instance is a conflict naming it; a record without one is ours only when our
inventory has the object; another instance's object is never pruned or deleted.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from pathlib import Path

import pytest

from reconciler import owners, statedir
from reconciler.errors import StateDirError
from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult
from reconciler.model import Kind
from reconciler.observe import Observed
from reconciler.plan import Op
from reconciler.planner import digest, plan_delete
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import action, converged, load, plan_for

A = "0b7d3f4e-58a4-4a8f-9d1e-3c5b8a2f6e01"
B = "9f1c2e3d-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

# --- the rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "in_inventory", "ours", "standing", "retag"),
    [
        (owners.Record(A), False, A, owners.Standing.OURS, False),
        (owners.Record(A), True, A, owners.Standing.OURS, False),
        (owners.Record(A), True, B, owners.Standing.OTHER, False),  # taken over by A
        (owners.Record(A), False, B, owners.Standing.OTHER, False),
        (owners.Record(A), False, None, owners.Standing.OTHER, False),  # we have no id yet
        (owners.Record(None), True, B, owners.Standing.OURS, True),  # old record, ours
        (owners.Record(None), True, None, owners.Standing.OURS, False),  # no id to write
        (owners.Record(None), False, B, owners.Standing.UNKNOWN, False),
        (None, True, B, owners.Standing.OURS, False),
        (None, False, B, owners.Standing.UNMANAGED, False),
    ],
)
def test_judge(record: owners.Record | None, in_inventory: bool, ours: str | None,
               standing: owners.Standing, retag: bool) -> None:  # fmt: skip
    owner = owners.judge(record, in_inventory=in_inventory, ours=ours)
    assert (owner.standing, owner.retag) == (standing, retag)
    assert owner.ours is (standing is owners.Standing.OURS)


def test_conflict_reasons_name_the_owner() -> None:
    other = owners.judge(owners.Record(A, "vms/web.yaml", "abc123"), in_inventory=False, ours=B)
    text = owners.conflict_reason("VM 'web'", other)
    assert f"reconciler instance {A} (manifest vms/web.yaml, revision abc123)" in text
    assert f"reconciler adopt --from-instance {A} DIR" in text and "adopt: true" in text
    unknown = owners.judge(owners.Record(None, "web.yaml"), in_inventory=False, ours=B)
    text = owners.conflict_reason("VM 'web'", unknown)
    assert "owned by an unknown reconciler instance" in text and "web.yaml" in text
    unmanaged = owners.judge(None, in_inventory=False, ours=B)
    assert "not managed by reconciler" in owners.conflict_reason("VM 'web'", unmanaged)
    assert "no owner record on pools and volumes" in owners.conflict_reason(
        "volume 'root'", unmanaged, recorded=False)  # fmt: skip


# --- the records ---------------------------------------------------------------------


def test_domain_record_carries_the_instance() -> None:
    from reconciler.model import VirtualMachineSpec

    xml = domain_xml.render("web", VirtualMachineSpec(memory=2**26, max_memory=2**26, vcpus=1, max_vcpus=1),
                            ownership=domain_xml.Ownership("web.yaml", "sha256:x", "r1", A))
    assert f"<rc:instance>{A}</rc:instance>" in xml
    assert domain_xml.read_ownership(xml) == domain_xml.Ownership("web.yaml", "sha256:x", "r1", A)
    old = domain_xml.render("web", VirtualMachineSpec(memory=2**26, max_memory=2**26, vcpus=1, max_vcpus=1),
                            ownership=domain_xml.Ownership("web.yaml", "sha256:x"))
    assert "instance" not in old
    record = domain_xml.read_ownership(old)
    assert record is not None and record.instance is None


def test_with_owner_instance_changes_only_the_record() -> None:
    xml = """<domain type='kvm'>
  <name>web</name>
  <metadata>
    <other:tool xmlns:other="https://example.org/other"><other:x>1</other:x></other:tool>
    <rc:owner xmlns:rc="https://reconciler.dev/xmlns/domain/v1">
      <rc:manifest>web.yaml</rc:manifest><rc:digest>sha256:x</rc:digest><rc:cpu>host-model</rc:cpu>
    </rc:owner>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <devices><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng></devices>
</domain>"""
    out = domain_xml.with_owner_instance(xml, B)
    record = domain_xml.read_ownership(out)
    assert record == domain_xml.Ownership("web.yaml", "sha256:x", None, B)
    assert domain_xml.booted_cpu(out) == (True, "host-model")
    assert "https://example.org/other" in out and "guest_agent" in out and "urandom" in out
    again = domain_xml.with_owner_instance(out, A)  # replaced, not added twice
    assert again.count("instance>") == 2 and A in again and B not in again
    with pytest.raises(ValueError):
        domain_xml.with_owner_instance("<domain><name>x</name></domain>", A)


def test_network_record_round_trip() -> None:
    from reconciler.model import NetworkSpec

    mine = network_xml.NetworkOwnership(A, "net.yaml", "sha256:n", "r2")
    xml = network_xml.render("lab", NetworkSpec(mode="isolated"), ownership=mine)
    assert network_xml.read_ownership(xml) == mine
    assert network_xml.read_ownership(network_xml.render("lab", NetworkSpec())) is None
    live = ("<network><name>lab</name><uuid>u</uuid><bridge name='virbr9'/>"
            "<portgroup name='x'/></network>")  # fmt: skip
    out = network_xml.with_ownership(live, mine)
    assert network_xml.read_ownership(out) == mine and "portgroup" in out
    theirs = dataclasses.replace(mine, instance=B)
    assert network_xml.read_ownership(network_xml.with_ownership(out, theirs)) == theirs


# --- the instance id ------------------------------------------------------------------


def test_instance_id_is_made_once_and_plan_never_writes(tmp_path: Path) -> None:
    assert statedir.instance_id(tmp_path, create=False) is None
    assert os.listdir(tmp_path) == []
    made = statedir.instance_id(tmp_path, create=True)
    assert made is not None and str(uuid.UUID(made)) == made
    assert statedir.instance_id(tmp_path, create=True) == made
    assert statedir.instance_id(tmp_path, create=False) == made
    assert sorted(os.listdir(tmp_path)) == [statedir.INSTANCE_ID]  # no temporary left


def test_instance_id_racing_writers_agree(tmp_path: Path) -> None:
    seen: list[str | None] = []
    threads = [threading.Thread(target=lambda: seen.append(
        statedir.instance_id(tmp_path, create=True))) for _ in range(16)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and seen[0] is not None


def test_instance_id_that_is_not_one_is_an_error_never_replaced(tmp_path: Path) -> None:
    (tmp_path / statedir.INSTANCE_ID).write_text("garbage\n")
    with pytest.raises(StateDirError, match="not an instance id"):
        statedir.instance_id(tmp_path, create=True)
    assert (tmp_path / statedir.INSTANCE_ID).read_text() == "garbage\n"


# --- the planner -----------------------------------------------------------------------


def owned_by(result: LoadResult, observed: Observed, instance: str | None,
             inventory: bool = True) -> Observed:  # fmt: skip
    """``observed`` with the VM's and network's records naming ``instance``; without
    ``inventory``, as a fresh state directory sees it."""
    domains = {}
    for name, d in observed.domains.items():
        found = domain_xml.read_ownership(d.config_xml)
        assert found is not None
        xml = d.config_xml
        if instance is not None:
            xml = domain_xml.with_owner_instance(xml, instance)
        domains[name] = dataclasses.replace(d, config_xml=xml)
    networks = {}
    m = {x.name: x for x in result.manifests}
    for name, n in observed.networks.items():
        mine = network_xml.NetworkOwnership(instance, m[name].source.path, digest(m[name]))
        xml = network_xml.with_ownership(n.config_xml, mine)
        networks[name] = dataclasses.replace(n, config_xml=xml, live_xml=xml)
    return dataclasses.replace(observed, domains=domains, networks=networks,
                               inventory=observed.inventory if inventory else Inventory())


def test_another_instances_objects_are_conflicts_naming_it(write: WriteFiles) -> None:
    result = load(write)
    theirs = owned_by(result, converged(result), A, inventory=False)
    plan = plan_for(result, theirs, instance=B)
    for kind, name in ((Kind.VIRTUAL_MACHINE, "web"), (Kind.NETWORK, "lab")):
        a = action(plan, kind, name)
        assert a.op is Op.CONFLICT and not a.steps, a
        assert f"reconciler instance {A} (manifest {result.root}" in a.reason
    for kind, name in ((Kind.STORAGE_POOL, "images"), (Kind.VOLUME, "root")):
        a = action(plan, kind, name)
        assert a.op is Op.CONFLICT and "inventory" in a.reason, a
    # a VM of A uses the volume: the conflict says so
    assert A in action(plan, Kind.VOLUME, "root").reason
    # the same with no id of our own yet (a plan from a state directory never written)
    plan = plan_for(result, theirs, instance=None)
    assert action(plan, Kind.VIRTUAL_MACHINE, "web").op is Op.CONFLICT


def test_ours_by_the_record_is_in_sync(write: WriteFiles) -> None:
    result = load(write)
    mine = owned_by(result, converged(result), A)
    plan = plan_for(result, mine, instance=A)
    assert not plan.has_changes, [a for a in plan.actions if a.op is not Op.NOOP]
    assert all(a.owner_record and a.owner_record["instance"] == A for a in plan.actions)


def test_adopt_true_takes_another_instances_vm(write: WriteFiles) -> None:
    result = load(write, STACK_ADOPT)
    theirs = owned_by(result, converged(result), A, inventory=False)
    plan = plan_for(result, theirs, instance=B)
    a = action(plan, Kind.VIRTUAL_MACHINE, "web")
    [change] = [c for c in a.changes if c.path == "ownership"]
    assert (change.old, change.new) == (f"instance {A}", f"instance {B}")
    [define] = [s for s in a.steps if s.verb == "define-domain"]
    assert domain_xml.read_ownership(define.args["xml"]).instance == B  # type: ignore[union-attr]
    assert a.op is Op.UPDATE_LIVE  # taking a record over restarts nothing


def test_old_records_ours_by_inventory_are_retagged_alone(write: WriteFiles) -> None:
    result = load(write)
    legacy = owned_by(result, converged(result), None)  # no instance in any record
    plan = plan_for(result, legacy, instance=B)
    a = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert a.op is Op.UPDATE_LIVE
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "record without instance id", f"instance {B}")]
    [define] = a.steps
    # only the record changes: the definition is libvirt's own, with our id in it
    before = legacy.domains["web"].config_xml
    assert define.args["xml"] == domain_xml.with_owner_instance(before, B)
    net = action(plan, Kind.NETWORK, "lab")
    assert [s.verb for s in net.steps] == ["define-network"]
    assert network_xml.read_ownership(net.steps[0].args["xml"]).instance == B  # type: ignore[union-attr]
    # the same records are an unknown instance's to a state directory without them
    plan = plan_for(result, owned_by(result, converged(result), None, inventory=False),
                    instance=B)  # fmt: skip
    a = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert a.op is Op.CONFLICT and "unknown reconciler instance" in a.reason
    # and with no id of our own to write, nothing to do
    assert not plan_for(result, legacy, instance=None).has_changes


def test_prune_and_delete_leave_another_instances_objects(write: WriteFiles) -> None:
    result = load(write)
    # our inventory lists them, but A adopted them since (its records say so)
    theirs = owned_by(result, converged(result), A)
    gone = LoadResult(manifests=(), problems=(), files=result.files, root=result.root)
    plan = plan_for(gone, theirs, instance=B)
    for kind, name in ((Kind.VIRTUAL_MACHINE, "web"), (Kind.NETWORK, "lab")):
        a = action(plan, kind, name)
        assert a.op is Op.FORGET and not a.steps and A in a.reason, a
    deleting = plan_delete(["VirtualMachine/web", "Network/lab"], theirs, instance=B)
    assert [a.op for a in deleting.actions] == [Op.ERROR, Op.ERROR]
    assert all(A in a.reason and not a.steps for a in deleting.actions)
    # ours: deleted as before
    mine = owned_by(result, converged(result), B)
    assert action(plan_for(gone, mine, instance=B), Kind.VIRTUAL_MACHINE, "web").op is Op.DELETE


def test_take_over_takes_exactly_the_lost_instances_objects(write: WriteFiles) -> None:
    result = load(write)
    lost = owned_by(result, converged(result), A, inventory=False)
    plan = plan_for(result, lost, instance=B, take_over=frozenset({A}))
    taken = {a.key for a in plan.actions
             if any(c.note == owners.TAKEN_BACK for c in a.changes)}  # fmt: skip
    assert taken == {"VirtualMachine/web", "Network/lab", "StoragePool/images", "Volume/root"}
    # a VM of a third instance using the volume: the volume and pool are not taken
    third = owned_by(result, converged(result), "11111111-2222-4333-8444-555555555555",
                     inventory=False)  # fmt: skip
    third = dataclasses.replace(third, networks=lost.networks)
    plan = plan_for(result, third, instance=B, take_over=frozenset({A}))
    taken = {a.key for a in plan.actions
             if any(c.note == owners.TAKEN_BACK for c in a.changes)}  # fmt: skip
    assert taken == {"Network/lab"}
    assert action(plan, Kind.VOLUME, "root").op is Op.CONFLICT


STACK_ADOPT = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: /srv/images, autostart: true}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: root}
spec: {pool: images, capacity: 1GiB}
---
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  memory: 512MiB
  maxMemory: 1GiB
  vcpus: 1
  maxVcpus: 2
  disks: [{volume: root}]
  state: running
  adopt: true
"""
