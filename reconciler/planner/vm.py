"""vm"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from reconciler import inventory as inventory_file
from reconciler import owners, rounding
from reconciler.diff import by_device, devices, diff
from reconciler.hints import dotted
from reconciler.model import Kind, Manifest, VirtualMachineSpec, plain_path
from reconciler.plan import (
    Action,
    AttachDevice,
    AutostartDomain,
    Change,
    DefineDomain,
    DetachDevice,
    Op,
    PinCpus,
    RestartDomain,
    SetMemory,
    SetVcpus,
    StartDomain,
    Step,
    StopDomain,
    UpdateDevice,
    is_unsettled,
)
from reconciler.planner.context import (
    _DOMAIN_DEVICES,
    LIVE_INCOMPARABLE,
    _adoption,
    _autostart,
    _conflict,
    _Context,
    _edit_error,
    _found,
    _persist,
    _recorded,
    _refused_path,
    _rounding_notes,
    fingerprint,
)
from reconciler.planner.seeds import _cdrom_volumes, _SeedPlan
from reconciler.planner.settle import (
    _not_settled,
    _pending_key,
    _restart_history,
    _stuck_history,
    _unsettled,
    settle_key,
)
from reconciler.snapshot import DomainRecord
from reconciler.tuning import format_cpuset
from reconciler.xml import domain as domain_xml
from reconciler.xml import domain_nics, domain_tuning
from reconciler.xml._fields import ChangeClass, change_class
from reconciler.xml.domain_devices import HOTPLUG_ADDED, added_device_xml


def _plan_vm(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, VirtualMachineSpec)
    outside = _refused_path(m, ctx)
    if outside is not None:
        return outside
    requires = tuple(
        [f"Volume/{d.volume}" for d in spec.disks if d.volume]
        + [f"Network/{n.network}" for n in spec.interfaces if n.network]
    )
    password = None
    if spec.graphics is not None and spec.graphics.password_file:
        password = ctx.options.secrets.get(spec.graphics.password_file)
        if password is None:
            return Action(
                Kind.VIRTUAL_MACHINE,
                m.name,
                Op.ERROR,
                source=m.source,
                reason=f"cannot read graphics.passwordFile {spec.graphics.password_file}",
            )
    live = ctx.observed.domains.get(m.name)
    ownership = domain_xml.Ownership(
        manifest=ctx.manifest_path(m), digest=ctx.digest(m), revision=ctx.options.revision,
        instance=ctx.options.instance,
    )  # fmt: skip
    seeds = _SeedPlan.make(m, spec, ctx)
    if isinstance(seeds, str):
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=seeds)
    if seeds.seed is not None:
        requires += (f"StoragePool/{seeds.seed.pool}",)
    kwargs: dict[str, Any] = {
        "volume_pools": ctx.volume_pools,
        "volume_formats": ctx.volume_formats,
        "graphics_password": password,
        "machine_aliases": ctx.observed.machine_aliases,
        "cloud_init_seed": seeds.seed,
    }
    if live is None:
        conflict = seeds.conflict(spec.adopt)
        if conflict is not None:
            return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source,
                          reason=conflict)  # fmt: skip
        try:
            typed = domain_xml.render(m.name, dataclasses.replace(spec, xml=()),
                                      ownership=ownership, **kwargs) if spec.xml else ""
            # the escape hatch on the typed render first: an entry that names nothing
            # is an error at its line, not render's ValueError at the manifest's
            wrong = domain_xml.edit_refusal(spec, typed) if spec.xml else None
            if wrong is not None:
                return _edit_error(m, Kind.VIRTUAL_MACHINE, *wrong)
            xml = domain_xml.render(m.name, spec, ownership=ownership, **kwargs)
        except ValueError as exc:
            return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source,
                          reason=str(exc))  # fmt: skip
        if spec.xml:  # and the composed definition against libvirt's schema
            wrong = domain_xml.edits_invalid(xml, spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.VIRTUAL_MACHINE, *wrong)
        new: list[Step] = [*seeds.write_steps(force=True), DefineDomain(xml)]
        if spec.state == "running":
            new.append(StartDomain())
        if spec.autostart:
            new.append(AutostartDomain(on=True))
        old_changes, old_steps, kept = seeds.retire(in_use=set())
        new += old_steps
        record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                                  **seeds.record(kept))  # fmt: skip
        return Action(
            Kind.VIRTUAL_MACHINE, m.name, Op.CREATE, (), tuple(new),
            source=m.source, owner_record=record, requires=requires,
            reason=_host_defaults_note(m),
        )  # fmt: skip
    lost = _lost_nics(live, ctx)
    context = {
        "lost_nics": lost,
        "pools": {d.volume: ctx.volume_pools.get(d.volume) for d in spec.disks if d.volume},
        "formats": {d.volume: ctx.volume_formats.get(d.volume) for d in spec.disks if d.volume},
        "password": hashlib.sha256((password or "").encode()).hexdigest(),
        "machine": ctx.observed.machine_aliases.get(spec.machine),
        "seeds": seeds.fingerprint(),
        "instance": ctx.options.instance,
        "manifest": ctx.manifest_path(m),
        # a symlink that now leads elsewhere changes which disks are one image
        "real_paths": dict(ctx.options.real_paths),
    }
    entry = ctx.inventory_entry(f"VirtualMachine/{m.name}")
    history = _restart_history(entry, ctx.digest(m))
    # differences an apply made under this manifest that did not settle: not again
    stuck_record = _stuck_history(entry, ctx.digest(m))
    stuck_keys = set(stuck_record.get(inventory_file.UNSETTLED, {}).get("changes", ()))
    record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                              **seeds.record(seeds.owned), **history,
                              **stuck_record)  # fmt: skip
    recorded = _recorded(entry, record, ["shutdownTimeout"])
    print_ = fingerprint(m, live, context, ctx.digest(m))
    if ctx.options.verified.get(m.name) == print_ and not recorded:
        quick = _vm_power_and_autostart(m, spec, live, record, print_)
        if quick is not None:
            return quick
    # a disk is its image: one the domain has under another name (its file, the
    # volume at that path) keeps its element, and is one change of that disk
    volume_paths = {k: v.path for k, v in ctx.observed.volumes.items()}
    real_paths = ctx.options.real_paths
    config_root, switched = domain_xml.switch_sources(
        spec, live.config_root, volume_paths, ctx.volume_pools, real_paths)  # fmt: skip
    if not switched:  # the observed definition as it is (parsed once, shared: not changed)
        config_root = live.config_root
    current_xml: str | Any = config_root if switched else live.config_xml
    # a disk keeps the target the domain has it at, unless the manifest names one
    # (a stopped one gives a replaced image the name the image it replaces frees)
    spec = domain_xml.settle_targets(spec, config_root, reuse_freed=not live.active)
    try:
        desired = domain_xml.project(spec, **kwargs)
    except ValueError as exc:
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=str(exc))
    # tuning the manifest does not name is kept as the domain has it; a pin to every
    # host CPU is no pin (domain_tuning.without_full_pins)
    unnamed = domain_tuning.kept_paths(spec)
    host_cpus = ctx.observed.host_cpus
    written_pins = {p: desired.get(p) for p in _PINS}  # shown as the manifest says them
    desired = dict(domain_tuning.without_full_pins(desired, host_cpus))
    found = live.ownership
    owner = owners.judge(
        None if found is None else owners.Record(found.instance, found.manifest, found.revision),
        in_inventory=entry is not None, ours=ctx.options.instance,
    )  # fmt: skip
    taken = ctx.taken(owner)
    # adopt: true takes over anything but what another instance took from us (owners.py)
    if not owner.ours and not (spec.adopt and owner.adoptable) and not taken:
        return _conflict(m, f"VM '{m.name}'", owner)

    @functools.cache
    def rendered() -> str:  # only for a VM that changes: patching is a plan's main cost
        # the current definition, patched: what the manifest does not say is kept
        return domain_xml.patch(current_xml, spec, ownership=ownership, **kwargs)

    wrong = domain_xml.edit_refusal(spec, config_root)
    if wrong is not None:  # an xml entry that changes a typed field, or names nothing
        return _edit_error(m, Kind.VIRTUAL_MACHINE, *wrong)
    try:
        cannot = domain_xml.refusal(spec, config_root, rendered)
        if cannot is None and not spec.boot and not spec.kernel:
            # boot: [] needs a device that still carries a boot order after the patch
            cannot = domain_xml.boot_order_refusal(spec, config_root, rendered())
    except ValueError as exc:
        cannot = str(exc)
    if cannot is not None:  # patching would lose what the domain has, or never settle
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=cannot)
    clash = domain_xml.unmanaged_clash(spec, config_root)
    if clash is not None:  # a target or MAC a kept, unmanaged device has
        where, why = clash
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.position(where),
                      reason=f"{dotted(where)}: {why}")  # fmt: skip
    # direct NICs are compared only for a manifest that declares one (domain_nics)
    direct = domain_nics.declares_direct(spec)
    config: Mapping[str, object] = domain_tuning.without_full_pins(
        domain_xml.observe(config_root, direct=direct) if switched or direct else live.config,
        host_cpus)
    config = {**config, **domain_xml.declared_storage(spec, config_root)}
    if spec.xml:  # what the definition has of the manifest's xml entries
        config = {**config, **domain_xml.observe_edits(config_root, spec)}
    seeds = seeds.with_domain(config)
    conflict = seeds.conflict(spec.adopt)
    if conflict is not None:
        return Action(Kind.VIRTUAL_MACHINE, m.name, Op.ERROR, source=m.source, reason=conflict)
    config_changes = _rounding_notes(diff(desired, config, ignore=unnamed), {
        "memory": spec.memory, "maxMemory": spec.max_memory})  # fmt: skip
    config_changes += [Change(f"disks[{key}].source", had, now) for key, had, now in switched]
    stuck: list[Change] = []
    if config_changes and all(settle_key(c) in stuck_keys for c in config_changes):
        # an apply defined exactly this and libvirt kept something else: defining it
        # again would loop (a define every pass); said as unsettled instead
        stuck, config_changes = [_not_settled(c) for c in config_changes], []
    adoption = _adoption(owner, ctx, taken=taken)
    # ours, recorded under another manifest path: the record alone is rewritten
    moved = ctx.moved(m, found.manifest) if owner.ours and found and not adoption else []
    adoption += moved
    changes = adoption + config_changes + _persist(live.persistent)
    overwritten = seeds.overwritten()
    steps: list[Step] = seeds.write_steps(
        force=config.get("cloudInit") != desired.get("cloudInit") or overwritten
    )
    if steps and seeds.seed is not None and not config_changes:
        # the seed volume went missing or was overwritten: written again, as it was
        was = "overwritten outside reconciler" if overwritten else None
        changes.append(Change("cloudInit.volume", was, seeds.seed.key, live=True))
    if (owner.retag or moved) and changes == adoption and not steps:
        # only the record lacks our id or names an old path: set it, and keep the
        # definition as libvirt has it
        retagged = live.config_xml
        if owner.retag:
            retagged = domain_xml.with_owner_instance(retagged, str(ctx.options.instance))
        if moved:
            retagged = domain_xml.with_owner_manifest(retagged, ctx.manifest_path(m))
        steps.append(DefineDomain(retagged, current=live.config_xml))
    elif changes:
        if spec.xml:  # the composed definition against libvirt's schema
            try:
                typed = domain_xml.patch(current_xml, dataclasses.replace(spec, xml=()),
                                         ownership=ownership, **kwargs)  # fmt: skip
                wrong = domain_xml.edits_invalid(rendered(), spec, typed)
            except ValueError as exc:
                wrong = (len(spec.xml) - 1, str(exc))
            if wrong is not None:
                return _edit_error(m, Kind.VIRTUAL_MACHINE, *wrong)
        steps.append(DefineDomain(rendered(), current=live.config_xml))
    pending: list[Change] = []
    timeout = spec.shutdown_timeout
    in_use: set[str] = set()
    if live.live_root is not None and live.live is not None and live.live_xml is not None:
        live_root, live_switched = domain_xml.switch_sources(
            spec, live.live_root, volume_paths, ctx.volume_pools, real_paths)  # fmt: skip
        live_projection = dict(domain_tuning.without_full_pins(
            domain_xml.observe(live_root, direct=direct) if live_switched or direct
            else live.live, host_cpus))
        live_projection.update(domain_xml.declared_storage(spec, live_root))
        live_projection.update(domain_xml.observe_edits(live_root, spec))
        # cpu: compared through the record of what the domain booted with, when known
        incomparable = {p for p in LIVE_INCOMPARABLE if p != "cpu"} | unnamed
        # xml entries on the guest <cpu>: the running one is libvirt's expansion
        incomparable |= domain_xml.live_unreadable_edits(spec)
        cpu_known, booted_cpu = live.booted_cpu
        if cpu_known:
            live_projection["cpu"] = booted_cpu
            mismatch = live.running_cpu_mismatch(spec.cpu)
            if mismatch is not None:  # booted from a definition edited out of band
                live_projection["cpu"] = f"{booted_cpu} (running: {mismatch})"
        else:
            incomparable.add("cpu")
        in_use = _cdrom_volumes(live_projection)
        refused = live.refused
        # the running domain has the desired sizes as QEMU rounds them (rounding.py)
        desired_live = _as_running(desired)
        live_steps, pending, live_changes = _vm_live_updates(
            desired_live, config, live_projection, rendered, live.live_xml, refused,
            frozenset(incomparable),
            held=_held_images(spec, live_root, volume_paths, ctx.volume_pools, real_paths),
            host_cpus=host_cpus,
        )  # fmt: skip
        steps += live_steps
        # a definition change the running domain already has needs no restart
        # (a disk's image under another name: the running domain has it as it had)
        pending += [Change(f"disks[{key}].source", had, now)
                    for key, had, now in live_switched]  # fmt: skip
        unseen = incomparable | {c.path for c in pending}
        done = {c.path for c in live_changes} | {
            c.path
            for c in config_changes
            if c.path not in unseen
            and live_projection.get(c.path) == desired_live.get(c.path)
        }
        changes = [dataclasses.replace(c, live=True) if c.path in done else c for c in changes]
        changes += [c for c in live_changes if c.path not in {x.path for x in changes}]
        # a NIC cut off from its network (the network was restarted under the running
        # guest): libvirt 9.0 cannot reconnect it live (see docs/decisions.md), a boot does
        pending += [
            Change(f"interfaces[{mac}].connected", f"no (network {net} was restarted)", "yes")
            for mac, net in lost
            if f"interfaces[{mac}].connected" not in {c.path for c in pending}
        ]
        policy = spec.update_policy or ctx.options.default_update_policy
        # what a restart was done for (under this manifest); not if the domain has not
        # booted since the record was written (the restart was skipped, or failed)
        boot = live.boot
        restart_record = history.get(inventory_file.RESTARTED_FOR, {})
        tried = set(restart_record.get("changes", ()))
        if restart_record.get("boot") == boot:
            tried = set()
        # a pending difference that an apply already failed to settle restarts nothing
        pending = [_not_settled(c) if settle_key(c) in stuck_keys else c for c in pending]
        restartable = [c for c in pending if not is_unsettled(c)]
        if restartable and spec.state == "running" and policy == "restart" and not (
            {_pending_key(c) for c in restartable} <= tried
        ):
            steps.append(RestartDomain(timeout))
            changes += [c for c in restartable if c.path not in {x.path for x in changes}]
            restarted = True
            history = {inventory_file.RESTARTED_FOR: {
                "digest": ctx.digest(m),
                "changes": sorted(tried | {_pending_key(c) for c in restartable}),
                "boot": boot,  # the domain id before the restart: it changes at a boot
            }}  # fmt: skip
        else:
            restarted = False
            if policy == "restart" and tried:
                # restarted for this very manifest already, and the running domain
                # still differs the same way: a rounding (or other) bug of ours. Said
                # once by the apply that restarted it; never restarted again for it.
                pending = [_unsettled(c) if _pending_key(c) in tried and not is_unsettled(c)
                           else c for c in pending]  # fmt: skip
    else:
        restarted = False
    failure = _start_failure(entry, spec, live)
    if spec.state == "running" and not live.active:
        note = _start_failure_note(failure)
        changes.append(Change("state", "stopped", "running", live=True, note=note))
        steps.append(StartDomain())
    elif spec.state == "stopped" and live.active:
        changes.append(Change("state", "running", "stopped", live=True))
        steps.append(StopDomain(timeout))
        pending = []
    auto_changes, auto_steps = _autostart("domain", live.autostart, spec.autostart)
    changes += auto_changes + recorded
    steps += auto_steps
    # seeds the VM no longer uses go, unless the running domain still reads one
    going_down = restarted or spec.state == "stopped"
    old_changes, old_steps, kept = seeds.retire(set() if going_down else in_use)
    changes += old_changes
    steps += old_steps
    record = ctx.owner_record(m, shutdownTimeout=spec.shutdown_timeout,
                              **seeds.record(kept), **failure, **history,
                              **stuck_record)  # fmt: skip
    pending += [c for c in stuck if c.path not in {x.path for x in pending}]
    if restarted:
        op, pending = Op.UPDATE_RESTART, [c for c in pending if is_unsettled(c)]
    elif not changes:
        op = Op.NOOP
    elif any(not c.live and c.path != "ownership" for c in changes) and live.active:
        op = Op.UPDATE_RESTART
    else:
        op = Op.UPDATE_LIVE
    return Action(
        Kind.VIRTUAL_MACHINE,
        m.name,
        op,
        _from_host(m, _pins_as_written(changes, written_pins, host_cpus)),
        tuple(steps),
        source=m.source,
        restart_pending=_from_host(m, _pins_as_written(pending, written_pins, host_cpus)),
        owner_record=record,
        requires=requires,
        fingerprint=print_ if op is Op.NOOP and not pending else None,
    )


def _pins_as_written(changes: Iterable[Change], written: Mapping[str, object],
                     host_cpus: frozenset[int] | None) -> list[Change]:  # fmt: skip
    """``changes`` with a pin change's new value as the manifest writes it
    (``Change.shown``): compared without pins to every host CPU (no pin,
    ``without_full_pins``), ``1:0-1`` would read as vCPU 1 left out (``0:0 1:1 ->
    0:0``). Only the text changes: ``new`` stays the compared value (steps and settle
    keys are made from it)."""
    everything = format_cpuset(host_cpus) if host_cpus else ""

    def said(value: object) -> str:
        if value == everything:
            return f"{value} (all host CPUs)"
        return f"{value} ({everything} = all host CPUs)"

    return [dataclasses.replace(c, shown=said(written[c.path]))
            if c.path in written and written[c.path] is not None and c.new != written[c.path]
            else c for c in changes]  # fmt: skip


def _as_running(desired: Mapping[str, object]) -> dict[str, object]:
    """``desired`` (a domain projection) as a running domain shows it: ``maxMemory``
    aligned the way QEMU's start aligns it (rounding.running_memory)."""
    out = dict(desired)
    size = out.get("maxMemory")
    if isinstance(size, int):
        out["maxMemory"] = rounding.running_memory(size)
    return out


