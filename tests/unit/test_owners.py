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
import yaml

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
from tests.unit.test_planner import STACK, action, converged, load, plan_for

A = "0b7d3f4e-58a4-4a8f-9d1e-3c5b8a2f6e01"
B = "9f1c2e3d-4b5a-4c6d-8e7f-0a1b2c3d4e5f"

# --- the rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "in_inventory", "ours", "standing", "retag"),
    [
        (owners.Record(A), False, A, owners.Standing.OURS, False),
        (owners.Record(A), True, A, owners.Standing.OURS, False),
        (owners.Record(A), True, B, owners.Standing.TAKEN, False),  # taken over by A
        (owners.Record(A), False, B, owners.Standing.OTHER, False),
        (owners.Record(A), False, None, owners.Standing.OTHER, False),  # we have no id yet
        (owners.Record(A), True, None, owners.Standing.TAKEN, False),
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


def test_taken_over_is_never_adoptable_and_names_the_new_owner() -> None:
    taken = owners.judge(owners.Record(A, "vms/web.yaml"), in_inventory=True, ours=B)
    other = owners.judge(owners.Record(A), in_inventory=False, ours=B)
    assert not taken.adoptable and other.adoptable and taken.instance == A
    assert owners.judge(None, in_inventory=False, ours=B).adoptable
    assert owners.judge(owners.Record(None), in_inventory=False, ours=B).adoptable
    assert not owners.judge(owners.Record(B), in_inventory=False, ours=B).adoptable  # ours
    text = owners.conflict_reason("VM 'web'", taken)
    assert f"taken over by reconciler instance {A} (manifest vms/web.yaml)" in text
    assert "adopt: true does not take it back" in text
    assert f"reconciler adopt --from-instance {A} DIR" in text


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


@pytest.mark.parametrize("create", [True, False])
def test_instance_id_symlink_is_refused_dangling_or_not(tmp_path: Path, create: bool) -> None:
    link = tmp_path / statedir.INSTANCE_ID
    link.symlink_to(tmp_path / "nowhere")  # dangling: once ran with no id at all
    with pytest.raises(StateDirError, match="symbolic link"):
        statedir.instance_id(tmp_path, create=create)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    # a link to another state directory's id: two state directories, one identity
    other = tmp_path / "other"
    other.mkdir()
    theirs = statedir.instance_id(other, create=True)
    link.unlink()
    link.symlink_to(other / statedir.INSTANCE_ID)
    with pytest.raises(StateDirError, match="symbolic link") as raised:
        statedir.instance_id(tmp_path, create=create)
    assert str(link) in str(raised.value) and str(other) in str(raised.value)
    assert statedir.instance_id(other, create=False) == theirs


def test_instance_id_in_binary_garbage_is_one_clear_error(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 2 + b"\xff\xfe"
    (tmp_path / statedir.INSTANCE_ID).write_bytes(garbage)
    for create in (True, False):
        with pytest.raises(StateDirError, match="not an instance id") as raised:
            statedir.instance_id(tmp_path, create=create)
        message = str(raised.value)
        assert str(tmp_path / statedir.INSTANCE_ID) in message and "move it aside" in message
    assert (tmp_path / statedir.INSTANCE_ID).read_bytes() == garbage  # never replaced


def test_instance_id_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / statedir.INSTANCE_ID).mkdir()
    with pytest.raises(StateDirError, match="not a regular file"):
        statedir.instance_id(tmp_path, create=True)


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


def _all_adopt(text: str) -> str:
    docs = list(yaml.safe_load_all(text))
    for d in docs:
        d["spec"]["adopt"] = True
    return "---\n".join(yaml.safe_dump(d) for d in docs)



def test_adopt_true_takes_a_live_instances_objects_once_and_never_back(
        write: WriteFiles) -> None:  # fmt: skip
    """Two instances applying the same adopt: true manifests (as export writes them):
    the second takes the VM and the network once, with a line saying so; the first then
    sees them taken over, a conflict naming the second, and never takes them back."""
    result = load(write, _all_adopt(STACK))
    a_view = owned_by(result, converged(result), A)  # A applied: A's records, A's inventory
    b_view = owned_by(result, converged(result), A, inventory=False)  # B: fresh inventory
    redefines = 0
    for turn in range(6):  # A, B, A, B... as two daemons would
        me, view = (A, a_view) if turn % 2 == 0 else (B, b_view)
        plan = plan_for(result, view, instance=me)
        defines = [a for a in plan.actions if any(s.verb.startswith("define-") for s in a.steps)]
        redefines += len(defines)
        if defines:  # the apply: the records now name ``me``, in both views of libvirt
            assert me == B and turn == 1, (turn, defines)
            for a in (action(plan, Kind.VIRTUAL_MACHINE, "web"), action(plan, Kind.NETWORK, "lab")):
                [change] = [c for c in a.changes if c.path == "ownership"]
                assert (change.old, change.new) == (f"instance {A}", f"instance {B}")
                assert change.note == owners.TAKEN_FROM
            a_view = owned_by(result, a_view, B)
            b_view = dataclasses.replace(owned_by(result, b_view, B),
                                         inventory=converged(result).inventory)  # fmt: skip
        elif me == A and turn > 0:
            for kind, name in ((Kind.VIRTUAL_MACHINE, "web"), (Kind.NETWORK, "lab")):
                a = action(plan, kind, name)
                assert a.op is Op.CONFLICT and not a.steps, a
                assert f"taken over by reconciler instance {B}" in a.reason
                assert f"adopt --from-instance {B}" in a.reason
    assert redefines == 2  # the VM and the network, once


def test_take_over_is_the_deliberate_way_back_from_a_live_instance(write: WriteFiles) -> None:
    result = load(write)
    taken = owned_by(result, converged(result), B)  # ours by inventory, B's by record
    plan = plan_for(result, taken, instance=A, take_over=frozenset({B}))
    back = {a.key for a in plan.actions if any(c.note == owners.TAKEN_BACK for c in a.changes)}
    assert back == {"VirtualMachine/web", "Network/lab"}  # pool and volume: ours already


SPARE = """
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: spare}
spec: {pool: images, capacity: 1GiB}
"""


def _with_spare(result: LoadResult, observed: Observed) -> Observed:
    spare = dataclasses.replace(observed.volumes[("images", "root")], name="spare",
                                path="/srv/images/spare")  # fmt: skip
    return dataclasses.replace(observed, volumes={**observed.volumes, ("images", "spare"): spare})


def test_take_over_takes_no_pool_or_volume_nothing_links_to_the_lost_instance(
        write: WriteFiles) -> None:  # fmt: skip
    result = load(write, STACK + SPARE)
    lost = _with_spare(result, owned_by(result, converged(result), A, inventory=False))
    plan = plan_for(result, lost, instance=B, take_over=frozenset({A}))
    back = {a.key for a in plan.actions if any(c.note == owners.TAKEN_BACK for c in a.changes)}
    assert back == {"VirtualMachine/web", "Network/lab", "StoragePool/images", "Volume/root"}
    spare = action(plan, Kind.VOLUME, "spare")
    assert spare.op is Op.CONFLICT and "no VM being taken back uses it" in spare.reason
    # the lost instance's VM is not declared here: it stays A's, and so do its disk and pool
    no_vm = LoadResult(manifests=tuple(m for m in result.manifests if m.kind is not
                                       Kind.VIRTUAL_MACHINE), problems=(),
                       files=result.files, root=result.root)  # fmt: skip
    plan = plan_for(no_vm, lost, instance=B, take_over=frozenset({A}))
    back = {a.key for a in plan.actions if any(c.note == owners.TAKEN_BACK for c in a.changes)}
    assert back == {"Network/lab"}
    for name in ("root", "spare"):
        assert action(plan, Kind.VOLUME, name).op is Op.CONFLICT
    assert A in action(plan, Kind.STORAGE_POOL, "images").reason


def test_take_over_leaves_a_base_volume_a_third_instances_clone_uses(
        write: WriteFiles) -> None:  # fmt: skip
    """A third instance's VM uses the lost instance's volume through a clone backed by
    it: the base is that instance's too, and the pool."""
    result = load(write, STACK + SPARE)
    lost = _with_spare(result, owned_by(result, converged(result), A, inventory=False))
    third = "11111111-2222-4333-8444-555555555555"
    clone = dataclasses.replace(lost.volumes[("images", "root")], name="clone",
                                path="/srv/images/clone",
                                xml=lost.volumes[("images", "root")].xml.replace(
                                    "</volume>", "<backingStore><path>/srv/images/spare</path>"
                                    "<format type='qcow2'/></backingStore></volume>"))  # fmt: skip
    other = lost.domains["web"]
    xml = domain_xml.with_owner_instance(other.config_xml, third).replace(
        "<name>web</name>", "<name>other</name>").replace('volume="root"', 'volume="clone"')
    assert 'volume="clone"' in xml
    observed = dataclasses.replace(
        lost, volumes={**lost.volumes, ("images", "clone"): clone},
        domains={**lost.domains, "other": dataclasses.replace(other, name="other",
                                                              config_xml=xml, live_xml=xml)})
    plan = plan_for(result, observed, instance=B, take_over=frozenset({A}))
    back = {a.key for a in plan.actions if any(c.note == owners.TAKEN_BACK for c in a.changes)}
    assert back == {"VirtualMachine/web", "Network/lab", "Volume/root"}
    spare = action(plan, Kind.VOLUME, "spare")
    assert spare.op is Op.CONFLICT and third in spare.reason, spare.reason
    assert third in action(plan, Kind.STORAGE_POOL, "images").reason


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


# --- the CLI ---------------------------------------------------------------------------


def test_cli_instance_with_garbage_or_a_link_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from reconciler.cli import main

    state = tmp_path / "s3"
    state.mkdir(mode=0o700)
    file = state / statedir.INSTANCE_ID
    file.write_bytes(b"\x8f\x00\xfe\xc3(" * 20)
    assert main(["instance", "--state-dir", str(state)]) == 1
    _out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err and str(file) in err, err
    file.unlink()
    file.symlink_to(tmp_path / "gone")
    assert main(["instance", "--state-dir", str(state)]) == 1
    _out, err = capsys.readouterr()
    assert err.startswith("reconciler: error: ") and "symbolic link" in err, err


def test_take_back_refuses_an_id_no_record_names(write: WriteFiles) -> None:
    from reconciler.cli import _refuse_unknown_instance
    from reconciler.errors import ReconcilerError

    result = load(write)
    observed = owned_by(result, converged(result), A, inventory=False)
    _refuse_unknown_instance(A, observed)  # the VM's and the network's records name A
    nobody = "22222222-3333-4444-8555-666666666666"
    with pytest.raises(ReconcilerError, match=f"no VM or network .* naming instance {nobody}"
                       ) as raised:  # fmt: skip
        _refuse_unknown_instance(nobody, observed)
    assert f"instances named here: {A}" in str(raised.value)
    assert "adopt: true" in str(raised.value)
    # only a network names it: still a record
    only_net = dataclasses.replace(observed, domains={})
    _refuse_unknown_instance(A, only_net)


@pytest.mark.parametrize("create", [True, False])
def test_instance_id_hard_linked_from_another_state_dir_is_refused(
        tmp_path: Path, create: bool) -> None:  # fmt: skip
    """``ln st/instance-id st6/instance-id``: two state directories, one identity."""
    other = tmp_path / "st"
    other.mkdir()
    theirs = statedir.instance_id(other, create=True)
    mine = tmp_path / "st6"
    mine.mkdir()
    os.link(other / statedir.INSTANCE_ID, mine / statedir.INSTANCE_ID)
    for state in (mine, other):  # neither name is the instance's own
        with pytest.raises(StateDirError, match="hard-linked") as raised:
            statedir.instance_id(state, create=create)
        assert str(state / statedir.INSTANCE_ID) in str(raised.value)
        assert "copy" in str(raised.value) and "adopt --from-instance" in str(raised.value)
    (mine / statedir.INSTANCE_ID).unlink()
    assert statedir.instance_id(other, create=create) == theirs


def test_instance_id_being_made_by_another_process_is_not_a_hard_link(tmp_path: Path) -> None:
    # _create_instance links the id from its temporary file, then removes that name
    statedir.instance_id(tmp_path, create=True)
    file = tmp_path / statedir.INSTANCE_ID
    os.link(file, tmp_path / f".{statedir.INSTANCE_ID}.123.abcd.tmp")
    assert statedir.instance_id(tmp_path, create=False) is not None
