"""Golden output of the plan text, one test per kind of change: what a person reads.

Each test plans an edited manifest against libvirt as the previous version left
it (plan_text_support.py) and compares the whole text, so that any change to
how a plan reads shows up here, on purpose. ``ROOT`` stands for the test's
temporary directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.plan import Plan
from reconciler.report import plan_json, render_plan
from tests.unit.plan_text_support import plan_edit, plan_pending, stack


def shown(plan: Plan, root: Path) -> str:
    return render_plan(plan).replace(str(root), "ROOT") + "\n"


def test_device_added_live(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack(disks=", {volume: web-data}"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)
    + disk web-data (vdb, virtio, 20GiB), live

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_device_removed_live(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(disks=", {volume: web-data}"), stack())
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)
    - disk web-data (vdb, virtio, 20GiB), live

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_device_removed_at_restart(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(disks=", {volume: web-data, bus: sata}"), stack())
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-restart  (ROOT/m/stack.yaml:16:1)
    - disk web-data (sda, sata, 20GiB)
    restart pending: disks[web-data]; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)

Plan: 0 to create, 1 to update (1 needs restart), 0 to delete. 1 restart pending.
"""


def test_device_replaced_same_target(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(disks=", {file: /srv/images/old.img, target: vdb}"), stack(disks=", {volume: web-data, target: vdb}"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-restart  (ROOT/m/stack.yaml:16:1)
    ~ disk /srv/images/old.img -> web-data (vdb, virtio, 20GiB)
    restart pending: disks[1]; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)

Plan: 0 to create, 1 to update (1 needs restart), 0 to delete. 1 restart pending.
"""


def test_nic_replaced_by_a_new_mac(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack().replace('"52:54:00:00:00:01"}]\n', '"52:54:00:00:00:02"}]\n'))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)
    ~ interface 52:54:00:00:00:01 -> 52:54:00:00:00:02 (network lab, virtio), live

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_bus_change_is_one_line_and_keeps_the_disk_known_by_its_image(tmp_path: Path) -> None:
    # the disk is the same image: one change line, its target follows the bus (the
    # first free virtio name, vda being the root disk), nothing is attached or detached
    plan = plan_edit(tmp_path, stack(disks=", {volume: web-data, bus: ide}"), stack(disks=", {volume: web-data, bus: virtio}"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-restart  (ROOT/m/stack.yaml:16:1)
    ~ disks[1] (web-data): bus ide -> virtio, target hda -> vdb
    restart pending: disks[1]; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)

Plan: 0 to create, 1 to update (1 needs restart), 0 to delete. 1 restart pending.
"""
    web = next(a for a in plan.actions if a.name == "web")
    assert [s.verb for s in web.steps] == ["define-domain"]


def test_device_field_by_manifest_index(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(disks=", {volume: web-data}"), stack(disks=", {volume: web-data, cache: writeback}"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-restart  (ROOT/m/stack.yaml:16:1)
    ~ disks[1] (web-data): cache (none) -> writeback
    restart pending: disks[1]; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)

Plan: 0 to create, 1 to update (1 needs restart), 0 to delete. 1 restart pending.
"""


def test_restart_with_forced_off(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack(vm="\n  machine: q35\n  updatePolicy: restart"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-restart  (ROOT/m/stack.yaml:16:1)
    machine: pc -> q35
    !! restarts the VM: ACPI shutdown, forced off after 120s, then start

Plan: 0 to create, 1 to update (1 needs restart), 0 to delete.
"""


def test_forced_stop(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack(vm="\n  state: stopped"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)
    state: running -> stopped (live)
    !! shuts the VM down: ACPI shutdown, forced off after 120s

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_data_losing_delete(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack(without="web-data"))
    assert shown(plan, tmp_path) == """\
- Volume web-data: delete
    manifest ROOT/before/stack.yaml is gone; reclaimPolicy delete
    !! deletes the volume and its data

Plan: 0 to create, 0 to update, 1 to delete.
"""


def test_vm_delete_stops_it(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack(without="web"))
    assert shown(plan, tmp_path) == """\
- VirtualMachine web: delete
    manifest ROOT/before/stack.yaml is gone
    !! shuts the VM down: ACPI shutdown, forced off after 120s

Plan: 0 to create, 0 to update, 1 to delete.
"""


def test_restart_pending(tmp_path: Path) -> None:
    plan = plan_pending(tmp_path, stack(), stack(vm="\n  machine: q35"))
    assert shown(plan, tmp_path) == """\
! VirtualMachine web: restart pending  (ROOT/m/stack.yaml:16:1)
    restart pending: machine; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)
      machine: pc -> q35 (restart pending)

No changes.
"""


def test_restart_pending_device(tmp_path: Path) -> None:
    plan = plan_pending(tmp_path, stack(), stack(disks=", {volume: web-data, bus: sata}"))
    assert shown(plan, tmp_path) == """\
! VirtualMachine web: restart pending  (ROOT/m/stack.yaml:16:1)
    restart pending: disks[1]; takes effect when the VM restarts (shut it down and start it, or set updatePolicy: restart)
      + disk web-data (sda, sata, 20GiB)

No changes.
"""


def test_values_in_manifest_units(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack().replace("memory: 512MiB", "memory: 768MiB").replace("120s", "90s"))
    assert shown(plan, tmp_path) == """\
~ VirtualMachine web: update-live  (ROOT/m/stack.yaml:16:1)
    memory: 512MiB -> 768MiB (live)
    shutdownTimeout: 120s -> 90s (live)

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_dhcp_hosts(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(), stack().replace("{mac: \"52:54:00:00:00:01\", ip: 10.254.0.10, name: web}]", "{mac: \"52:54:00:00:00:09\", ip: 10.254.0.10, name: web}, {mac: \"52:54:00:00:00:03\", ip: 10.254.0.11}]"))
    assert shown(plan, tmp_path) == """\
~ Network lab: update-live  (ROOT/m/stack.yaml:26:1)
    ~ dhcp host 52:54:00:00:00:01 -> 52:54:00:00:00:09 (10.254.0.10, web), live
    + dhcp host 52:54:00:00:00:03 (10.254.0.11), live

Plan: 0 to create, 1 to update, 0 to delete.
"""


def test_json_carries_the_same_facts(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(disks=", {file: /srv/images/old.img, target: sdc, bus: sata}"),
                     stack(disks=", {volume: web-data, cache: writeback}",
                           vm="\n  machine: q35\n  updatePolicy: restart"))  # fmt: skip
    [web] = [a for a in plan_json(plan)["actions"] if a["name"] == "web"]
    text = json.dumps({k: web[k] for k in ("op", "devices", "disruptions")}, indent=2)
    assert text == (Path(__file__).parent / "data" / "plan-json" / "restart.json").read_text()
    changes = {c["path"]: c for c in web["changes"]}
    assert changes["disks[web-data].cache"]["manifestPath"] == "disks[1].cache"
    assert "manifestPath" not in changes["machine"]


def test_network_restart_and_volume_growth(tmp_path: Path) -> None:
    after = stack().replace("bridge: virbr-lab", "bridge: virbr-lab\n  mtu: 9000")
    plan = plan_edit(tmp_path, stack(), after.replace("capacity: 1GiB", "capacity: 1536MiB"))
    assert shown(plan, tmp_path) == """\
~ Volume web-root: update-live  (ROOT/m/stack.yaml:6:1)
    capacity: 1GiB -> 1536MiB (live)
~ Network lab: update-restart  (ROOT/m/stack.yaml:26:1)
    mtu: (none) -> 9000
    restart pending: mtu; takes effect when the network restarts (virsh net-destroy, then net-start)

Plan: 0 to create, 2 to update (1 needs restart), 0 to delete. 1 restart pending.
"""


def test_volume_replace_allowed_and_not(tmp_path: Path) -> None:
    after = stack().replace("reclaimPolicy: delete}", "reclaimPolicy: delete, format: raw}")
    allowed = plan_edit(tmp_path, stack(), after, allow_replace=frozenset({"Volume/web-data"}))
    assert shown(allowed, tmp_path) == """\
! Volume web-data: replace  (ROOT/m/stack.yaml:11:1)
    format: qcow2 -> raw
    !! deletes the volume and its data, then creates it again empty

Plan: 0 to create, 1 to update, 0 to delete.
"""
    refused = plan_edit(tmp_path, stack(), after)
    assert shown(refused, tmp_path) == """\
! Volume web-data: replace  (ROOT/m/stack.yaml:11:1)
    changing format recreates the volume and loses its data; not done unless asked: reconciler apply --allow-replace Volume/web-data
    format: qcow2 -> raw

Plan: 0 to create, 1 to update, 0 to delete. 1 refused.
"""


def test_a_volume_create_says_its_capacity_and_format(tmp_path: Path) -> None:
    plan = plan_edit(tmp_path, stack(without="web-data"), stack())
    text = shown(plan, tmp_path)
    assert """\
+ Volume web-data: create  (ROOT/m/stack.yaml:11:1)
    capacity: 20GiB
    format: qcow2
""" in text, text


def test_a_disk_renamed_through_a_symlinked_folder_is_the_same_disk(tmp_path: Path) -> None:
    # /x/plink is a symlink to the pool's folder: reconcile.real_paths says so
    before = stack(disks=", {volume: web-data}")
    after = stack(disks=", {file: /x/plink/web-data}")
    plan = plan_edit(tmp_path, before, after,
                     real_paths={"/x/plink/web-data": "/srv/images/web-data"})
    (action,) = [a for a in plan.actions if a.name == "web"]
    assert not any(s.verb in ("attach-device", "detach-device") for s in action.steps)
    text = shown(plan, tmp_path)
    assert "+ disk" not in text and "- disk" not in text, text
    # one change of the disk at its place (the format the file: disk defaults to is
    # said too: preflight refuses it when the image's header says qcow2)
    assert "~ disks[1] (/x/plink/web-data): format qcow2 -> raw, source volume web-data -> " \
        "file /x/plink/web-data" in text, text


def test_a_disk_image_the_running_domain_has_is_never_attached_again(tmp_path: Path) -> None:
    from reconciler.planner.vm import _vm_live_updates

    desired = {"disks[/x/plink/v1].bus": "virtio", "disks[/x/plink/v1].target": "vdc"}
    live = {"disks[v1].bus": "virtio", "disks[v1].target": "vdb"}
    # (the old name's detach is held back here: only the attach is looked at)
    steps, pending, _ = _vm_live_updates(desired, {}, live, lambda: "", "",
                                         frozenset({"disks[v1]"}), held=frozenset({"/x/plink/v1"}))
    assert not any(s.verb == "attach-device" for s in steps)
    assert any(c.path.startswith("disks[/x/plink/v1]") for c in pending)