def _lost_nics(live: DomainRecord, ctx: _Context) -> list[tuple[str, str]]:
    """(MAC, network) of each NIC of a running domain that is no longer connected to its
    running network: its ``portid`` is not among the network's ports. It happens when
    the network is destroyed and started again under the guest (``virsh net-destroy``,
    then the tool heals the network): the tap device stays off the new bridge, and
    nothing in the domain's own XML changes. (``live.nic_ports`` is read without a
    parse: it runs for every running VM on every plan, in sync or not.)"""
    if not live.active or not live.live_xml or "portid=" not in live.live_xml:
        return []  # (before nic_ports: this runs for every VM, in sync or not)
    lost = []
    for mac, network, port in live.nic_ports:
        net = ctx.observed.networks.get(network)
        if net is None or not net.active or net.ports is None:
            continue  # a network not running is the network's own change to make
        if port not in net.ports:
            lost.append((mac, network))
    return lost


def _host_defaults_note(m: Manifest) -> str:
    """``with host defaults: cpu.features.x=disable (from FILE)`` for a VM created with
    values the host's vmDefaults gave, else ''."""
    if not m.host_defaults:
        return ""
    spec = m.document["spec"]
    shown = []
    for path in m.host_defaults:
        value: Any = spec
        for part in path.split(".", 2) if path.startswith("cpu.features.") else path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        shown.append(f"{path}={value}")
    return f"with host defaults: {', '.join(shown)} (vmDefaults in {m.host_defaults_origin})"


