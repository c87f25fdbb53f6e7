"""Why libvirt refused to define or start an object, said in the manifest's terms.

libvirt's refusal of a define or a start (``virDomainDefineXML``,
``virDomainCreate``, ``virNetworkCreate``) reaches the user as a one-line
``Problem``: ``path:line:col: field: <libvirt's message>; <hint>``. The
position is the manifest field most likely responsible (the disk whose file
QEMU cannot open, the fixed display port already taken, the interface on a
network that is not running), else the manifest itself. ``RULES`` is the
whole matching table: a pattern over libvirt's message and a function that
picks the field and writes the hint. A refusal no rule knows keeps libvirt's
message unchanged, with the manifest position and no hint.

The patterns match the texts libvirt 9.0 and QEMU 7.2 produce (see
tests/unit/test_hints.py for each, with where it was taken from). libvirt
reports these as ``virError`` messages (https://libvirt.org/errors.html); a
QEMU that exits while starting is quoted by libvirt as ``internal error:
process exited while connecting to monitor: ...`` or ``qemu unexpectedly
closed the monitor: ...``, QEMU's own lines following. The calls modelled:
https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainDefineXML,
#virDomainCreate, and
https://libvirt.org/html/libvirt-libvirt-network.html#virNetworkCreate.

Pure: strings and manifests in, a ``Problem`` out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.errors import Problem, SourcePosition
from reconciler.model import FieldPath, Manifest, NetworkSpec, VirtualMachineSpec

HOST_CONFIG = "/etc/reconciler/config.yaml"
QEMU_USER = "libvirt-qemu"
VNC_BASE_PORT = 5900


@dataclass(frozen=True, slots=True)
class Where:
    """A manifest field (``spec.disks[0].file``) and where it is written."""

    field: str
    position: SourcePosition


@dataclass(frozen=True, slots=True)
class Subjects:
    """What one manifest names that a refusal can be about, and where each is written.

    ``files``: host path -> the field naming it (disk and CD-ROM files, the file
    of a volume disk, kernel, initrd, serial log). ``ports``: fixed display port
    -> ``spec.graphics.port``. ``networks``: network name -> the interface using
    it. ``fields``: a few whole fields by name (``cpu``, ``type``, ``graphics``,
    ``bridge``, ``ipv4``, ``memory``; ``hugepages``, ``secureBoot``, ``bandwidth``:
    see ``_tuning_subjects``), the key present only when the manifest writes it.
    """

    source: SourcePosition
    files: Mapping[str, Where] = field(default_factory=dict)
    ports: Mapping[int, Where] = field(default_factory=dict)
    networks: Mapping[str, Where] = field(default_factory=dict)
    fields: Mapping[str, Where] = field(default_factory=dict)


def dotted(path: FieldPath) -> str:
    """``("spec", "disks", 0, "file")`` -> ``spec.disks[0].file``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else ("." if text else "") + part
    return text


def subjects_of(
    manifest: Manifest, volume_path: Callable[[str], str | None] = lambda name: None
) -> Subjects:
    """The ``Subjects`` of a VirtualMachine or Network manifest (others: the source only).

    ``volume_path``: a volume's file on the host, by volume name, when known;
    it lets a refusal about that file point at the disk naming the volume.
    """

    def where(*path: str | int) -> Where:
        return Where(dotted(path), manifest.position(path))

    spec = manifest.spec
    fields: dict[str, Where] = {}
    written = manifest.document.get("spec", {})
    if isinstance(spec, NetworkSpec):
        for name in ("bridge", "ipv4", "mode"):
            if name in written:
                fields[name] = where("spec", name)
        return Subjects(manifest.source, fields=fields)
    if not isinstance(spec, VirtualMachineSpec):
        return Subjects(manifest.source)
    for name in ("cpu", "type", "graphics", "firmware", "memory"):
        if name in written:
            fields[name] = where("spec", name)
    fields.update(_tuning_subjects(written, where))
    files: dict[str, Where] = {}
    for i, disk in enumerate(spec.disks):
        if disk.file:
            files[disk.file] = where("spec", "disks", i, "file")
        elif disk.volume:
            path = volume_path(disk.volume)
            if path:
                files[path] = where("spec", "disks", i, "volume")
    for i, cdrom in enumerate(spec.cdroms):
        if cdrom.file:
            files[cdrom.file] = where("spec", "cdroms", i, "file")
    for name, value in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        if value:
            files[value] = where("spec", name)
    ports: dict[int, Where] = {}
    if spec.graphics is not None and spec.graphics.port is not None:
        ports[spec.graphics.port] = where("spec", "graphics", "port")
    networks: dict[str, Where] = {}
    for i, nic in enumerate(spec.interfaces):
        if nic.network and nic.network not in networks:
            networks[nic.network] = where("spec", "interfaces", i, "network")
    return Subjects(manifest.source, files, ports, networks, fields)


