"""The planner, pure: manifests + a libvirt snapshot (made of our own rendered XML) -> Plan."""

from __future__ import annotations

import dataclasses
from typing import Any

from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult, load_directory
from reconciler.model import CpuSpec, Kind, Manifest
from reconciler.plan import Op, Plan
from reconciler.planner import PlanOptions, digest, make_plan
from reconciler.snapshot import DomainRecord, NetworkRecord, Observed, PoolRecord, VolumeRecord
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml
from tests.unit.conftest import WriteFiles

STACK = """
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
kind: Network
metadata: {name: lab}
spec:
  mode: isolated
  bridge: virbr-lab
  ipv4:
    address: 10.254.0.1
    prefix: 24
    dhcp:
      start: 10.254.0.100
      end: 10.254.0.200
      hosts: [{mac: "52:54:00:00:00:01", ip: 10.254.0.10, name: web}]
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
  interfaces: [{network: lab, mac: "52:54:00:00:00:01"}]
  state: running
"""


def load(write: WriteFiles, text: str = STACK, **more: str) -> LoadResult:
    root = write(**{"stack.yaml": text}, **more)
    result = load_directory(root)
    assert result.problems == ()
    return result


def converged(result: LoadResult, *, running: bool = True) -> Observed:
    """libvirt as it would be right after applying ``result``: our own XML, owned."""
    m = {x.key: x for x in result.manifests}
    domains: dict[str, DomainRecord] = {}
    networks: dict[str, NetworkRecord] = {}
    pools: dict[str, PoolRecord] = {}
    volumes: dict[tuple[str, str], VolumeRecord] = {}
    objects: dict[str, dict[str, Any]] = {}
    for (kind, name), man in m.items():
        spec: Any = man.spec
        key = f"{kind.value}/{name}"
        objects[key] = {"manifest": man.source.path, "digest": digest(man)}
        if kind is Kind.STORAGE_POOL:
            pools[name] = PoolRecord(
                name, f"uuid-{name}", True, spec.autostart,
                pool_xml.render(name, spec, uuid=f"uuid-{name}"),
            )
        elif kind is Kind.VOLUME:
            objects[key].update(pool=spec.pool, reclaimPolicy=spec.reclaim_policy)
            volumes[(spec.pool, name)] = VolumeRecord(
                spec.pool, name, f"/srv/images/{name}", volume_xml.render(name, spec)
            )
        elif kind is Kind.NETWORK:
            xml = network_xml.render(name, spec, uuid=f"uuid-{name}")  # as libvirt dumps it
            networks[name] = NetworkRecord(name, f"uuid-{name}", True, spec.autostart, xml, xml)
        else:
            objects[key].update(shutdownTimeout=spec.shutdown_timeout)
            xml = domain_xml.render(
                name,
                spec,
                uuid=f"uuid-{name}",
                ownership=domain_xml.Ownership(man.source.path, digest(man)),
                volume_pools={"root": "images"},
                volume_formats={"root": "qcow2"},
            )
            active = running and spec.state == "running"
            domains[name] = DomainRecord(
                name, f"uuid-{name}", active, spec.autostart, xml, xml if active else None
            )
    return Observed(domains, networks, pools, volumes, {}, Inventory(objects))


def plan_for(result: LoadResult, observed: Observed, **options: Any) -> Plan:
    return make_plan(result, observed, PlanOptions(**options))


def action(plan: Plan, kind: Kind, name: str) -> Any:
    [found] = [a for a in plan.actions if a.kind is kind and a.name == name]
    return found


def edit(result: LoadResult, name: str, **spec_changes: Any) -> LoadResult:
    """The same manifests, with fields of one spec replaced (as if the file was edited)."""
    manifests = []
    for man in result.manifests:
        if man.name == name:
            man = dataclasses.replace(man, spec=dataclasses.replace(man.spec, **spec_changes))
        manifests.append(man)
    return dataclasses.replace(result, manifests=tuple(manifests))


def test_fresh_host_creates_in_dependency_order(write: WriteFiles) -> None:
    result = load(write)
    plan = plan_for(result, Observed())
    assert [(a.kind, a.op) for a in plan.actions] == [
        (Kind.STORAGE_POOL, Op.CREATE),
        (Kind.VOLUME, Op.CREATE),
        (Kind.NETWORK, Op.CREATE),
        (Kind.VIRTUAL_MACHINE, Op.CREATE),
    ]
    vm = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert [s.verb for s in vm.steps] == ["define-domain", "start-domain"]
    assert vm.requires == ("Volume/root", "Network/lab")
    assert "<rc:owner" in vm.steps[0].args["xml"]
    assert plan.summary() == "Plan: 4 to create, 0 to update, 0 to delete."