def _from_host(m: Manifest, changes: Iterable[Change]) -> tuple[Change, ...]:
    """``changes``, each naming the host defaults its new value holds (hostdefaults.py)."""
    out = []
    for c in changes:
        taken = [t for t in m.host_defaults if t == c.path or t.startswith(c.path + ".")]
        if taken:
            c = dataclasses.replace(
                c, origin=f"{', '.join(taken)} from vmDefaults in {m.host_defaults_origin}"
            )
        out.append(c)
    return tuple(out)


def _start_failure(
    entry: Mapping[str, Any] | None, spec: VirtualMachineSpec, live: DomainRecord
) -> dict[str, Any]:
    """The VM's last refused start (see inventory.START_FAILURE), kept in its owner
    record while it should run and does not; dropped (at the next apply) otherwise."""
    record = (entry or {}).get(inventory_file.START_FAILURE)
    if not isinstance(record, Mapping) or live.active or spec.state != "running":
        return {}
    return {inventory_file.START_FAILURE: dict(record)}


def _start_failure_note(failure: Mapping[str, Any]) -> str:
    """``last start failed at <when>: <error>`` for the ``state`` change, or ""."""
    record = failure.get(inventory_file.START_FAILURE)
    if not isinstance(record, Mapping):
        return ""
    return f"last start failed at {record.get('at', '?')}: {record.get('error', '?')}"


