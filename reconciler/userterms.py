"""A planned action in the user's terms: manifest paths and whole devices.

The planner compares projections keyed by device identity (``disks[web-data].bus``,
``interfaces[52:54:00:00:00:01].network``): right for matching, not how the
user wrote the manifest. After each action is planned, ``in_user_terms``
(called by planner.make_plan) adds what a person reads:

* ``Change.where``: the path as the manifest writes it, ``disks[1].bus``,
  where the device is in the manifest (a device only libvirt has keeps its
  identity path);
* ``Action.devices`` / ``Action.pending_devices``: each device added, removed
  or replaced as a whole, once, named as the user named it (the volume, the
  file, the MAC) with the rest of its identity (target, bus, size), instead of
  one ``(none)`` line per field. A device whose source kind changes (a file
  disk becoming a volume disk) is a replace; so is a NIC or DHCP host whose MAC
  changed (one removed, one added on the same network or IP).

Pure: values in, values out; report.py prints what this adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from reconciler.diff import by_device
from reconciler.model import Manifest, NetworkSpec, VirtualMachineSpec, hostdev_key
from reconciler.plan import Action, Change, DeviceChange
from reconciler.units import format_bandwidth, format_size

# Per section: the field naming the device as a user does (first one present),
# then the fields that complete its identity, in the order they are shown.
_LABEL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "disks": ("volume", "file"),
    "cdroms": ("file", "volume"),
    "interfaces": (),  # the MAC, its key
    "ipv4.dhcp.hosts": (),
    "dnsHosts": (),
    "filesystems": ("source",),  # the host folder; its mount tag follows
    "hostdevs": (),  # what names it on the host, its key: pci 0000:03:00.0, usb 046d:c52b
}
_DETAIL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "disks": ("target", "bus", "format", "cache", "readonly"),
    "cdroms": ("bus",),
    "interfaces": ("network", "bridge", "model"),
    "ipv4.dhcp.hosts": ("ip", "name"),
    "dnsHosts": ("names",),
    "filesystems": ("driver", "readonly"),
    "hostdevs": (),
}
# Fields one of which every device of the section has: it appears (goes from none to a
# value) only when the whole device does, and goes only when the whole device goes.
_ALWAYS: Mapping[str, tuple[str, ...]] = {
    "disks": ("bus",),
    "cdroms": ("bus",),
    "interfaces": ("model",),
    "ipv4.dhcp.hosts": ("ip",),
    "dnsHosts": ("names",),
    "filesystems": ("source",),
    "hostdevs": ("address", "vendor", "bus"),  # PCI; USB by ids; USB by address
}
# Fields whose going from a value to none (and another's from none to a value) means
# the device now has another kind of source: a replace of the same identity.
_SOURCE_FIELDS: Mapping[str, frozenset[str]] = {
    "disks": frozenset({"volume", "file", "pool"}),
    "cdroms": frozenset({"volume", "file", "pool"}),
    "interfaces": frozenset({"network", "bridge"}),
}
# Sections whose identity is a MAC: one removed and one added with the same
# attachment (network, bridge, IP) is the same device with a new MAC.
_PAIRED_BY: Mapping[str, tuple[str, ...]] = {
    "disks": ("target",),  # another image at the same target: one replaced
    "interfaces": ("network", "bridge"),
    "ipv4.dhcp.hosts": ("ip",),
}


def manifest_indexes(m: Manifest | None) -> dict[str, str]:
    """``disks[web-data]`` -> ``disks[1]``: each device's place in the manifest's lists."""
    if m is None:
        return {}
    out: dict[str, str] = {}
    spec = m.spec
    if isinstance(spec, VirtualMachineSpec):
        for i, disk in enumerate(spec.disks):
            out[f"disks[{disk.volume if disk.volume is not None else disk.file}]"] = f"disks[{i}]"
        for i, cdrom in enumerate(spec.cdroms):
            out[f"cdroms[{cdrom.target}]"] = f"cdroms[{i}]"
        if spec.cloud_init is not None:
            out[f"cdroms[{spec.cloud_init.target}]"] = "cloudInit"
        for i, nic in enumerate(spec.interfaces):
            out[f"interfaces[{nic.mac}]"] = f"interfaces[{i}]"
        for i, fs in enumerate(spec.filesystems or ()):
            out[f"filesystems[{fs.target}]"] = f"filesystems[{i}]"
        for i, dev in enumerate(spec.hostdevs or ()):
            out[f"hostdevs[{hostdev_key(dev)}]"] = f"hostdevs[{i}]"
    elif isinstance(spec, NetworkSpec):
        if spec.ipv4 is not None and spec.ipv4.dhcp is not None:
            for i, host in enumerate(spec.ipv4.dhcp.hosts):
                out[f"ipv4.dhcp.hosts[{host.mac}]"] = f"ipv4.dhcp.hosts[{i}]"
        for i, dns in enumerate(spec.dns_hosts):
            out[f"dnsHosts[{dns.ip}]"] = f"dnsHosts[{i}]"
    return out


def in_user_terms(
    action: Action, m: Manifest | None, sizes: Mapping[str, int] | None = None
) -> Action:
    """``action`` with manifest paths on its changes and its whole-device changes.

    ``m``: the action's manifest (None for a prune); ``sizes``: volume name -> bytes,
    to show a volume disk's size."""
    indexes = manifest_indexes(m)
    if not action.changes and not action.restart_pending:
        return action
    changes = tuple(_with_where(c, indexes) for c in action.changes)
    pending = tuple(_with_where(c, indexes) for c in action.restart_pending)
    return dataclasses.replace(
        action,
        changes=changes,
        restart_pending=pending,
        devices=whole_devices(changes, indexes, sizes or {}),
        pending_devices=whole_devices(pending, indexes, sizes or {}),
    )


