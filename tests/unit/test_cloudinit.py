"""cloud-init seeds: the files, the image, and how the planner keeps the seed volume.

The planner is exercised on libvirt-free snapshots: ``applied`` plays a plan's
steps on an ``Observed`` value the way libvirt would (define, start, restart,
write or delete a seed volume), so a test can apply, edit and plan again.
"""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import pycdlib
import pytest

from reconciler.cloudinit import build_iso, make_seed
from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult, load_directory
from reconciler.model import CloudInit, Kind, VirtualMachineSpec
from reconciler.plan import Action, Op, Plan
from reconciler.planner import PlanOptions, make_plan
from reconciler.snapshot import DomainRecord, Observed, PoolRecord, VolumeRecord
from reconciler.xml import domain as domain_xml
from reconciler.xml import pool as pool_xml
from tests.unit.conftest import WriteFiles

STACK = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: /srv/images}
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
  disks: [{volume: root}]
  cloudInit:
    userData: |
      #cloud-config
      hostname: web
    metaData: {zone: a}
  updatePolicy: manual
"""


# --- the files and the image ---------------------------------------------------------


def test_seed_files_meta_data_first_and_instance_id_from_content() -> None:
    seed = make_seed("web", CloudInit(user_data="#cloud-config\n", meta_data={"zone": "a"}))
    files = seed.as_dict()
    assert list(files) == ["meta-data", "user-data"]
    assert files["meta-data"] == (
        f"instance-id: {seed.instance_id}\nlocal-hostname: web\nzone: a\n"
    )
    assert files["user-data"] == "#cloud-config\n"
    other = make_seed("web", CloudInit(user_data="#cloud-config\nx: 1\n", meta_data={"zone": "a"}))
    assert other.instance_id != seed.instance_id and other.digest != seed.digest
    assert make_seed("web", CloudInit(user_data="#cloud-config\n", meta_data={"zone": "a"})) == seed


def test_seed_network_config_and_explicit_meta_data() -> None:
    seed = make_seed(
        "web",
        CloudInit(
            meta_data={"instance-id": "fixed", "local-hostname": "www"},
            network_config={"version": 2, "ethernets": {"eth0": {"dhcp4": True}}},
        ),
    )
    files = seed.as_dict()
    assert seed.instance_id == "fixed"
    assert files["meta-data"] == "instance-id: fixed\nlocal-hostname: www\n"
    assert files["network-config"] == "ethernets:\n  eth0:\n    dhcp4: true\nversion: 2\n"
    assert files["user-data"] == ""


def _read_iso(image: bytes) -> tuple[str, dict[str, str], dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        by_rr: dict[str, str] = {}
        by_joliet: dict[str, str] = {}
        for child in iso.list_children(iso_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path="/" + name)
            by_rr[name] = out.getvalue().decode()
        for child in iso.list_children(joliet_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            by_joliet[child.file_identifier().decode("utf-16-be")] = ""
        return label, by_rr, by_joliet
    finally:
        iso.close()


def test_image_is_cidata_with_rock_ridge_and_joliet_names() -> None:
    seed = make_seed("web", CloudInit(user_data="#cloud-config\n", network_config={"version": 2}))
    label, files, joliet = _read_iso(build_iso(seed.as_dict()))
    assert label == "cidata"
    assert files == seed.as_dict()
    assert set(joliet) == {"meta-data", "user-data", "network-config"}


def test_image_is_the_same_bytes_whatever_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_seed("web", CloudInit(user_data="#cloud-config\n")).as_dict()
    first = build_iso(files)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert build_iso(files) == first
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# --- the model ---------------------------------------------------------------------


def _load(write: WriteFiles, text: str) -> LoadResult:
    return load_directory(write(**{"stack.yaml": text}))


def test_seed_needs_a_pool_when_the_vm_has_no_volume_disk(write: WriteFiles) -> None:
    result = _load(write, """
        apiVersion: reconciler/v1
        kind: VirtualMachine
        metadata: {name: web}
        spec: {memory: 64MiB, cloudInit: {userData: "#cloud-config"}}
        """)  # fmt: skip
    [problem] = result.problems
    assert "cloudInit needs a storage pool" in problem.message
    assert problem.field == "spec.cloudInit"


def test_seed_pool_must_exist_and_its_name_is_reserved(write: WriteFiles) -> None:
    result = _load(write, STACK.replace("updatePolicy: manual", "  pool: elsewhere")
                   + "\n---\napiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: web-cidata}"
                   "\nspec: {pool: images, capacity: 1MiB}\n")  # fmt: skip
    messages = [p.message for p in result.problems]
    assert len(messages) == 2, messages
    assert any("no StoragePool 'elsewhere'" in m for m in messages), messages
    assert any("seed volume 'web-cidata' is also declared as a Volume" in m for m in messages)


def test_seed_cdrom_is_the_last_ide_slot_or_next_sata(write: WriteFiles) -> None:
    spec = _load(write, STACK).manifests[2].spec
    assert isinstance(spec, VirtualMachineSpec) and spec.cloud_init is not None
    assert (spec.cloud_init.target, spec.cloud_init.bus, spec.cloud_init.pool) == (
        "hdd",
        "ide",
        None,
    )
    q35 = _load(write, STACK.replace("memory: 512MiB", "memory: 512MiB\n  machine: q35\n"
                                     "  cdroms: [{}]")).manifests[2].spec  # fmt: skip
    assert isinstance(q35, VirtualMachineSpec) and q35.cloud_init is not None
    assert (q35.cloud_init.target, q35.cloud_init.bus) == ("sdb", "sata")


# --- the planner ---------------------------------------------------------------------


def applied(plan: Plan, observed: Observed) -> Observed:
    """``observed`` after libvirt carried out ``plan`` (the steps the seed tests use)."""
    domains = dict(observed.domains)
    volumes = dict(observed.volumes)
    objects = dict(observed.inventory.objects)
    for a in plan.actions:
        if a.op in (Op.CONFLICT, Op.ERROR):
            continue
        if a.owner_record is not None:
            objects[a.key] = a.owner_record
        for step in a.steps:
            dom = domains.get(a.name)
            args = step.args
            if step.verb == "define-domain":
                xml = args["xml"]
                domains[a.name] = (
                    DomainRecord(a.name, f"uuid-{a.name}", False, False, xml, None)
                    if dom is None
                    else dataclasses.replace(dom, config_xml=xml)
                )
            elif step.verb in ("start-domain", "restart-domain"):
                assert dom is not None
                domains[a.name] = dataclasses.replace(dom, active=True, live_xml=dom.config_xml)
            elif step.verb == "stop-domain":
                assert dom is not None
                domains[a.name] = dataclasses.replace(dom, active=False, live_xml=None)
            elif step.verb == "undefine-domain":
                del domains[a.name]
            elif step.verb in ("write-seed", "create-volume"):
                pool = args["pool"]
                name = args.get("volume", a.name)
                volumes[(pool, name)] = VolumeRecord(pool, name, f"/srv/{pool}/{name}", args["xml"])
            elif step.verb == "delete-seed":
                del volumes[(args["pool"], args["volume"])]
        if a.op is Op.DELETE:
            objects.pop(a.key, None)
    pools = {"images": PoolRecord("images", "uuid-images", True, False,
                                  pool_xml.render("images", _pool_spec()))}  # fmt: skip
    return dataclasses.replace(
        observed, domains=domains, volumes=volumes, pools=pools, inventory=Inventory(objects)
    )


def _pool_spec() -> Any:
    from reconciler.model import StoragePoolSpec

    return StoragePoolSpec(path="/srv/images")


def plan_for(result: LoadResult, observed: Observed) -> Plan:
    assert result.problems == ()
    return make_plan(result, observed, PlanOptions())


def vm_action(plan: Plan) -> Action:
    [found] = [a for a in plan.actions if a.kind is Kind.VIRTUAL_MACHINE]
    return found


def edit_user_data(result: LoadResult, user_data: str) -> LoadResult:
    manifests = []
    for m in result.manifests:
        if isinstance(m.spec, VirtualMachineSpec) and m.spec.cloud_init is not None:
            ci = dataclasses.replace(m.spec.cloud_init, user_data=user_data)
            document = {
                **m.document,
                "spec": {**m.document["spec"], "cloudInit": {"userData": user_data}},
            }
            m = dataclasses.replace(m, spec=dataclasses.replace(m.spec, cloud_init=ci),
                                    document=document)  # fmt: skip
        manifests.append(m)
    return dataclasses.replace(result, manifests=tuple(manifests))


def converge(result: LoadResult, observed: Observed | None = None) -> Observed:
    observed = applied(plan_for(result, observed or Observed()), observed or Observed())
    again = plan_for(result, observed)
    assert not again.has_changes, [(a.key, a.op, a.changes) for a in again.actions]
    return observed


def test_create_writes_the_seed_before_defining_the_vm(write: WriteFiles) -> None:
    plan = plan_for(_load(write, STACK), Observed())
    vm = vm_action(plan)
    assert [s.verb for s in vm.steps] == ["write-seed", "define-domain", "start-domain"]
    seed = vm.steps[0].args
    assert (seed["pool"], seed["volume"]) == ("images", "web-cidata")
    assert seed["files"]["user-data"] == "#cloud-config\nhostname: web\n"
    assert "StoragePool/images" in vm.requires
    assert vm.owner_record["seeds"] == [{"pool": "images", "volume": "web-cidata"}]
    xml = vm.steps[1].args["xml"]
    assert '<source pool="images" volume="web-cidata"/>' in xml
    assert f"<rc:cloudInit>{seed['digest']}</rc:cloudInit>" in xml
    assert "files" not in vm.steps[0].describe() and "digest=" in vm.steps[0].describe()


def test_changed_seed_is_rewritten_and_waits_for_a_restart(write: WriteFiles) -> None:
    result = _load(write, STACK)
    observed = converge(result)
    changed = edit_user_data(result, "#cloud-config\nhostname: web2\n")
    vm = vm_action(plan_for(changed, observed))
    assert vm.op is Op.UPDATE_RESTART
    assert [c.path for c in vm.changes] == ["cloudInit"]
    assert [s.verb for s in vm.steps] == ["write-seed", "define-domain"]
    after = applied(plan_for(changed, observed), observed)
    pending = vm_action(plan_for(changed, after))
    assert pending.op is Op.NOOP and [c.path for c in pending.restart_pending] == ["cloudInit"]
    # reverted: the old seed is written back and nothing waits for a restart any more
    reverted = vm_action(plan_for(result, after))
    assert [s.verb for s in reverted.steps] == ["write-seed", "define-domain"]
    assert reverted.op is Op.UPDATE_LIVE and reverted.restart_pending == ()


def test_changed_seed_with_update_policy_restart_restarts(write: WriteFiles) -> None:
    result = _load(write, STACK.replace("updatePolicy: manual", "updatePolicy: restart"))
    observed = converge(result)
    vm = vm_action(plan_for(edit_user_data(result, "#cloud-config\n"), observed))
    assert vm.op is Op.UPDATE_RESTART and vm.restart_pending == ()
    assert [s.verb for s in vm.steps] == ["write-seed", "define-domain", "restart-domain"]


def test_missing_seed_volume_is_written_again(write: WriteFiles) -> None:
    result = _load(write, STACK)
    observed = converge(result)
    gone = dataclasses.replace(observed, volumes={})
    vm = vm_action(plan_for(result, gone))
    assert vm.op is Op.UPDATE_LIVE
    assert [s.verb for s in vm.steps] == ["write-seed", "define-domain"]


def test_someone_elses_volume_of_that_name_is_not_overwritten(write: WriteFiles) -> None:
    result = _load(write, STACK)
    theirs = VolumeRecord("images", "web-cidata", "/srv/images/web-cidata", "<volume/>")
    vm = vm_action(plan_for(result, Observed(volumes={("images", "web-cidata"): theirs})))
    assert vm.op is Op.ERROR and "not the cloud-init seed of this VM" in vm.reason


def test_seed_removed_from_the_manifest_is_deleted_when_unused(write: WriteFiles) -> None:
    result = _load(write, STACK)
    observed = converge(result)
    without = _load(write, STACK.split("  cloudInit:")[0])
    vm = vm_action(plan_for(without, observed))
    # the running domain still reads it: kept until it restarts
    assert "delete-seed" not in [s.verb for s in vm.steps]
    assert vm.owner_record["seeds"] == [{"pool": "images", "volume": "web-cidata"}]
    stopped = dataclasses.replace(
        observed,
        domains={"web": dataclasses.replace(observed.domains["web"], active=False, live_xml=None)},
    )
    vm = vm_action(plan_for(without, stopped))
    assert [s.verb for s in vm.steps][-1] == "delete-seed"
    assert "seeds" not in vm.owner_record


def test_prune_deletes_the_seed_with_the_vm(write: WriteFiles) -> None:
    result = _load(write, STACK)
    observed = converge(result)
    gone = load_directory(write(**{"stack.yaml": STACK.split("---\napiVersion: reconciler/v1\n"
                                                              "kind: VirtualMachine")[0]}))  # fmt: skip
    vm = vm_action(plan_for(gone, observed))
    assert vm.op is Op.DELETE
    assert [s.verb for s in vm.steps] == ["stop-domain", "undefine-domain", "delete-seed"]
    assert vm.steps[-1].args == {"pool": "images", "volume": "web-cidata"}


def test_rendered_seed_cdrom_round_trips(write: WriteFiles) -> None:
    spec = _load(write, STACK).manifests[2].spec
    assert isinstance(spec, VirtualMachineSpec)
    context: dict[str, Any] = {
        "volume_pools": {"root": "images"},
        "volume_formats": {"root": "qcow2"},
        "cloud_init_seed": domain_xml.CloudInitSeed("images", "web-cidata", "abc"),
    }
    observed = domain_xml.observe(domain_xml.render("web", spec, **context))
    assert observed == domain_xml.project(spec, **context)
    assert observed["cdroms[hdd].volume"] == "web-cidata"
    assert observed["cloudInit"] == "abc"