def _vm_power_and_autostart(
    m: Manifest, spec: VirtualMachineSpec, live: DomainRecord, record: dict[str, Any], fp: str
) -> Action | None:
    """The action for a VM whose definitions are known to be in sync: a no-op,
    unless its power state or autostart (not part of the XML) differ."""
    if (spec.state == "running") != live.active or spec.autostart != live.autostart:
        return None  # take the full path: it handles these with everything else
    return Action(
        Kind.VIRTUAL_MACHINE, m.name, Op.NOOP, source=m.source, owner_record=record,
        fingerprint=fp,
    )  # fmt: skip


def _vm_live_updates(
    desired: Mapping[str, object],
    config: Mapping[str, object],
    live: Mapping[str, object],
    desired_xml: Callable[[], str],
    live_xml: str,
    refused: frozenset[str] = frozenset(),
    incomparable: frozenset[str] = LIVE_INCOMPARABLE,
    held: frozenset[str] = frozenset(),
    host_cpus: frozenset[int] | None = None,
) -> tuple[list[Step], list[Change], list[Change]]:
    """Steps that change the running domain; what must wait for a restart; what they change.

    Computed against the running definition (not the persistent one), so that
    reverting a manifest clears a pending restart instead of adding one.
    ``refused``: live changes libvirt already refused for this domain (field or
    device paths); they wait for a restart instead of being tried again.
    ``incomparable``: fields the running definition cannot tell (see LIVE_INCOMPARABLE).
    ``held``: keys of declared disks whose image (real file) the running domain already
    has under another name: never attached a second time (two writers of one image
    corrupt it); such a disk waits for a restart. ``host_cpus``: the host's CPUs (a pin
    undone live is a pin to all of them); None: pins wait for a restart.
    """
    steps: list[Step] = []
    pending: list[Change] = []
    applied: list[Change] = []
    max_memory, max_vcpus = live.get("maxMemory"), live.get("maxVcpus")
    # memory cannot be read back from a running domain (see LIVE_INCOMPARABLE):
    # a changed definition is applied to the balloon when it fits.
    if desired.get("memory") != config.get("memory"):
        change = Change("memory", config.get("memory"), desired.get("memory"), live=True)
        fits = desired.get("maxMemory") == max_memory and int(
            desired.get("memory") or 0  # type: ignore[call-overload]
        ) <= int(max_memory or 0)  # type: ignore[call-overload]
        if fits and "memory" not in refused:
            steps.append(SetMemory("memory", int(desired.get("memory") or 0)))  # type: ignore[call-overload]
            applied.append(change)
        else:
            pending.append(Change("memory", config.get("memory"), desired.get("memory")))
    grouped = by_device(diff(desired, live, ignore=incomparable))

    def going_first(kv: tuple[tuple[str, str] | None, list[Change]]) -> tuple[bool, str]:
        # devices that go are detached before new ones come: a new disk may take
        # the target an old one frees (another image at vdb)
        dev = kv[0]
        gone = dev is not None and dev[1] not in devices(desired, dev[0])
        return (not gone, str(dev))

    for dev, changes in sorted(grouped.items(), key=going_first):
        if dev is None:
            graphics = [c for c in changes if c.path.startswith("graphics.")]
            password = _password_update(graphics, live_xml, desired_xml, refused)
            if password is not None:
                steps.append(password)
                applied += [Change(c.path, c.old, c.new, live=True) for c in graphics]
                changes = [c for c in changes if c not in graphics]
            pinning = [c for c in changes if c.path in _PINS]
            pins = _pin_steps(pinning, desired, live, host_cpus, refused)
            if pins is not None:
                steps += pins
                applied += [Change(c.path, c.old, c.new, live=True) for c in pinning]
                changes = [c for c in changes if c not in pinning]
            for change in changes:
                # vCPUs are hot-plugged, not unplugged: taking one away needs the
                # guest's help and often never completes, so that waits for a restart.
                declared = domain_xml.FIELDS_BY_PATH.get(change.path)
                if (
                    change.path == "vcpus"  # the one live field without a step of its own
                    and declared is not None and declared.change is ChangeClass.LIVE
                    and change.path not in refused
                    and desired.get("maxVcpus") == max_vcpus
                    and int(change.old or 0) < int(change.new or 0) <= int(max_vcpus or 0)  # type: ignore[call-overload]
                ):
                    steps.append(SetVcpus("vcpus", int(change.new)))
                    applied.append(Change(change.path, change.old, change.new, live=True))
                elif change.path in HOTPLUG_ADDED and change.path not in refused and (
                    (xml := added_device_xml(change.path, change.old, change.new,
                                             desired_xml(), live_xml)) is not None
                ):
                    # an agent channel or rng the running domain lacks: hot-plugged
                    steps.append(AttachDevice(change.path, xml))
                    applied.append(Change(change.path, change.old, change.new, live=True))
                else:
                    pending.append(change)
            continue
        section, key = dev
        path = f"{section}[{key}]"
        if path in refused:  # libvirt or the guest refused it during this boot
            pending += changes
            continue
        wanted = key in devices(desired, section)
        present = key in devices(live, section)
        table = _DOMAIN_DEVICES[section]
        hot = table.change is ChangeClass.LIVE and (
            section != "disks"
            or (desired.get(f"disks[{key}].bus") if wanted else live.get(f"disks[{key}].bus"))
            in domain_xml.HOTPLUG_DISK_BUSES
        ) and (  # libvirt 9.0 hot-plugs virtiofs shares, not 9p ones
            section != "filesystems"
            or (desired if wanted else live).get(f"filesystems[{key}].driver")
            in domain_xml.HOTPLUG_FS_DRIVERS
        )
        # a device that stays, changed only in fields done to the running domain
        only_media = (
            wanted
            and present
            and all(change_class(table.fields, c.path.removeprefix(f"{path}."))
                    is ChangeClass.LIVE for c in changes)
        )
        verb: type[UpdateDevice | AttachDevice | DetachDevice]
        if only_media:
            verb, source = UpdateDevice, desired_xml()
        elif (hot and wanted and not present and not _target_reused(section, key, desired, live)
              and not (section == "disks" and key in held)):
            verb, source = AttachDevice, desired_xml()
        elif hot and present and not wanted and not _target_reused(section, key, live, desired):
            verb, source = DetachDevice, live_xml  # the device as the guest has it
        else:
            pending += changes
            continue
        steps.append(verb(path, _found(domain_xml.device_xml(source, section, key), path)))
        applied += [Change(c.path, c.old, c.new, live=True) for c in changes]
    return steps, pending, applied