def test_converged_host_has_no_changes(write: WriteFiles) -> None:
    result = load(write)
    plan = plan_for(result, converged(result))
    assert not plan.has_changes
    assert {a.op for a in plan.actions} == {Op.NOOP}


def test_unowned_vm_is_a_conflict_unless_adopted(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    vm = observed.domains["web"]
    bare = vm.config_xml.split("<metadata>")[0] + vm.config_xml.split("</metadata>")[1]
    inventory = Inventory(
        {k: v for k, v in observed.inventory.objects.items() if not k.startswith("VirtualMachine")}
    )
    observed = dataclasses.replace(
        observed,
        domains={"web": dataclasses.replace(vm, config_xml=bare, live_xml=bare)},
        inventory=inventory,
    )
    conflict = action(plan_for(result, observed), Kind.VIRTUAL_MACHINE, "web")
    assert conflict.op is Op.CONFLICT and conflict.steps == ()
    assert "set adopt: true" in conflict.reason
    adopted = action(
        plan_for(edit(result, "web", adopt=True), observed), Kind.VIRTUAL_MACHINE, "web"
    )
    assert adopted.op is Op.UPDATE_LIVE
    assert [c.path for c in adopted.changes] == ["ownership"]
    assert [s.verb for s in adopted.steps] == ["define-domain"]


def test_memory_within_max_is_live_beyond_is_restart(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    live = action(
        plan_for(edit(result, "web", memory=768 * 1024**2), observed), Kind.VIRTUAL_MACHINE, "web"
    )
    assert live.op is Op.UPDATE_LIVE
    assert [(c.path, c.live) for c in live.changes] == [("memory", True)]
    assert [s.verb for s in live.steps] == ["define-domain", "set-memory"]
    assert live.restart_pending == ()
    more = action(
        plan_for(edit(result, "web", memory=2 * 1024**3, max_memory=2 * 1024**3), observed),
        Kind.VIRTUAL_MACHINE,
        "web",
    )
    assert more.op is Op.UPDATE_RESTART
    assert {c.path for c in more.restart_pending} == {"memory", "maxMemory"}


def test_vcpus_added_live_removed_at_restart(write: WriteFiles) -> None:
    result = load(write)
    up = action(
        plan_for(edit(result, "web", vcpus=2), converged(result)), Kind.VIRTUAL_MACHINE, "web"
    )
    assert up.op is Op.UPDATE_LIVE
    assert [s.describe() for s in up.steps] == ["define-domain", "set-vcpus path=vcpus count=2"]
    two = edit(result, "web", vcpus=2)
    down = action(plan_for(result, converged(two)), Kind.VIRTUAL_MACHINE, "web")
    assert down.op is Op.UPDATE_RESTART
    assert [c.path for c in down.restart_pending] == ["vcpus"]


def test_restart_pending_clears_when_manifest_is_reverted(write: WriteFiles) -> None:
    result = load(write)
    q35 = edit(result, "web", machine="q35")
    observed = converged(result)
    # q35 was applied to the definition only: the running domain still has pc
    q35_config = converged(q35, running=False).domains["web"].config_xml
    vm = observed.domains["web"]
    pending_state = dataclasses.replace(
        observed, domains={"web": dataclasses.replace(vm, config_xml=q35_config)}
    )
    still = action(plan_for(q35, pending_state), Kind.VIRTUAL_MACHINE, "web")
    assert still.op is Op.NOOP and [c.path for c in still.restart_pending] == ["machine"]
    reverted = action(plan_for(result, pending_state), Kind.VIRTUAL_MACHINE, "web")
    assert reverted.op is Op.UPDATE_LIVE  # the running domain already has it
    assert [s.verb for s in reverted.steps] == ["define-domain"]
    assert reverted.restart_pending == ()


def test_update_policy_restart_restarts_gracefully(write: WriteFiles) -> None:
    result = load(write)
    act = action(
        plan_for(edit(result, "web", machine="q35", update_policy="restart"), converged(result)),
        Kind.VIRTUAL_MACHINE,
        "web",
    )
    assert act.op is Op.UPDATE_RESTART
    assert [s.verb for s in act.steps] == ["define-domain", "restart-domain"]
    assert act.restart_pending == ()


def test_power_state_is_enforced(write: WriteFiles) -> None:
    result = load(write)
    stopped = action(
        plan_for(result, converged(result, running=False)), Kind.VIRTUAL_MACHINE, "web"
    )
    assert [(c.path, c.old, c.new) for c in stopped.changes] == [("state", "stopped", "running")]
    assert [s.verb for s in stopped.steps] == ["start-domain"]
    halt = action(
        plan_for(edit(result, "web", state="stopped", shutdown_timeout=30.0), converged(result)),
        Kind.VIRTUAL_MACHINE,
        "web",
    )
    assert [s.describe() for s in halt.steps] == ["stop-domain timeout=30.0"]


def test_hotplug_nic_and_disk(write: WriteFiles) -> None:
    result = load(write)
    base = next(m for m in result.manifests if m.name == "web").spec
    nic = dataclasses.replace(base.interfaces[0], mac="52:54:00:00:00:02")
    act = action(
        plan_for(edit(result, "web", interfaces=(*base.interfaces, nic)), converged(result)),
        Kind.VIRTUAL_MACHINE,
        "web",
    )
    assert act.op is Op.UPDATE_LIVE
    assert [s.verb for s in act.steps] == ["define-domain", "attach-device"]
    assert "52:54:00:00:00:02" in act.steps[1].args["xml"]
    assert act.restart_pending == ()
    disk = dataclasses.replace(base.disks[0], target="vdb", volume=None, file="/srv/extra.img",
                               format="raw")
    two = edit(result, "web", disks=(*base.disks, disk))
    removed = action(plan_for(result, converged(two)), Kind.VIRTUAL_MACHINE, "web")
    assert [s.verb for s in removed.steps] == ["define-domain", "detach-device"]
    assert "vdb" in removed.steps[1].args["xml"]


def test_dhcp_hosts_change_live_on_active_network(write: WriteFiles) -> None:
    result = load(write)
    spec: Any = next(m for m in result.manifests if m.name == "lab").spec
    host = dataclasses.replace(spec.ipv4.dhcp.hosts[0], ip="10.254.0.11")
    dhcp = dataclasses.replace(spec.ipv4.dhcp, hosts=(host,))
    act = action(
        plan_for(
            edit(result, "lab", ipv4=dataclasses.replace(spec.ipv4, dhcp=dhcp)), converged(result)
        ),
        Kind.NETWORK,
        "lab",
    )
    assert act.op is Op.UPDATE_LIVE
    assert [s.describe() for s in act.steps] == [
        "define-network",
        "net-update command=delete section=ip-dhcp-host path=ipv4.dhcp.hosts[52:54:00:00:00:01]",
        "net-update command=add section=ip-dhcp-host path=ipv4.dhcp.hosts[52:54:00:00:00:01]",
    ]
    assert "10.254.0.11" in act.steps[2].args["xml"]
    mtu = action(plan_for(edit(result, "lab", mtu=9000), converged(result)), Kind.NETWORK, "lab")
    assert mtu.op is Op.UPDATE_RESTART
    assert [c.path for c in mtu.restart_pending] == ["mtu"]


def test_volume_grow_shrink_and_replace(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    bigger = edit(result, "root", capacity=2 * 1024**3)
    grow = action(plan_for(bigger, observed), Kind.VOLUME, "root")
    assert grow.op is Op.UPDATE_LIVE
    # the running VM has it open: grown through the domain, so the guest sees it at once
    assert [s.describe() for s in grow.steps] == [
        f"block-resize domain=web target=vda capacity={2 * 1024**3}"
    ]
    offline = action(plan_for(bigger, converged(result, running=False)), Kind.VOLUME, "root")
    assert [s.describe() for s in offline.steps] == [
        f"resize-volume pool=images capacity={2 * 1024**3}"
    ]
    shrink = action(
        plan_for(edit(result, "root", capacity=512 * 1024**2), observed), Kind.VOLUME, "root"
    )
    assert shrink.op is Op.ERROR
    assert "shrinking capacity from 1GiB to 512MiB is refused" in shrink.reason
    raw = edit(result, "root", format="raw")
    blocked = action(plan_for(raw, observed), Kind.VOLUME, "root")
    assert blocked.op is Op.REPLACE and blocked.steps == ()
    assert "--allow-replace Volume/root" in blocked.reason
    allowed = action(
        plan_for(raw, observed, allow_replace=frozenset({"Volume/root"})), Kind.VOLUME, "root"
    )
    assert [s.verb for s in allowed.steps] == ["delete-volume", "create-volume"]


def test_prune_keeps_what_a_declared_or_defined_vm_still_uses(write: WriteFiles) -> None:
    """A Volume (reclaimPolicy delete), Network and pool whose manifests are gone while the
    VM that uses them is still declared and running: kept, and the plan says why."""
    result = load(write)
    observed = converged(result)
    deleting = dataclasses.replace(observed, inventory=observed.inventory.with_entry(
        "Volume/root", {"pool": "images", "reclaimPolicy": "delete"}))  # fmt: skip
    stack_gone = _without(result, "images", "root", "lab")
    plan = plan_for(stack_gone, deleting)
    assert not [a for a in plan.actions if a.op in (Op.DELETE, Op.FORGET)], plan.actions
    assert "kept while in use" in plan.prune_blocked
    assert "Volume/root by VirtualMachine/web" in plan.prune_blocked
    assert "Network/lab by VirtualMachine/web" in plan.prune_blocked
    # the VM goes in the same plan: then so do they, VM first
    everything = _without(result, "images", "root", "lab", "web")
    order = [(a.kind, a.op) for a in plan_for(everything, deleting).actions
             if a.op in (Op.DELETE, Op.FORGET)]
    assert order[0] == (Kind.VIRTUAL_MACHINE, Op.DELETE)
    assert (Kind.VOLUME, Op.DELETE) in order and (Kind.NETWORK, Op.DELETE) in order


def _without(result: LoadResult, *names: str) -> LoadResult:
    keep: tuple[Manifest, ...] = tuple(m for m in result.manifests if m.name not in names)
    return dataclasses.replace(result, manifests=keep)


def test_prune_deletes_in_reverse_order_and_keeps_retained_data(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    kept = _without(result, "web", "lab", "root")
    plan = plan_for(kept, observed)
    assert [(a.kind, a.op) for a in plan.actions if a.op is not Op.NOOP] == [
        (Kind.VIRTUAL_MACHINE, Op.DELETE),
        (Kind.NETWORK, Op.DELETE),
        (Kind.VOLUME, Op.FORGET),
    ]
    vm = action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert [s.verb for s in vm.steps] == ["stop-domain", "undefine-domain"]
    assert "reclaimPolicy retain keeps its data" in action(plan, Kind.VOLUME, "root").reason


def test_no_prune_while_a_manifest_fails_to_load(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    broken = dataclasses.replace(_without(result, "web"), problems=(object(),))  # type: ignore[arg-type]
    plan = plan_for(broken, observed)
    assert not any(a.op is Op.DELETE for a in plan.actions)
    assert "not every manifest loaded" in plan.prune_blocked
    off = plan_for(_without(result, "web"), observed, prune=False)
    assert "prune is off" in off.prune_blocked


def test_password_file_unreadable_is_an_error_for_that_vm_only(write: WriteFiles) -> None:
    text = STACK.replace("  state: running", "  state: running\n  graphics: {passwordFile: /nope}")
    result = load(write, text)
    plan = plan_for(result, Observed())
    assert action(plan, Kind.VIRTUAL_MACHINE, "web").op is Op.ERROR
    assert action(plan, Kind.NETWORK, "lab").op is Op.CREATE


def test_digest_ignores_formatting(write: WriteFiles) -> None:
    a = load(write).manifests[0]
    b = load(
        write,
        STACK.replace(
            "spec: {path: /srv/images, autostart: true}",
            "spec:\n  autostart: true\n  path: /srv/images",
        ),
    ).manifests[0]
    assert digest(a) == digest(b)


def test_settings_kept_only_in_the_inventory_are_changes(write: WriteFiles) -> None:
    """reclaimPolicy and shutdownTimeout have no place in libvirt: a change to either is
    an update the apply records, not 'No changes' (or prune would use the old value)."""
    result = load(write)
    observed = converged(result)
    changed = edit(edit(result, "root", reclaim_policy="delete"), "web", shutdown_timeout=7.0)
    plan = plan_for(changed, observed)
    vol, vm = action(plan, Kind.VOLUME, "root"), action(plan, Kind.VIRTUAL_MACHINE, "web")
    assert (vol.op, [(c.path, c.old, c.new) for c in vol.changes], vol.steps) == (
        Op.UPDATE_LIVE, [("reclaimPolicy", "retain", "delete")], ())
    assert vol.owner_record["reclaimPolicy"] == "delete"
    assert vm.op is Op.UPDATE_LIVE and vm.steps == ()
    assert [(c.path, c.new) for c in vm.changes] == [("shutdownTimeout", 7.0)]
    assert vm.owner_record["shutdownTimeout"] == 7.0
    assert plan.has_changes and not plan.has_errors


def test_a_replace_nobody_allowed_is_an_error(write: WriteFiles) -> None:
    result = load(write)
    observed = converged(result)
    plan = plan_for(edit(result, "root", format="raw"), observed)
    vol = action(plan, Kind.VOLUME, "root")
    assert vol.op is Op.REPLACE and vol.steps == () and vol.refused
    assert plan.has_errors and "1 refused" in plan.summary()
    allowed = plan_for(edit(result, "root", format="raw"), observed,
                       allow_replace=frozenset({"Volume/root"}))  # fmt: skip
    assert not action(allowed, Kind.VOLUME, "root").refused and not allowed.has_errors


def test_transient_objects_are_defined_again_without_a_restart(write: WriteFiles) -> None:
    """`virsh undefine` / `net-undefine` leave a running object without a definition."""
    result = load(write)
    observed = converged(result)
    dom, net = observed.domains["web"], observed.networks["lab"]
    observed = dataclasses.replace(
        observed,
        domains={"web": dataclasses.replace(dom, persistent=False)},
        networks={"lab": dataclasses.replace(net, persistent=False)},
    )
    plan = plan_for(result, observed)
    for kind, name, verb in ((Kind.VIRTUAL_MACHINE, "web", "define-domain"),
                             (Kind.NETWORK, "lab", "define-network")):  # fmt: skip
        a = action(plan, kind, name)
        assert a.op is Op.UPDATE_LIVE, (name, a)
        assert [(c.path, c.old, c.new) for c in a.changes] == [("persistent", False, True)]
        assert [s.verb for s in a.steps] == [verb]
        assert f"uuid-{name}" in a.steps[0].args["xml"]
    # the transient VM is in sync otherwise: a prune stops it, and there is nothing to undefine
    gone = plan_for(_without(result, "web"), observed)
    assert [s.verb for s in action(gone, Kind.VIRTUAL_MACHINE, "web").steps] == ["stop-domain"]


def test_volumes_of_a_stopped_pool_are_not_recreated(write: WriteFiles) -> None:
    """libvirt lists no volumes of an inactive pool: an owned one is taken to be there,
    a new one is made after the pool starts, and prune waits for the pool to run."""
    result = load(write)
    observed = converged(result)
    images = dataclasses.replace(observed.pools["images"], active=False)
    stopped = dataclasses.replace(observed, pools={"images": images}, volumes={})
    plan = plan_for(result, stopped)
    assert action(plan, Kind.STORAGE_POOL, "images").op is Op.UPDATE_LIVE  # started again
    vol = action(plan, Kind.VOLUME, "root")
    assert (vol.op, vol.steps) == (Op.NOOP, ()) and "not active" in vol.reason
    # not ours: made once the pool runs, which its manifest asks for
    unowned = dataclasses.replace(stopped, inventory=stopped.inventory.without("Volume/root"))
    assert action(plan_for(result, unowned), Kind.VOLUME, "root").op is Op.CREATE
    # a pool that stays inactive cannot take a new volume: said, not attempted
    inactive = edit(result, "images", state="inactive")
    refused = action(plan_for(inactive, unowned), Kind.VOLUME, "root")
    assert refused.op is Op.ERROR and "pool-start images" in refused.reason
    # prune (the VM that used it gone too): reclaimPolicy delete waits for the pool;
    # retain forgets as usual
    gone = _without(result, "root", "web")
    stopped = dataclasses.replace(stopped, domains={})
    assert action(plan_for(gone, stopped), Kind.VOLUME, "root").op is Op.FORGET
    deleting = dataclasses.replace(stopped, inventory=stopped.inventory.with_entry(
        "Volume/root", {"pool": "images", "reclaimPolicy": "delete"}))  # fmt: skip
    waiting = action(plan_for(gone, deleting), Kind.VOLUME, "root")
    assert (waiting.op, waiting.steps) == (Op.NOOP, ()) and "once it runs" in waiting.reason


def test_cpu_change_on_a_running_vm_is_pending_until_restart(write: WriteFiles) -> None:
    """libvirt expands host-model into a named model at start, so the running cpu is read
    from the ownership record of the running definition (what it booted with)."""
    import re

    result = load(write)
    observed = converged(result)
    vm = observed.domains["web"]
    expanded = re.sub(
        r"<cpu[^>]*/>|<cpu.*?</cpu>",
        "<cpu mode='custom' match='exact' check='full'><model fallback='forbid'>Skylake-Client"
        "</model><feature policy='require' name='ss'/></cpu>",
        vm.config_xml, count=1, flags=re.S,
    )  # fmt: skip
    assert "Skylake" in expanded and "<rc:cpu>host-model</rc:cpu>" in expanded
    booted = dataclasses.replace(observed, domains={"web": dataclasses.replace(
        vm, live_xml=expanded)})  # fmt: skip
    assert action(plan_for(result, booted), Kind.VIRTUAL_MACHINE, "web").op is Op.NOOP

    passthrough = edit(result, "web", cpu=CpuSpec(mode="host-passthrough"))
    changed = action(plan_for(passthrough, booted), Kind.VIRTUAL_MACHINE, "web")
    assert changed.op is Op.UPDATE_RESTART
    assert [(c.path, c.old, c.new) for c in changed.restart_pending] == [
        ("cpu", "host-model", "host-passthrough")]
    redefined = converged(passthrough, running=False).domains["web"].config_xml
    pending = dataclasses.replace(booted, domains={"web": dataclasses.replace(
        vm, config_xml=redefined, live_xml=expanded)})  # fmt: skip
    still = action(plan_for(passthrough, pending), Kind.VIRTUAL_MACHINE, "web")
    assert still.op is Op.NOOP and [c.path for c in still.restart_pending] == ["cpu"]
    reverted = action(plan_for(result, pending), Kind.VIRTUAL_MACHINE, "web")
    assert reverted.op is Op.UPDATE_LIVE and reverted.restart_pending == ()


def test_live_changes_refused_during_this_boot_wait_for_a_restart(write: WriteFiles) -> None:
    """The executor notes refused live changes in the running definition's metadata;
    the planner reads them there and does not send them again."""
    result = load(write)
    base = next(m for m in result.manifests if m.name == "web").spec
    nic = dataclasses.replace(base.interfaces[0], mac="52:54:00:00:00:02")
    two_nics = edit(result, "web", interfaces=(*base.interfaces, nic), memory=768 * 1024**2)
    observed = converged(result)
    vm = observed.domains["web"]
    assert vm.live_xml is not None
    record = domain_xml.refused_xml(["interfaces[52:54:00:00:00:02]", "memory"])
    assert domain_xml.read_refused(record) == {"interfaces[52:54:00:00:00:02]", "memory"}
    noted = vm.live_xml.replace(
        "<metadata>",
        f"<metadata><rcl:refused xmlns:rcl='{domain_xml.REFUSED_NAMESPACE}'>"
        "<rcl:change path='interfaces[52:54:00:00:00:02]'/><rcl:change path='memory'/>"
        "</rcl:refused>",
        1,
    )
    assert domain_xml.read_refused(noted) == {"interfaces[52:54:00:00:00:02]", "memory"}
    fresh = action(plan_for(two_nics, observed), Kind.VIRTUAL_MACHINE, "web")
    assert [s.verb for s in fresh.steps] == ["define-domain", "set-memory", "attach-device"]
    refused = dataclasses.replace(
        observed, domains={"web": dataclasses.replace(vm, live_xml=noted)})  # fmt: skip
    waiting = action(plan_for(two_nics, refused), Kind.VIRTUAL_MACHINE, "web")
    assert [s.verb for s in waiting.steps] == ["define-domain"]
    assert waiting.op is Op.UPDATE_RESTART
    assert {c.path.split(".")[0] for c in waiting.restart_pending} == {
        "interfaces[52:54:00:00:00:02]", "memory"}