def _with_where(change: Change, indexes: Mapping[str, str]) -> Change:
    key, dot, rest = change.path.partition("].")
    if not dot:
        return change
    place = indexes.get(key + "]")
    if place is None:
        return change
    return dataclasses.replace(change, where=f"{place}.{rest}")


def whole_devices(
    changes: Sequence[Change], indexes: Mapping[str, str], sizes: Mapping[str, int]
) -> tuple[DeviceChange, ...]:
    """The devices ``changes`` add, remove or replace whole (see the module doc)."""
    found: list[DeviceChange] = []
    added: list[tuple[DeviceChange, dict[str, object]]] = []
    removed: list[tuple[DeviceChange, dict[str, object]]] = []
    for dev, group in by_device(changes).items():
        if dev is None or dev[0] not in _DETAIL_FIELDS:
            continue
        section, ident = dev
        key = f"{section}[{ident}]"
        new = {_field(c.path): c.new for c in group if c.new is not None}
        old = {_field(c.path): c.old for c in group if c.old is not None}
        live = all(c.live for c in group)
        where = indexes.get(key, "")
        always = _ALWAYS[section]
        if any(f in new for f in always) and not old:
            device = _device(section, ident, "add", new, where, live, sizes)
            added.append((device, new))
        elif any(f in old for f in always) and not new:
            device = _device(section, ident, "remove", old, "", live, sizes)
            removed.append((device, old))
        elif _source_changed(section, group):
            was = _device(section, ident, "remove", old, "", live, sizes)
            device = _device(section, ident, "replace", {**old, **new}, where, live, sizes)
            found.append(dataclasses.replace(device, replaces=was.label))
        elif section in _CHANGED_IN_PLACE:
            device = _device(section, ident, "change", {**old, **new}, where, live, sizes)
            changed = tuple(f"{_field(c.path)} {_plain(c.old, c.path)} -> "
                            f"{_plain(c.new, c.path)}" for c in group)  # fmt: skip
            found.append(dataclasses.replace(device, details=changed))
    for device, values in added:
        partner = _partner(device.section, values, removed)
        if partner is None:
            found.append(device)
            continue
        removed = [r for r in removed if r[0] is not partner]
        found.append(dataclasses.replace(device, how="replace", replaces=partner.label,
                                         replaces_key=partner.key,
                                         live=device.live and partner.live))  # fmt: skip
    found += [device for device, _ in removed]
    order = {"replace": 0, "change": 0, "remove": 1, "add": 2}
    return tuple(sorted(found, key=lambda d: (d.section, order[d.how], d.where, d.key)))


# Sections whose device changed in place is one line: ``disks[1] (web-data): bus ide
# -> virtio, target hda -> vdb``.
_CHANGED_IN_PLACE = frozenset({"disks", "cdroms", "interfaces", "filesystems", "hostdevs"})


def _plain(value: object, path: str = "") -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    return format_bandwidth(path, value) or str(value)


def _field(path: str) -> str:
    return path.partition("].")[2]


def _source_changed(section: str, group: Iterable[Change]) -> bool:
    fields = _SOURCE_FIELDS.get(section, frozenset())
    went = {_field(c.path) for c in group if c.old is not None and c.new is None}
    came = {_field(c.path) for c in group if c.old is None and c.new is not None}
    return bool(went & fields) and bool(came & fields)


def _partner(
    section: str,
    values: Mapping[str, object],
    removed: Sequence[tuple[DeviceChange, Mapping[str, object]]],
) -> DeviceChange | None:
    fields = _PAIRED_BY.get(section)
    if not fields:
        return None
    for device, old in removed:
        if device.section == section and any(
            values.get(f) is not None and values.get(f) == old.get(f) for f in fields
        ):
            return device
    return None


def _device(
    section: str,
    ident: str,
    how: str,
    values: Mapping[str, object],
    where: str,
    live: bool,
    sizes: Mapping[str, int],
) -> DeviceChange:
    label = next(
        (str(values[f]) for f in _LABEL_FIELDS[section] if values.get(f) is not None), ident
    )
    details: list[str] = []
    if label != ident:
        details.append(ident)  # the target: vdb
    for name in _DETAIL_FIELDS[section]:
        value = values.get(name)
        if value is None or value is False:
            continue
        if name in ("network", "bridge"):
            details.append(f"{name} {value}")
        elif name == "cache":
            details.append(f"cache {value}")
        elif value is True:
            details.append(name)
        elif isinstance(value, tuple):
            details.append(", ".join(str(v) for v in value))
        elif name == "format" and values.get("volume") is not None:
            continue  # a volume's format is the Volume's
        else:
            details.append(str(value))
    volume = values.get("volume")
    if section == "disks" and isinstance(volume, str) and volume in sizes:
        details.append(format_size(sizes[volume]))
    return DeviceChange(section, f"{section}[{ident}]", how, label, tuple(details), where,
                        live=live)  # fmt: skip