def _held_images(
    spec: VirtualMachineSpec,
    running: Any,
    volume_paths: Mapping[tuple[str, str], str],
    volume_pools: Mapping[str, str],
    real_paths: Mapping[str, str],
) -> frozenset[str]:
    """Keys of ``spec``'s disks whose image, symlinks resolved (``real_paths``), the
    running domain (``running``, its live XML root) already has at some target: the
    last guard before a live attach (AttachDevice), whatever the matching before it
    made of the names."""

    def real(path: str) -> str:
        plain = plain_path(path)
        return real_paths.get(plain, plain)

    have = {real(p) for p in domain_xml.disk_images(running, volume_paths)}
    held = set()
    for disk in spec.disks:
        if disk.volume is not None:
            path = volume_paths.get((volume_pools.get(disk.volume, ""), disk.volume))
        else:
            path = disk.file or disk.device
        if path is not None and real(path) in have:
            held.add(domain_xml.disk_key(disk))
    return frozenset(held)


def _target_reused(
    section: str, key: str, mine: Mapping[str, object], other: Mapping[str, object]
) -> bool:
    """Whether disk ``key``'s target in ``mine`` is another disk's in ``other``: another
    image at the same target (desired vs running, for an attach; running vs desired,
    for a detach). An unplug completes only when the guest lets go, so such a swap
    waits for a restart, whole, instead of racing the detach."""
    if section != "disks":
        return False
    target = mine.get(f"disks[{key}].target")
    return any(
        k != key and other.get(f"disks[{k}].target") == target for k in devices(other, "disks")
    )