def _tuning_subjects(written: object, where: Callable[..., Where]) -> dict[str, Where]:
    """``hugepages`` (``spec.memoryBacking.hugepages``), ``secureBoot``
    (``spec.firmware.secureBoot``) and ``bandwidth`` (the first NIC's
    ``spec.interfaces[i].bandwidth``), each only where the manifest writes it."""
    out: dict[str, Where] = {}
    if not isinstance(written, Mapping):
        return out
    backing = written.get("memoryBacking")
    if isinstance(backing, Mapping) and backing.get("hugepages") not in (None, False):
        out["hugepages"] = where("spec", "memoryBacking", "hugepages")
    firmware = written.get("firmware")
    if isinstance(firmware, Mapping) and firmware.get("secureBoot"):
        out["secureBoot"] = where("spec", "firmware", "secureBoot")
    nics = written.get("interfaces")
    for i, nic in enumerate(nics if isinstance(nics, list) else ()):
        if isinstance(nic, Mapping) and nic.get("bandwidth"):
            out["bandwidth"] = where("spec", "interfaces", i, "bandwidth")
            break
    return out


# --- the table -----------------------------------------------------------------

# What a rule decides: the field most likely responsible (None: the manifest) and the hint.
Verdict = tuple[Where | None, str]
# The named groups of a rule's match, "" where a group did not take part (``port``
# also stands for ``port2``: ``re`` allows no group name twice in one pattern).
Groups = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Rule:
    """One cause operators meet: its name, libvirt's text for it, and what to say."""

    name: str
    pattern: re.Pattern[str]
    verdict: Callable[[Groups, Subjects], Verdict]


def _msr(match: Groups, s: Subjects) -> Verdict:
    where = s.fields.get("cpu") or s.fields.get("type")
    msr = match["msr"].lower()
    if msr in ("", "0x10a"):
        return where, (
            "this host's KVM cannot set MSR 0x10a (IA32_ARCH_CAPABILITIES; usual on AMD "
            "hosts running KVM nested): disable the CPU feature arch-capabilities for the "
            f"host in {HOST_CONFIG} (vmDefaults: {{cpu: {{features: {{arch-capabilities: "
            "disable}}}}}}, which `bash scripts/setup-host.sh` probes and writes) or for "
            "this VM (spec.cpu: {features: {arch-capabilities: disable}})"
        )
    return where, (
        f"this host's KVM cannot set MSR {msr} that the guest CPU model implies (usual "
        "with KVM nested): disable the CPU feature behind it in vmDefaults.cpu.features of "
        f"{HOST_CONFIG} or in spec.cpu.features, or use spec.type: qemu"
    )


def _no_kvm(match: Groups, s: Subjects) -> Verdict:
    return s.fields.get("type"), (
        "KVM cannot be used on this host: set spec.type: qemu (emulation, slower), or make "
        "/dev/kvm usable (the kvm_intel or kvm_amd module loaded, /dev/kvm owned by group "
        "kvm with mode 0660; `bash scripts/setup-host.sh` sets that up)"
    )


def _no_smm(match: Groups, s: Subjects) -> Verdict:
    where = s.fields.get("secureBoot") or s.fields.get("type") or s.fields.get("firmware")
    return where, (
        "this host's KVM has no System Management Mode (usual with KVM nested), which "
        "UEFI secure boot needs: set spec.type: qemu (emulation, slower), or "
        "spec.firmware.secureBoot: false"
    )


