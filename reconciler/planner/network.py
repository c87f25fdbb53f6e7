"""network"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

from reconciler import owners
from reconciler.diff import by_device, devices, diff
from reconciler.model import Kind, Manifest, NetworkSpec
from reconciler.plan import (
    Action,
    AutostartNetwork,
    Change,
    DefineNetwork,
    NetUpdate,
    Op,
    StartNetwork,
    Step,
    StopNetwork,
)
from reconciler.planner.context import (
    _adoption,
    _autostart,
    _conflict,
    _Context,
    _edit_error,
    _found,
    _persist,
    digest,
)
from reconciler.xml import edits, network_vocab
from reconciler.xml import network as network_xml
from reconciler.xml._fields import parse


def _plan_network(m: Manifest, ctx: _Context) -> Action:
    spec = m.spec
    assert isinstance(spec, NetworkSpec)
    live = ctx.observed.networks.get(m.name)
    record = ctx.owner_record(m)
    ownership = network_xml.NetworkOwnership(
        instance=ctx.options.instance, manifest=ctx.manifest_path(m), digest=digest(m),
        revision=ctx.options.revision,
    )  # fmt: skip
    if live is None:
        typed = ""
        if spec.xml:  # the escape hatch: on the typed render first (an entry that names
            # nothing is an error at its line, not a ValueError out of render)
            typed = network_xml.render(m.name, dataclasses.replace(spec, xml=()),
                                       ownership=ownership)  # fmt: skip
            wrong = network_xml.edit_refusal(spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.NETWORK, *wrong)
        xml = network_xml.render(m.name, spec, ownership=ownership)
        if spec.xml:  # and the composed definition against libvirt's schema
            wrong = network_xml.edits_invalid(xml, spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.NETWORK, *wrong)
        new: list[Step] = [DefineNetwork(xml)]
        if spec.state == "active":
            new.append(StartNetwork())
        if spec.autostart:
            new.append(AutostartNetwork(on=True))
        return Action(
            Kind.NETWORK, m.name, Op.CREATE, (), tuple(new), source=m.source, owner_record=record
        )
    found = live.ownership
    in_inventory = ctx.inventory_entry(f"Network/{m.name}") is not None
    owner = owners.judge(
        None if found is None else owners.Record(found.instance, found.manifest, found.revision),
        in_inventory=in_inventory, ours=ctx.options.instance,
    )  # fmt: skip
    taken = ctx.taken(owner)
    # adopt: true takes over anything but what another instance took from us (owners.py)
    if not owner.ours and not (spec.adopt and owner.adoptable) and not taken:
        return _conflict(m, f"network '{m.name}'", owner)
    # networks made before they carried a record: ours by the inventory, recorded now
    if owner.ours and found is None and ctx.options.instance is not None:
        owner = owners.Owner(owners.Standing.OURS, None, retag=True)
    declared = spec.bridge is not None
    desired = network_xml.project(spec)
    wrong = network_xml.edit_refusal(spec, live.config_xml)
    if wrong is not None:  # an xml entry that would change a typed field
        return _edit_error(m, Kind.NETWORK, *wrong)
    config = network_xml.observe(live.config_xml, bridge_declared=declared,
                                 declared=spec.declared)  # fmt: skip
    if spec.xml:  # what the definition has of the manifest's xml entries
        config.update(edits.observe(parse(live.config_xml), spec.xml))
    config_changes = diff(desired, config)
    adoption = _adoption(owner, ctx, taken=taken)
    # ours, recorded under another manifest path: the record is rewritten (metadata only)
    if owner.ours and found is not None and not adoption:
        adoption += ctx.moved(m, found.manifest)
    changes = adoption + config_changes + _persist(live.persistent)

    @functools.cache
    def patched() -> str:
        # the current definition, patched: what the manifest does not say is kept
        return network_xml.patch(live.config_xml, spec, ownership=ownership)

    steps: list[Step] = []
    if config_changes or not live.persistent or adoption:
        if spec.xml:  # the composed definition against libvirt's schema
            typed = network_xml.patch(live.config_xml, dataclasses.replace(spec, xml=()),
                                      ownership=ownership)  # fmt: skip
            wrong = network_xml.edits_invalid(patched(), spec, typed)
            if wrong is not None:
                return _edit_error(m, Kind.NETWORK, *wrong)
        steps.append(DefineNetwork(patched(), current=live.config_xml))
    pending: list[Change] = []
    running = live.active and live.live_xml is not None
    if running and live.live_xml is not None:
        live_projection = network_xml.observe(live.live_xml, bridge_declared=declared,
                                              declared=spec.declared)  # fmt: skip
        # a running NAT network shows libvirt's port range (1024-65535) that its
        # definition leaves out: the definition is compared on NAT, not the running one
        for key in [k for k in live_projection if k.startswith("nat.")]:
            live_projection[key] = desired.get(key)
        if spec.xml:
            live_projection.update(edits.observe(parse(live.live_xml), spec.xml))
        live_steps, pending = _network_live_updates(desired, live_projection, patched,
                                                    live.live_xml)  # fmt: skip
        steps += live_steps
        changes = _mark_live(changes, {s.args["path"] for s in live_steps})
    if spec.state == "active" and not live.active:
        changes.append(Change("state", "inactive", "active", live=True))
        steps.append(StartNetwork())
        pending = []
    elif spec.state == "inactive" and live.active:
        changes.append(Change("state", "active", "inactive", live=True))
        steps.append(StopNetwork())
        pending = []
    auto_changes, auto_steps = _autostart("network", live.autostart, spec.autostart)
    changes += auto_changes
    steps += auto_steps
    if not changes:
        op = Op.NOOP
    elif any(c.path in {p.path for p in pending} for c in config_changes):
        op = Op.UPDATE_RESTART
    else:
        op = Op.UPDATE_LIVE
    return Action(
        Kind.NETWORK,
        m.name,
        op,
        tuple(changes),
        tuple(steps),
        source=m.source,
        restart_pending=tuple(pending),
        owner_record=record,
    )


def _network_live_updates(
    desired: Mapping[str, object], live: Mapping[str, object],
    desired_xml: Callable[[], str], live_xml: str,
) -> tuple[list[Step], list[Change]]:  # fmt: skip
    """net-update steps for the entry sections libvirt changes on a running network
    (``network_vocab.LIVE_SECTIONS``: DHCP hosts and ranges of either ``<ip>``, DNS
    hosts, TXT and SRV records, portgroups; a macvtap network's ``forward.interfaces``);
    everything else waits for a restart. An
    entry under an ``<ip>`` goes to the ``<ip>`` of its family by its index (``index``),
    never to the first ``<ip>`` with DHCP, which may be the other family's; when the
    running network has no such ``<ip>`` yet, the entry waits for the restart too."""
    steps: list[Step] = []
    pending: list[Change] = []
    for dev, changes in sorted(by_device(diff(desired, live)).items(), key=lambda kv: str(kv[0])):
        if dev is None:
            for change in changes:
                if change.path == "forward.interfaces" and desired.get("mode") == live.get(
                        "mode") == "macvtap":  # fmt: skip
                    steps += _pool_updates(change)
                else:
                    pending.append(change)
            continue
        target = network_vocab.LIVE_SECTIONS.get(dev[0])
        if target is None:
            pending += changes
            continue
        section, key = dev
        xml_section, family = target
        index = None if family is None else network_xml.dhcp_parent_index(live_xml, family)
        if index == -1:
            pending += changes
            continue
        wanted = key in devices(desired, section) or _entry(desired, section, key)
        present = key in devices(live, section) or _entry(live, section, key)
        path = f"{section}[{key}]"
        if present:
            old = network_xml.entry_xml(live_xml, section, key)
            steps.append(NetUpdate("delete", xml_section, path, _found(old, path), index))
        if wanted:
            new = network_xml.entry_xml(desired_xml(), section, key)
            steps.append(NetUpdate("add", xml_section, path, _found(new, path), index))
    return steps, pending


def _pool_updates(change: Change) -> list[Step]:
    """A macvtap network's pool of host NICs, changed live (``forward-interface``: add and
    delete work on a running network, measured on libvirt 9.0): one step per NIC."""
    old = set(change.old) if isinstance(change.old, tuple) else set()
    new = set(change.new) if isinstance(change.new, tuple) else set()
    return [NetUpdate(command, "forward-interface", change.path,
                      network_vocab.forward_interface_xml(dev), None)
            for command, devs in (("delete", old - new), ("add", new - old))
            for dev in sorted(devs)]  # fmt: skip


def _entry(projection: Mapping[str, object], section: str, key: str) -> bool:
    """Whether ``projection`` has the entry at all, also one whose fields are all absent
    (a portgroup with nothing but its name)."""
    return any(k.startswith(f"{section}[{key}].") for k in projection)


def _mark_live(changes: list[Change], live_prefixes: set[str]) -> list[Change]:
    return [
        Change(c.path, c.old, c.new, live=True)
        if any(c.path == p or c.path.startswith(p + ".") for p in live_prefixes)
        else c
        for c in changes
    ]