def _password_update(
    graphics: list[Change], live_xml: str, desired_xml: Callable[[], str], refused: frozenset[str]
) -> Step | None:
    """A new display password alone is set on the running display (a rotated secret
    must not wait for a restart); any other display change waits for one."""
    if [c.path for c in graphics] != ["graphics.password"] or "graphics" in refused:
        return None
    xml = domain_xml.graphics_update(live_xml, desired_xml())
    return None if xml is None else UpdateDevice("graphics", xml)


_PINS = frozenset(f.path for f in domain_tuning.FIELDS
                  if f.path.startswith("cputune.") and f.change is ChangeClass.LIVE)  # fmt: skip


def _pin_steps(
    changes: list[Change],
    desired: Mapping[str, object],
    live: Mapping[str, object],
    host_cpus: frozenset[int] | None,
    refused: frozenset[str],
) -> list[Step] | None:
    """``PinCpus`` steps that make the running domain's pinning the desired one
    (``cputune.vcpupin``, ``.emulatorpin``, ``.iothreadpin``): a pin undone is a pin to
    every host CPU (libvirt cannot remove one from a running domain). None when they
    cannot be done live: the host's CPUs are not known, libvirt refused a pin during
    this boot, a vCPU to pin is not online (above the running vCPU count), or an
    I/O thread to pin is not one the running domain has; they then wait for a
    restart. (A pin to a CPU the host lacks is preflight's error.)"""
    if not changes:
        return []
    if not host_cpus or any(c.path in refused for c in changes):
        return None
    everything = format_cpuset(host_cpus)
    steps: list[Step] = []
    online = live.get("vcpus")
    for change in changes:
        if change.path == "cputune.emulatorpin":
            steps.append(PinCpus(change.path, str(change.new or everything)))
            continue
        want = domain_tuning.pins(desired.get(change.path))
        have = domain_tuning.pins(live.get(change.path))
        for number in sorted(set(want) | set(have)):
            if want.get(number) == have.get(number):
                continue
            cpuset = want.get(number, everything)
            if change.path == "cputune.iothreadpin":
                threads = live.get("iothreads")
                if not isinstance(threads, int) or number > threads:
                    return None  # no such I/O thread in the running domain
                steps.append(PinCpus(change.path, cpuset, iothread=number))
                continue
            if not isinstance(online, int) or number >= online:
                return None
            steps.append(PinCpus(change.path, cpuset, number))
    return steps