def _huge_pages_short(match: Groups, s: Subjects) -> Verdict:
    if "hugepages" not in s.fields:  # plain memory: the host has too little free
        return s.fields.get("memory"), (
            "the host has too little free memory for the VM: lower spec.memory, stop "
            "another VM, or place it on another host (metadata.hosts)"
        )
    return s.fields["hugepages"], (
        "the host has too few free huge pages of this size for the VM's memory "
        "(grep Huge /proc/meminfo): reserve them before the start (`sysctl "
        "vm.nr_hugepages=N` for the default size, else `echo N > /sys/kernel/mm/hugepages/"
        "hugepages-<size>kB/nr_hugepages`; vm.nr_hugepages in /etc/sysctl.d/ keeps them "
        "across reboots), or remove memoryBacking.hugepages"
    )


def _no_hugetlbfs(match: Groups, s: Subjects) -> Verdict:
    return s.fields.get("hugepages"), (
        "libvirt found no hugetlbfs mount when libvirtd started: mount it (`systemctl "
        "start dev-hugepages.mount`, or `mount -t hugetlbfs hugetlbfs /dev/hugepages`), "
        "reserve pages (`sysctl vm.nr_hugepages=N`), then restart libvirtd; or remove "
        "memoryBacking.hugepages"
    )


def _no_qdisc(match: Groups, s: Subjects) -> Verdict:
    return s.fields.get("bandwidth"), (
        "this host's kernel lacks a traffic-control queueing discipline libvirt sets a "
        "NIC's bandwidth with (htb, sfq, ingress; tc's command above names it): `modprobe "
        "sch_htb sch_sfq sch_ingress cls_u32 act_police` (on some kernels from "
        "linux-modules-extra), or remove the interface's bandwidth"
    )


def _port_number(match: Groups) -> int | None:
    if match["port"]:
        return int(match["port"])
    if match["display"]:
        return VNC_BASE_PORT + int(match["display"])
    return None


def _port(match: Groups, s: Subjects) -> Verdict:
    port = _port_number(match)
    where = s.ports.get(port) if port is not None else None
    if where is None and len(s.ports) == 1:  # the manifest's one fixed port
        where = next(iter(s.ports.values()))
    where = where or s.fields.get("graphics")
    what = f"port {port}" if port is not None else "the display port"
    return where, (
        f"{what} is already taken by another domain or program (`ss -ltnp` shows which): "
        "set graphics.port: auto, or another free port"
    )


def _network_inactive(match: Groups, s: Subjects) -> Verdict:
    name = match["network"]
    return s.networks.get(name), (
        f"start the network: `virsh net-start {name}`, or set state: active in its Network "
        "manifest (and autostart: true to have it after a reboot)"
    )


def _network_missing(match: Groups, s: Subjects) -> Verdict:
    name = match["network"]
    return s.networks.get(name), (
        f"network {name} does not exist: add a Network manifest for it, or point the "
        "interface at an existing network"
    )


def _file_where(path: str, s: Subjects) -> Where | None:
    found = s.files.get(path)
    if found is None:  # a symlink or a relative spelling: compare the real paths
        real = os.path.normpath(path)
        found = next((w for p, w in s.files.items() if os.path.normpath(p) == real), None)
    return found


def _permission(match: Groups, s: Subjects) -> Verdict:
    path = match["path"]
    parent = os.path.dirname(path) or "/"
    return _file_where(path, s), (
        f"QEMU runs as user {QEMU_USER} (group kvm) and cannot open {path}: every directory "
        f"above it must let that user in (e.g. `chmod 0755 {parent}`; a 0700 directory "
        "owned by root is the usual cause), the file must lie under allowedDiskRoots, and "
        "no AppArmor/SELinux rule may forbid it"
    )


def _missing_file(match: Groups, s: Subjects) -> Verdict:
    path = match["path"]
    return _file_where(path, s), (
        f"{path} does not exist: create it (qemu-img create) or fix the path"
    )


def _subnet_in_use(match: Groups, s: Subjects) -> Verdict:
    return s.fields.get("ipv4"), (
        f"the subnet is already routed through interface {match['iface']}: "
        "choose another ipv4.address/prefix for this network"
    )


def _bridge_in_use(match: Groups, s: Subjects) -> Verdict:
    return s.fields.get("bridge"), (
        f"bridge {match['bridge']} already exists on the host: choose another "
        "spec.bridge (or mode: bridge to use an existing host bridge)"
    )


def _rule(name: str, pattern: str, verdict: Callable[[Groups, Subjects], Verdict]) -> Rule:
    return Rule(name, re.compile(pattern, re.IGNORECASE | re.DOTALL), verdict)


# First match wins: the specific causes before the generic ones ("Could not access
# KVM kernel module: Permission denied" is no storage permission problem).
RULES: tuple[Rule, ...] = (
    _rule("msr", r"failed to set MSR (?P<msr>0x[0-9a-f]+)|kvm_(?:buf_set|put)_msrs", _msr),
    _rule("no-smm", r"System Management Mode not supported by this hypervisor", _no_smm),
    _rule(
        "hugepages-short",
        r"unable to map backing store for guest RAM"
        r"|Insufficient free host memory pages available to allocate guest RAM",
        _huge_pages_short,
    ),
    _rule("no-hugetlbfs", r"hugetlbfs filesystem is not mounted", _no_hugetlbfs),
    _rule("no-qdisc", r"Specified qdisc (?:kind is unknown|not found)", _no_qdisc),
    _rule(
        "no-kvm",
        r"Could not access KVM kernel module|failed to initiali[sz]e kvm|KVM is not "
        r"available|does not support virt type 'kvm'|domaintype=kvm\b|/dev/kvm",
        _no_kvm,
    ),
    _rule(
        "port-in-use",
        r"Failed to reserve port (?P<port>\d+)"
        r"|-vnc [^\s,]*:(?P<display>\d+)\S*: Failed to (?:find an available port|bind socket): "
        r"Address already in use"
        r"|binding socket to \S+:(?P<port2>\d+) failed"
        r"|Address already in use",
        _port,
    ),
    _rule("network-inactive", r"network '(?P<network>[^']+)' is not active", _network_inactive),
    _rule(
        "network-missing", r"no network with matching name '(?P<network>[^']+)'", _network_missing
    ),
    _rule(
        "storage-permission",
        r"(?:Could not open|Cannot access storage file|cannot open file) '(?P<path>[^']+)'"
        r"(?: \(as uid:\d+, gid:\d+\))?: Permission denied",
        _permission,
    ),
    _rule(
        "storage-missing",
        r"(?:Could not open|Cannot access storage file) '(?P<path>[^']+)'"
        r"(?: \(as uid:\d+, gid:\d+\))?: No such file or directory",
        _missing_file,
    ),
    _rule(
        "subnet-in-use", r"Network is already in use by interface (?P<iface>\S+)", _subnet_in_use
    ),
    _rule("bridge-in-use", r"bridge name '(?P<bridge>[^']+)' already in use", _bridge_in_use),
)


def match_rule(message: str) -> tuple[Rule, re.Match[str]] | None:
    """The first rule of ``RULES`` whose pattern occurs in ``message``, with its match."""
    for rule in RULES:
        found = rule.pattern.search(message)
        if found is not None:
            return rule, found
    return None


def explain(message: str, subjects: Subjects) -> Problem:
    """libvirt's refusal ``message`` as a ``Problem`` at the responsible manifest field.

    The message is kept as libvirt wrote it; the position is the field a rule
    points at, else the manifest (``subjects.source``); the hint is the rule's,
    else empty. Never raises: any text gives a ``Problem``.
    """
    found = match_rule(message)
    if found is None:
        return Problem(subjects.source, message)
    rule, match = found
    groups = match.groupdict(default="")
    groups["port"] = groups.get("port") or groups.get("port2") or ""
    where, hint = rule.verdict(groups, subjects)
    if where is None:
        return Problem(subjects.source, message, hint=hint)
    return Problem(where.position, message, where.field, hint)
