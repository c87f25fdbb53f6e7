"""Preflight: what this host cannot run, found before anything is touched.

What arrives: the manifests that loaded (model.Manifest), a ``HostFacts``
value (what the host offers, read by ``Hypervisor.host_facts`` in
hypervisor.py, the one module that talks to libvirt) and the ``Observed``
snapshot (other domains and networks). What leaves: ``(manifest,
FieldProblem)`` findings, which ``manifests.drop_findings`` turns into load
problems placed at ``file:line:col`` with their field path, exactly like
reference problems: the manifest is not planned, the others proceed, and
nothing is pruned while there is a problem (SPEC §3).

The checks, each modelling a section of libvirt's documentation:

* ``spec.machine``: a machine type this QEMU knows for the VM's arch and
  type (capabilities XML, ``<guest><arch><machine>``; formatcaps.html);
* ``spec.vcpus`` / ``spec.maxVcpus``: at most the machine's limit
  (domain capabilities ``<vcpu max=...>``; formatdomaincaps.html#cpu-allocation);
* ``spec.memory`` / ``spec.maxMemory``: at most the host's memory
  (``virNodeGetInfo``, bytes here);
* ``spec.type: kvm``: the host offers a ``kvm`` domain for the arch
  (capabilities ``<guest><arch><domain type='kvm'>``);
* ``spec.firmware: uefi``: the machine's domain capabilities offer EFI
  firmware (``<os><enum name='firmware'><value>efi</value>`` or a
  ``<loader>`` value; formatdomaincaps.html#bios-bootloader);
* ``spec.disks[i].file``, ``cdroms[i].file``, ``kernel``, ``initrd``: the
  file exists and QEMU's user (the DAC ``<baselabel>`` of capabilities'
  ``<secmodel>``) can search every directory above it (libvirt's
  ``dynamic_ownership`` chowns the file itself, not its directories);
* ``spec.disks[i].format`` of a ``file:`` disk (raw when not written): what the
  image's header announces (a qcow2 image opened as raw is corrupted by the guest);
* ``spec.interfaces[i].bridge``: an existing host bridge, or one a Network
  makes (formatdomain.html#bridge-to-lan);
* ``spec.interfaces[i].direct.dev``: an existing host network interface
  (formatdomain.html#direct-attachment-to-physical-interface);
* ``spec.graphics.port``: a fixed VNC/SPICE port no other domain holds
  (formatdomain.html#graphical-framebuffers);
* ``spec.cpu``: a named model libvirt knows for the arch and this host can run,
  feature names libvirt knows, and ``require``d features this host's CPU has
  (libvirt's own comparison, ``virConnectCompareHypervisorCPU`` with
  ``FAIL_INCOMPATIBLE``, against the host CPU as the hypervisor of that
  machine and type sees it; formatdomaincaps.html#cpu-configuration);
* ``spec.cputune``: every host CPU a pin names is one this host has, and
  ``spec.memoryBacking.hugepages.pageSize`` a huge page size it offers
  (capabilities ``<topology><cells><cpus>``, ``<cpu><pages>``; formatcaps.html);
* StoragePool ``spec.type``: a type this libvirt has the storage backend for
  (``virConnectGetStoragePoolCapabilities``; formatstoragecaps.html), and
  ``spec.source.devices``: block devices that exist;
* Network ``spec.forward.interfaces`` (macvtap): host network interfaces;
* Network ``spec.ipv4``: a subnet no other libvirt network (active or
  autostarted) and no subnet on a host interface (its connected routes) overlaps
  (formatnetwork.html#addressing).

A fact that could not be read (``None`` in ``HostFacts``) skips its check;
``HostFacts.unknown`` says why, one line each, and the caller prints it.
For a remote URI the host's files, bridges and addresses are not read at all
(they are not the controller's), so those checks are silent.

Extension point: ``VM_CHECKS`` lists the per-VM checks, each a function
``(manifest, spec, facts, context) -> FieldProblems``; the host facts a new
check needs go into ``HostFacts`` and ``FactsWanted`` (``check_cpu`` and its
``CpuQuestion``s show the way).

Also here, for ``validate`` (offline, no libvirt): ``path_problems``, the
``allowedDiskRoots`` rule of the configuration applied to every host path a
manifest names.

Pure: no I/O (``path_problems`` resolves symlinks of the paths it is given).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.hostpaths import PathPolicy, host_paths
from reconciler.model import (
    FieldPath,
    FieldProblem,
    Manifest,
    NetworkSpec,
    Rng,
    StoragePoolSpec,
    Tpm,
    VirtualMachineSpec,
    VolumeSpec,
)
from reconciler.snapshot import Observed, ObservedNetwork
from reconciler.tuning import format_cpuset, parse_cpuset
from reconciler.units import format_size, parse_size
from reconciler.xml.domain_tuning import pins
from reconciler.xml.domain_tuning import read as read_tuning

Finding = tuple[Manifest, FieldProblem]
GUEST_ARCH = "x86_64"  # the arch every domain is rendered with (xml/domain.py)

# --- host facts: plain values, read by hypervisor.py ----------------------------------


@dataclass(frozen=True, slots=True)
class MachineCaps:
    """Domain capabilities of one (arch, machine, virt type): ``virsh domcapabilities``."""

    machine: str  # canonical name libvirt answered with (``pc`` -> ``pc-i440fx-7.2``)
    max_vcpus: int | None  # <vcpu max=...>; None: not stated
    firmware: frozenset[str] = frozenset()  # <os><enum name='firmware'> values, e.g. {"efi"}
    loaders: tuple[str, ...] = ()  # <os><loader><value> paths (OVMF_CODE...)
    xml: str = ""  # the whole document, for checks still to come (<cpu> models)


@dataclass(frozen=True, slots=True)
class DirFacts:
    """One directory above a host file: its permission bits and owner."""

    path: str
    mode: int  # st_mode
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class PathFacts:
    """A host file a manifest names: whether it exists, and the directories above it
    (``/`` first) as far as they exist."""

    exists: bool
    dirs: tuple[DirFacts, ...] = ()
    # the format its header announces (images.sniff_format: "raw" when none); None:
    # not a regular file, or not read
    image_format: str | None = None


@dataclass(frozen=True, slots=True)
class QemuUser:
    """The user QEMU runs as (qemu.conf ``user``/``group``, as libvirt reports it)."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups, gid included
    name: str = ""


@dataclass(frozen=True, slots=True)
class CpuQuestion:
    """Can this host run a CPU? ``model`` None: the host-model base of the machine's
    domain capabilities, with the ``required`` features on top (host-model,
    host-passthrough, maximum); else that named model with them, less the ``disabled``
    features (the guest does not get them, so the host need not have them) and with
    the ``forbidden`` ones (libvirt refuses a host that has one; ``forbid`` does not
    take a feature out of the model: it is still required). Asked as libvirt asks it
    when it starts a domain (formatdomain.html#cpu-model-and-topology)."""

    arch: str
    machine: str
    virt_type: str
    model: str | None
    required: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()


def cpu_question(spec: VirtualMachineSpec) -> CpuQuestion | None:
    """The comparison ``spec.cpu`` needs (None: nothing to ask: no CPU, or neither a
    named model nor a required feature)."""
    cpu = spec.cpu
    if cpu is None:
        return None
    required = tuple(name for name, policy in cpu.features if policy == "require")
    model = cpu.model if cpu.mode == "custom" else None
    if model is None and not required:
        return None
    if model is None:  # the host's own model: what it lacks is what a required one asks
        return CpuQuestion(GUEST_ARCH, spec.machine, spec.type, None, required)
    disabled = tuple(name for name, policy in cpu.features if policy == "disable")
    forbidden = tuple(name for name, policy in cpu.features if policy == "forbid")
    return CpuQuestion(GUEST_ARCH, spec.machine, spec.type, model, required, disabled, forbidden)


def cpu_compare_xml(question: CpuQuestion, host_model: str | None) -> str | None:
    """The ``<cpu>`` libvirt compares for ``question`` (None: no model to compare with)."""
    import xml.etree.ElementTree as ET

    model = question.model or host_model
    if model is None:
        return None
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    ET.SubElement(cpu, "model").text = model
    for policy, names in (("require", question.required), ("disable", question.disabled),
                          ("forbid", question.forbidden)):  # fmt: skip
        for name in names:
            ET.SubElement(cpu, "feature", {"policy": policy, "name": name})
    return ET.tostring(cpu, encoding="unicode")


@functools.cache
def host_cpu_model(caps_xml: str) -> tuple[str | None, tuple[str, ...]]:
    """The host-model CPU of domain capabilities: its base model and feature names
    (cached: one capabilities document serves every VM of a plan)."""
    if not caps_xml:
        return None, ()
    import xml.etree.ElementTree as ET

    mode = ET.fromstring(caps_xml).find("cpu/mode[@name='host-model']")
    if mode is None:
        return None, ()
    model = (mode.findtext("model") or "").strip() or None
    return model, tuple(str(f.get("name")) for f in mode.findall("feature") if f.get("name"))


@dataclass(frozen=True, slots=True)
class HostAddress:
    """An IPv4 subnet on a host interface, e.g. ("eth0", "192.168.1.0/24"): a directly
    connected route, as libvirt itself checks a network's subnet against them."""

    interface: str
    address: str


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What this host offers. ``None`` (or a missing key) means "not known": the
    checks that need it are skipped, and ``unknown`` says why, one line each."""

    uri: str = ""
    local: bool = True  # False: a remote URI; host files, bridges, addresses are not read
    memory: int | None = None  # bytes
    # (arch, virt type) -> machine types and aliases; a key missing: no such guest
    machines: Mapping[tuple[str, str], frozenset[str]] | None = None
    # (arch, machine as written, virt type) -> its domain capabilities
    machine_caps: Mapping[tuple[str, str, str], MachineCaps] = field(default_factory=dict)
    qemu_user: QemuUser | None = None
    paths: Mapping[str, PathFacts] = field(default_factory=dict)  # path as written -> facts
    bridges: frozenset[str] | None = None  # host bridges; None: not known
    interfaces: frozenset[str] | None = None  # every host network interface
    addresses: tuple[HostAddress, ...] | None = None
    host_cpu_model: str | None = None  # the host CPU's model in capabilities, e.g. Broadwell
    cpus: frozenset[int] | None = None  # the host's CPU numbers (capabilities <topology>)
    page_sizes: frozenset[int] | None = None  # memory page sizes it offers, bytes (<pages>)
    cpu_models: frozenset[str] | None = None  # CPU model names libvirt knows for the arch
    cpu_feature_names: frozenset[str] = frozenset()  # every x86 feature name (local cpu_map)
    cpu_features_unknown: frozenset[str] = frozenset()  # asked-about names libvirt rejects
    # CpuQuestion -> None (the host can run it) or libvirt's answer (what it lacks)
    cpu_verdicts: Mapping[CpuQuestion, str | None] = field(default_factory=dict)
    # the hostdevs keys of the host's PCI and USB devices (xml/domain_storage.py,
    # node_device_keys); None: not known
    host_devices: frozenset[str] | None = None
    # pool types this libvirt has a storage backend for (``virsh pool-capabilities``,
    # ``<pool type= supported='yes'>``); None: not read (only dir pools declared)
    pool_types: frozenset[str] | None = None
    # huge page size (bytes) -> pages free on the host, all NUMA cells (virNodeGetFreePages);
    # None: not read (no VM to run asks for huge pages)
    free_pages: Mapping[int, int] | None = None
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FactsWanted:
    """What the manifests need to know about the host (``wanted``), so that only that is
    read: domain capabilities per (arch, machine, type), files, bridges, addresses."""

    guests: frozenset[tuple[str, str, str]] = frozenset()
    paths: frozenset[str] = frozenset()
    bridges: bool = False
    addresses: bool = False
    cpu_questions: frozenset[CpuQuestion] = frozenset()
    cpu_features: frozenset[str] = frozenset()  # every feature name a manifest writes
    pool_types: bool = False  # a pool of another type than dir is declared
    host_devices: bool = False  # a VM to run passes a host device through
    free_pages: bool = False  # a VM to run asks for huge pages


def wanted(
    manifests: Sequence[Manifest], path_allowed: Callable[[str], bool] | None = None
) -> FactsWanted:
    """The facts ``check`` will look at for ``manifests``. Paths outside the allowed
    roots are not wanted: the planner refuses them, and they are not looked at."""
    guests: set[tuple[str, str, str]] = set()
    paths: set[str] = set()
    questions: set[CpuQuestion] = set()
    features: set[str] = set()
    bridges = addresses = pool_types = host_devices = free_pages = False
    for m in manifests:
        spec = m.spec
        if isinstance(spec, StoragePoolSpec) and spec.type != "dir":
            pool_types = True
            paths.update(spec.source.devices)
        if isinstance(spec, VirtualMachineSpec):
            guests.add((GUEST_ARCH, spec.machine, spec.type))
            question = cpu_question(spec)
            if question is not None:
                questions.add(question)
            if spec.cpu is not None:
                features.update(name for name, _ in spec.cpu.features)
            paths.update(p for _, p in host_files(spec))
            paths.update(p for _, p in serial_files(spec))
            host_devices = host_devices or (bool(spec.hostdevs) and spec.state == "running")
            mb = spec.tuning.memory_backing
            free_pages = free_pages or (spec.state == "running" and mb is not None
                                        and mb.hugepages is not None)  # fmt: skip
            bridges = bridges or any(n.bridge or n.direct for n in spec.interfaces)
        elif isinstance(spec, NetworkSpec):
            addresses = addresses or spec.ipv4 is not None
            bridges = bridges or bool(spec.forward and spec.forward.interfaces)
    if path_allowed is not None:
        paths = {p for p in paths if path_allowed(p)}
    return FactsWanted(frozenset(guests), frozenset(paths), bridges, addresses,
                       frozenset(questions), frozenset(features), pool_types,
                       host_devices, free_pages)  # fmt: skip


# --- the checks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What the checks share: other objects in libvirt and in the manifests."""

    observed: Observed
    manifests: Sequence[Manifest]
    # bridges that Networks (in the manifests or libvirt) make
    network_bridges: frozenset[str]
    # host paths that Volume manifests will create (pool path / volume name)
    volume_paths: frozenset[str]
    # port -> (domain, listen, running) of every other domain's fixed or held display port
    ports: Mapping[int, tuple[tuple[str, str, bool], ...]]


VmCheck = Callable[[Manifest, VirtualMachineSpec, HostFacts, Context], Iterable[FieldProblem]]


def check(manifests: Sequence[Manifest], facts: HostFacts, observed: Observed) -> list[Finding]:
    """Every preflight problem of ``manifests`` on this host, in manifest order."""
    context = _context(manifests, observed)
    findings: list[Finding] = []
    for m in manifests:
        if isinstance(m.spec, VirtualMachineSpec):
            for vm_check in VM_CHECKS:
                findings.extend((m, p) for p in vm_check(m, m.spec, facts, context))
        elif isinstance(m.spec, NetworkSpec):
            findings.extend((m, p) for p in check_subnet(m, m.spec, facts, context))
            findings.extend((m, p) for p in check_forward_interfaces(m.spec, facts))
        elif isinstance(m.spec, StoragePoolSpec):
            findings.extend((m, p) for p in check_pool(m, m.spec, facts))
    return findings


# The Debian package holding each storage backend libvirt 9.0 can have: the common ones
# come with libvirt-daemon (dpkg -S libvirt_storage_backend_logical.so), the others
# are packages of their own.
POOL_PACKAGES = {"zfs": "libvirt-daemon-driver-storage-zfs"}


def pool_types_of(caps_xml: str) -> frozenset[str]:
    """The pool types a ``virConnectGetStoragePoolCapabilities`` document says this
    libvirt supports (formatstoragecaps: ``<pool type=... supported='yes'>``)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(caps_xml.encode())
    return frozenset(str(p.get("type")) for p in root.findall("pool")
                     if p.get("supported") == "yes")  # fmt: skip


def check_pool(m: Manifest, spec: StoragePoolSpec, facts: HostFacts) -> Iterator[FieldProblem]:
    """A pool type this libvirt has the storage backend for (formatstoragecaps), and
    source devices that exist on the host (a local host only)."""
    if facts.pool_types is not None and spec.type not in facts.pool_types:
        package = POOL_PACKAGES.get(spec.type, "libvirt-daemon")
        yield FieldProblem(
            ("spec", "type"),
            f"this host's libvirt has no {spec.type} storage backend (virsh "
            f"pool-capabilities says supported='no')",
            f"install Debian's {package} on the host and restart libvirtd, or use "
            "another pool type",
        )
    if not facts.local:
        return
    named = "device" if "device" in m.document["spec"].get("source", {}) else "devices"
    for i, device in enumerate(spec.source.devices):
        found = facts.paths.get(device)
        if found is not None and not found.exists:
            where: FieldPath = (("spec", "source", "device") if named == "device"
                                else ("spec", "source", "devices", i))  # fmt: skip
            yield FieldProblem(where, f"device {device} does not exist on this host",
                               "name an existing block device (lsblk lists them)")  # fmt: skip


def check_forward_interfaces(spec: NetworkSpec, facts: HostFacts) -> Iterator[FieldProblem]:
    """A macvtap network's ``forward.interfaces`` are host network interfaces
    (formatnetwork.html#connectivity: ``<forward><interface dev=>``); libvirt itself
    says nothing until a guest's NIC is started on it."""
    if facts.interfaces is None or spec.forward is None:
        return
    for i, name in enumerate(spec.forward.interfaces):
        if name not in facts.interfaces:
            close = difflib.get_close_matches(name, sorted(facts.interfaces))
            hint = f"did you mean {close[0]}? " if close else ""
            yield FieldProblem(("spec", "forward", "interfaces", i),
                               f"no network interface {name} on this host",
                               hint + "name one of `ip link`'s interfaces")  # fmt: skip


def check_machine(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """The machine type is one this QEMU knows for the arch and virt type; the vCPU counts
    are within its limit; UEFI firmware is offered for it."""
    if facts.machines is None:
        return
    known = facts.machines.get((GUEST_ARCH, spec.type))
    if known is None:
        return  # no such guest type: check_kvm says so
    if spec.machine not in known:
        close = difflib.get_close_matches(spec.machine, sorted(known), n=5, cutoff=0.6)
        hint = (
            "close ones: " + ", ".join(close)
            if close
            else "e.g. pc or q35 (`virsh capabilities` lists them all)"
        )
        yield FieldProblem(
            ("spec", "machine"),
            f"machine type '{spec.machine}' is not known to this host's QEMU "
            f"({GUEST_ARCH}, type {spec.type})",
            hint,
        )
        return
    caps = facts.machine_caps.get((GUEST_ARCH, spec.machine, spec.type))
    if caps is None:
        return
    limit = caps.max_vcpus
    if limit is not None:
        about = f"machine {caps.machine} ({spec.type}) takes at most {limit} vCPUs"
        hint = f"lower it to {limit} or less, or use a machine type that takes more (q35: 288)"
        if spec.vcpus > limit:
            yield FieldProblem(("spec", "vcpus"), f"{spec.vcpus} vCPUs: {about}", hint)
        if spec.max_vcpus > limit and _written(m, "maxVcpus"):
            yield FieldProblem(("spec", "maxVcpus"), f"{spec.max_vcpus} vCPUs: {about}", hint)
    if spec.firmware == "uefi" and "efi" not in caps.firmware and not caps.loaders:
        yield FieldProblem(
            ("spec", "firmware"),
            f"uefi needs EFI firmware, and this host's QEMU offers none for machine {caps.machine}",
            "install OVMF (apt install ovmf), or use firmware: bios",
        )
    yield from _device_caps(spec, caps.xml)


@functools.cache
def _enums(caps_xml: str) -> dict[str, frozenset[str]]:
    """Domain capabilities' enums, ``<kind>/<enum name>`` -> values (``tpm/backendModel``,
    ``os/loader/secure``), and ``<kind>@supported`` -> {yes|no}; cached per document."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(caps_xml)
    out: dict[str, frozenset[str]] = {}
    for kind in ("devices/tpm", "devices/video", "devices/rng", "os/loader"):
        element = root.find(kind)
        if element is None:
            continue
        short = kind.split("/", 1)[1]
        out[f"{short}@supported"] = frozenset({element.get("supported", "no")})
        for enum in element.findall("enum"):
            out[f"{short}/{enum.get('name')}"] = frozenset(
                (v.text or "").strip() for v in enum.findall("value"))  # fmt: skip
    return out


def _device_caps(spec: VirtualMachineSpec, caps_xml: str) -> Iterator[FieldProblem]:
    """The TPM, secure boot, video model and rng a manifest names are ones this host's
    libvirt offers for the machine (domain capabilities: formatdomaincaps "TPM device",
    "BIOS bootloader", "Video device", "RNG device"); a kind the document does not
    describe is not judged."""
    if not caps_xml:
        return
    enums, dev = _enums(caps_xml), spec.devices
    if isinstance(dev.tpm, Tpm) and "tpm@supported" in enums:
        if "emulator" not in enums.get("tpm/backendModel", frozenset()):
            yield FieldProblem(("spec", "tpm"), "this host offers no emulated TPM",
                               "install swtpm (apt install swtpm swtpm-tools), or remove "
                               "tpm")  # fmt: skip
        elif dev.tpm.model not in enums.get("tpm/model", frozenset({dev.tpm.model})):
            yield FieldProblem(("spec", "tpm", "model"),
                               f"this host offers no {dev.tpm.model} TPM",
                               "use " + " or ".join(sorted(enums["tpm/model"])))  # fmt: skip
    if dev.secure_boot and "loader/secure" in enums and "yes" not in enums["loader/secure"]:
        yield FieldProblem(("spec", "firmware", "secureBoot"),
                           "this host's firmware offers no secure boot",
                           "install OVMF (apt install ovmf), or write secureBoot: false")
    if dev.video is not None and dev.video.model not in enums.get(
            "video/modelType", frozenset({dev.video.model})):  # fmt: skip
        yield FieldProblem(("spec", "video", "model"),
                           f"this host's QEMU has no {dev.video.model} video device",
                           "use " + ", ".join(sorted(enums["video/modelType"])))
    if isinstance(dev.rng, Rng) and "random" not in enums.get(
            "rng/backendModel", frozenset({"random"})):  # fmt: skip
        yield FieldProblem(("spec", "rng"), "this host's QEMU has no random rng backend",
                           "remove rng")


def check_kvm(
    _m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """``type: kvm`` needs a kvm domain type for the arch (hardware virtualisation)."""
    if facts.machines is None or spec.type != "kvm":
        return
    if (GUEST_ARCH, "kvm") not in facts.machines:
        yield FieldProblem(
            ("spec", "type"),
            "this host has no KVM: libvirt offers no kvm domain for " + GUEST_ARCH,
            "use type: qemu (emulation, slow), or enable virtualisation (/dev/kvm)",
        )


def check_memory(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """Memory and maxMemory fit in the host's memory."""
    if facts.memory is None:
        return
    if spec.memory <= facts.memory and spec.max_memory <= facts.memory:
        return
    host = _about(facts.memory)
    hint = "lower it, or place the VM on a larger host (metadata.hosts)"
    if spec.memory > facts.memory:
        yield FieldProblem(
            ("spec", "memory"),
            f"{format_size(spec.memory)} is more than this host's memory ({host})",
            hint,
        )
    if spec.max_memory > facts.memory and _written(m, "maxMemory"):
        yield FieldProblem(
            ("spec", "maxMemory"),
            f"{format_size(spec.max_memory)} is more than this host's memory ({host})",
            hint,
        )


def check_files(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """Disk, CD-ROM, kernel and initrd files exist, and QEMU's user can reach them.

    A missing file the existing domain's definition already names, on a VM the apply
    does not start (``state: stopped``), is not a problem: redefining it (adoption,
    any field change) opens no file, and refusing would only stop ownership being
    recorded; the start that needs the file is refused when it is asked for. (Its path
    is still checked against the allowed roots, as every path a manifest names.)"""
    if not facts.local:
        return
    record = ctx.observed.domains.get(m.name)

    @functools.cache
    def defined() -> frozenset[str]:  # parsed only when a file is missing
        if record is None or spec.state != "stopped":
            return frozenset()
        return _defined_files(record.config_xml)

    for where, path in host_files(spec):
        found = facts.paths.get(path)
        if found is None:
            continue  # not read (outside the allowed roots: the planner refuses it)
        if not found.exists:
            if path in ctx.volume_paths:
                continue  # a Volume manifest makes it
            if path in defined():
                continue  # already the stopped domain's: a redefine opens nothing
            yield FieldProblem(
                where,
                f"{path} does not exist on this host",
                "create it, or fix the path",
            )
            continue
        user = facts.qemu_user
        if user is None or user.uid == 0:
            continue
        for d in found.dirs:
            if not _searchable(d, user):
                who = user.name or f"uid {user.uid}"
                yield FieldProblem(
                    where,
                    f"QEMU runs as {who} and cannot reach {path}: directory {d.path} "
                    f"(mode {stat.S_IMODE(d.mode):04o}, owner {d.uid}:{d.gid}) is not "
                    f"searchable for it",
                    f"chmod o+x {d.path}, or keep images where QEMU can reach them "
                    "(e.g. /var/lib/libvirt/images)",
                )
                break


def check_disk_formats(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """A ``file:`` disk's ``format`` (raw when not written) is what the image's header
    announces (images.sniff_format). A qcow2 image opened as raw shows the guest its
    metadata as the disk, and the guest's writes corrupt the image; a raw disk named
    qcow2 does not start. Placed at ``format`` when written, else at ``file``
    (formatdomain.html#hard-drives-floppy-disks-cdroms, ``<driver type>``)."""
    if not facts.local:
        return
    raw_spec = m.document.get("spec")
    disks = raw_spec.get("disks", ()) if isinstance(raw_spec, Mapping) else ()
    for i, d in enumerate(spec.disks):
        if not d.file or d.format is None:
            continue
        found = facts.paths.get(d.file)
        header = found.image_format if found is not None and found.exists else None
        if header is None or header == d.format:
            continue
        written = i < len(disks) and isinstance(disks[i], Mapping) and "format" in disks[i]
        where: FieldPath = ("spec", "disks", i, "format" if written else "file")
        said = f"format: {d.format}" if written else "format: raw (the default)"
        if header != "raw":
            yield FieldProblem(
                where,
                f"{d.file} is a {header} image, but the disk says {said}: the guest would "
                f"see the image's {header} metadata as its disk, and its writes corrupt it",
                f"set format: {header}",
            )
        elif d.format == "qcow2":
            yield FieldProblem(
                where, f"{d.file} has no qcow2 header, but the disk says {said}",
                "set format: raw (or remove format:), or name the right image",
            )


def check_bridges(
    _m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """A NIC's ``bridge`` is an existing host bridge, or one a Network makes."""
    if facts.bridges is None:
        return
    for i, nic in enumerate(spec.interfaces):
        name = nic.bridge
        if not name or name in facts.bridges or name in ctx.network_bridges:
            continue
        where: FieldPath = ("spec", "interfaces", i, "bridge")
        if facts.interfaces is not None and name in facts.interfaces:
            yield FieldProblem(
                where,
                f"host interface {name} is not a bridge",
                f"make a bridge with {name} in it and name that, or use a Network",
            )
            continue
        close = difflib.get_close_matches(name, sorted(facts.bridges | ctx.network_bridges))
        hint = f"did you mean {close[0]}? " if close else ""
        yield FieldProblem(
            where,
            f"no bridge {name} on this host",
            hint + f"create it (ip link add {name} type bridge), or use network: <a Network>",
        )


def check_direct_devices(
    _m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """A direct NIC's ``direct.dev`` is a host network interface (formatdomain "Direct
    attachment to physical interface": libvirt puts a macvtap on it at start)."""
    if facts.interfaces is None:
        return
    for i, nic in enumerate(spec.interfaces):
        if nic.direct is None or nic.direct in facts.interfaces:
            continue
        close = difflib.get_close_matches(nic.direct, sorted(facts.interfaces))
        hint = f"did you mean {close[0]}? " if close else ""
        yield FieldProblem(
            ("spec", "interfaces", i, "direct", "dev"),
            f"no network interface {nic.direct} on this host",
            hint + "name a host interface (ip link show)",
        )


def check_graphics_port(
    m: Manifest, spec: VirtualMachineSpec, _facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """A fixed display port is not held by any other domain (running, or defined with that
    port fixed)."""
    g = spec.graphics
    if g is None or g.port is None:
        return
    for holder, listen, running in ctx.ports.get(g.port, ()):
        if holder == m.name or not _listens_overlap(g.listen or "", listen):
            continue
        how = "running, holds it" if running else "defined with it fixed"
        yield FieldProblem(
            ("spec", "graphics", "port"),
            f"port {g.port} is taken by domain '{holder}' ({how})",
            "use port: auto, or another free port",
        )
        return


def check_cpu(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """A named CPU model libvirt knows and this host can run; feature names libvirt
    knows; ``require``d features this host's CPU has (libvirt's own comparison). A
    value the host's vmDefaults gave says so in its hint."""
    cpu = spec.cpu
    if cpu is None:
        return

    def origin(path: str) -> str:
        taken = path in m.host_defaults
        return f"; {path} comes from vmDefaults in {m.host_defaults_origin}" if taken else ""

    written = m.document.get("spec", {}).get("cpu")
    where: FieldPath = ("spec", "cpu", "model") if isinstance(written, Mapping) and \
        "model" in written else ("spec", "cpu")  # fmt: skip
    if cpu.model is not None and facts.cpu_models is not None \
            and cpu.model not in facts.cpu_models:  # fmt: skip
        close = difflib.get_close_matches(cpu.model, sorted(facts.cpu_models), n=4, cutoff=0.5)
        yield FieldProblem(
            where, f"libvirt knows no CPU model {cpu.model!r} for {GUEST_ARCH}",
            ("close ones: " + ", ".join(close) if close else "`virsh cpu-models x86_64` lists them")
            + "; or use cpu: host-model" + origin("cpu.model"),
        )  # fmt: skip
        return
    caps = facts.machine_caps.get((GUEST_ARCH, spec.machine, spec.type))
    for name, _policy in cpu.features:
        if name in facts.cpu_features_unknown:
            # only for a name to suggest: the capabilities are parsed once, and only then
            names = facts.cpu_feature_names or frozenset(
                host_cpu_model(caps.xml if caps else "")[1]
            )
            close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
            yield FieldProblem(
                ("spec", "cpu", "features", name), f"libvirt knows no CPU feature {name!r}",
                ("did you mean " + " or ".join(repr(c) for c in close) + "?; " if close else "")
                + "names are as libvirt spells them (its cpu_map, x86_features.xml)"
                + origin(f"cpu.features.{name}"),
            )  # fmt: skip
    question = cpu_question(spec)
    if question is None or any(n in facts.cpu_features_unknown for n in
                               question.required + question.disabled + question.forbidden):
        return
    verdict = facts.cpu_verdicts.get(question)
    if verdict is None:
        return
    host = f"this host's CPU ({facts.host_cpu_model})" if facts.host_cpu_model else "this host"
    provided = _missing_features(verdict, "forbidden features:")
    if provided:
        yield FieldProblem(
            ("spec", "cpu", "features", provided[0]),
            f"{host} provides {', '.join(provided)}, which cpu.features forbids: libvirt "
            "refuses to start the VM on it",
            f"write {provided[0]}: disable to keep it from the guest on any host"
            + origin(f"cpu.features.{provided[0]}"),
        )  # fmt: skip
        return
    missing = _missing_features(verdict)
    lacking = [n for n in question.required if n in missing]
    if lacking:
        yield FieldProblem(
            ("spec", "cpu", "features", lacking[0]),
            f"{host} does not provide required feature{'s' if len(lacking) > 1 else ''} "
            f"{', '.join(lacking)}",
            f"set {'their policies' if len(lacking) > 1 else 'its policy'} to optional, or run "
            f"this VM on a host that has {'them' if len(lacking) > 1 else 'it'}"
            + origin(f"cpu.features.{lacking[0]}"),
        )
    if cpu.model is not None and (not lacking or set(missing) - set(lacking)):
        others = [n for n in missing if n not in lacking]
        shown = ", ".join(others) or verdict
        # a model's feature the manifest forbids is still required of the host
        forbidden = [n for n in others if n in question.forbidden]
        fix = (f"write {forbidden[0]}: disable (forbid keeps it required), or use cpu: "
               "host-model" if forbidden else "use cpu: host-model, or disable what it lacks")
        yield FieldProblem(
            where, f"{host} cannot run CPU model {cpu.model}: it lacks {shown}",
            fix + ", or a model this host can run"
            " (`virsh domcapabilities` marks them usable='yes')" + origin("cpu.model"),
        )


def check_tuning(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """Each host CPU a pin names (``cputune``) is one this host has, and a huge page
    size named (``memoryBacking.hugepages.pageSize``) is one it offers (capabilities
    ``<topology><cells><cpus>`` and ``<cpu><pages>``; formatcaps.html). libvirt refuses
    such a pin only when the domain starts or the pin is set live. A pin the existing
    domain already has is not the manifest's doing (an adoption keeps it as it is)."""
    pinned = spec.tuning.pinned_cpus()
    if facts.cpus is not None and pinned:
        have = format_cpuset(facts.cpus)
        existing = ctx.observed.domains.get(m.name) if ctx is not None else None
        # (read only for a VM that pins: reading a definition is most of a plan's cost,
        # and a VM found in sync by its fingerprint is otherwise never parsed)
        config = existing.config if existing is not None else {}
        for where, field, number, cpuset in pinned:
            now = config.get(field)
            if (now == cpuset if number is None else pins(now).get(number) == cpuset):
                continue
            lacking = parse_cpuset(cpuset) - facts.cpus
            if lacking:
                yield FieldProblem(
                    where,
                    f"this host has no CPU {format_cpuset(lacking)}: its CPUs are {have}",
                    f"pin within {have}",
                )
    mb = spec.tuning.memory_backing
    if facts.page_sizes is not None and mb is not None and mb.hugepages not in (None, "default"):
        size = parse_size(str(mb.hugepages))
        offered = sorted(s for s in facts.page_sizes if s > 4096)
        if size not in facts.page_sizes:
            yield FieldProblem(
                ("spec", "memoryBacking", "hugepages", "pageSize"),
                f"this host offers no {mb.hugepages} huge pages",
                "use " + (" or ".join(format_size(s) for s in offered) or "hugepages: true"),
            )
    yield from _free_huge_pages(m, spec, facts, ctx)


def _free_huge_pages(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """A VM to run on huge pages that it does not run on yet finds enough of them free
    (virNodeGetFreePages, all cells): else libvirt defines it, and the next start fails
    ("unable to map backing store for guest RAM: Cannot allocate memory"), which with
    updatePolicy: restart shuts a running VM down and leaves it down."""
    mb = spec.tuning.memory_backing
    if mb is None or mb.hugepages is None or spec.state != "running" or not facts.free_pages:
        return
    huge = sorted(size for size in facts.free_pages if size > 4096)
    size = huge[0] if mb.hugepages == "default" and huge else None
    if mb.hugepages != "default":
        size = parse_size(str(mb.hugepages))
    if size is None or size not in facts.free_pages:
        return  # an unknown size: the check above says so
    existing = ctx.observed.domains.get(m.name) if ctx is not None else None
    if existing is not None and existing.active and existing.live_root is not None:
        backing = read_tuning(existing.live_root).memory_backing
        if backing is not None and backing.hugepages is not None:
            return  # it runs on huge pages already: they are its own, not free
    free = facts.free_pages[size]
    needed = -(-spec.max_memory // size)  # QEMU maps maxMemory at start, in whole pages
    if free < needed:
        kib = size // 1024
        yield FieldProblem(
            ("spec", "memoryBacking", "hugepages"),
            f"{format_size(spec.max_memory)} of memory needs {needed} free {format_size(size)}"
            f" huge pages, and this host has {free} free: libvirt would define it and fail"
            " to start it",
            f"reserve at least {needed - free} more before the apply (sysctl"
            " vm.nr_hugepages=N for the default page size, or echo N >"
            f" /sys/kernel/mm/hugepages/hugepages-{kib}kB/nr_hugepages; kept across reboots"
            " in /etc/sysctl.d/), or remove memoryBacking.hugepages",
        )


def _missing_features(verdict: str, what: str = "required features:") -> list[str]:
    """The feature names in libvirt's "Host CPU does not provide required features: a, b"
    (``what``: "forbidden features:" reads "Host CPU provides forbidden features: a")."""
    _, found, names = verdict.partition(what)
    return [n.strip() for n in names.split(",") if n.strip()] if found else []


def check_host_devices(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, _ctx: Context
) -> Iterator[FieldProblem]:
    """Each host device of a VM to run exists on the host, as libvirt's node devices
    list it (formatdomain "Host device assignment", formatnode.html): a start with a
    missing one fails. A stopped VM is only defined, which libvirt allows."""
    if spec.state != "running" or facts.host_devices is None:
        return
    from reconciler.model import hostdev_key

    for i, dev in enumerate(spec.hostdevs or ()):
        key = hostdev_key(dev)
        if key not in facts.host_devices:
            kind, _, what = key.partition(" ")
            yield FieldProblem(
                ("spec", "hostdevs", i),
                f"this host has no {kind.upper()} device {what} (virsh nodedev-list "
                f"--cap {'pci' if kind == 'pci' else 'usb_device'})",
                "fix the address or ids, or set state: stopped to only define the VM",
            )


def check_kept_tuning(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """What the manifest asks against the tuning it leaves to the domain (``numa`` and
    ``iothreads`` not named: kept as the domain has them, none for a new VM), where
    libvirt would refuse it or quietly keep its own value:

    * a disk's ``iothread`` is one of the domain's I/O threads (``<iothreadids>``, else
      1 .. ``<iothreads>``; libvirt refuses the definition otherwise: "Disk iothread
      '1' not defined in iothreadid");
    * the memory is the sum of the domain's NUMA cells (libvirt makes the VM's memory
      that sum and drops the declared value, so the apply would never settle).
    (formatdomain "IOThreads Allocation", "CPU model and topology")"""
    existing = ctx.observed.domains.get(m.name) if ctx is not None else None
    wants_iothread = spec.tuning.iothreads is None and any(
        d.iothread is not None for d in spec.disks)
    # A definition is parsed only when one of the checks below can apply: a disk that
    # names an I/O thread the manifest leaves to the domain, or NUMA cells the manifest
    # leaves to it (the text says whether it has any). Reading definitions is most of
    # a plan's cost: a VM found in sync by its fingerprint is otherwise never parsed.
    wants_numa = (spec.tuning.numa is None and existing is not None
                  and "<numa" in existing.config_xml)  # fmt: skip
    if not (wants_iothread or wants_numa):
        return
    root = existing.config_root if existing is not None else None
    kept = read_tuning(root) if root is not None else None
    if spec.tuning.iothreads is None:
        ids: set[int] = set()
        if root is not None:
            ids = {int(t.get("id", "0")) for t in root.findall("iothreadids/iothread")
                   if str(t.get("id", "")).isdigit()}  # fmt: skip
            if not ids and kept is not None and kept.iothreads:
                ids = set(range(1, kept.iothreads + 1))
        for i, disk in enumerate(spec.disks):
            if disk.iothread is not None and disk.iothread not in ids:
                have = (f"the domain's are {format_cpuset(ids)}" if ids
                        else "the domain has none" if root is not None
                        else "a new VM has none")  # fmt: skip
                yield FieldProblem(
                    ("spec", "disks", i, "iothread"),
                    f"iothread {disk.iothread} is not one of the VM's I/O threads"
                    f" ({have}; iothreads is not in the manifest, so it is kept as it is)",
                    f"add iothreads: {max(disk.iothread, max(ids, default=0))} to the VM,"
                    " or remove the disk's iothread",
                )
    if spec.tuning.numa is None and kept is not None and kept.numa:
        total = sum(cell.memory for cell in kept.numa)
        if total != spec.max_memory:
            field = "maxMemory" if spec.max_memory != spec.memory else "memory"
            yield FieldProblem(
                ("spec", field),
                f"{field} is {format_size(spec.max_memory)}, but the domain's NUMA cells"
                f" (kept: numa is not in the manifest) hold {format_size(total)}, and"
                " libvirt makes the VM's memory the sum of its cells",
                f"write {field}: {format_size(total)}, or name numa with cells adding up"
                f" to {format_size(spec.max_memory)}",
            )


def check_nic_vlans(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """A VLAN tag on a NIC of a libvirt network is one the network can carry: libvirt
    accepts the definition but refuses to start the VM (and to hot-plug the NIC) on a
    network of plain Linux bridges ("vlan tag not supported for this connection type");
    only an openvswitch bridge (``<virtualport type='openvswitch'>``) or SR-IOV
    (forward mode hostdev or passthrough) carries one (formatdomain "Setting VLAN
    tag"). The network as libvirt has it decides, else its manifest. A VLAN the domain
    already has on that NIC is left alone (an adoption keeps it as it is)."""
    from reconciler.xml._fields import parse

    if not any(nic.vlan is not None and nic.network is not None for nic in spec.interfaces):
        return  # (and the definition is not parsed: see check_kept_tuning)
    existing = ctx.observed.domains.get(m.name) if ctx is not None else None
    had: set[str] = set()
    if existing is not None:
        for iface in existing.config_root.findall("devices/interface"):
            mac = iface.find("mac")
            if mac is not None and iface.find("vlan") is not None:
                had.add(str(mac.get("address", "")).lower())
    for i, nic in enumerate(spec.interfaces):
        if nic.vlan is None or nic.network is None or nic.mac.lower() in had:
            continue
        record = ctx.observed.networks.get(nic.network) if ctx is not None else None
        carries: bool | None = None
        if record is not None:
            try:
                root = parse(record.config_xml)
            except Exception:  # an unreadable definition: nothing to say about it
                continue
            forward = root.find("forward")
            mode = forward.get("mode") if forward is not None else None
            carries = (root.find(".//virtualport[@type='openvswitch']") is not None
                       or mode in ("hostdev", "passthrough"))  # fmt: skip
            what = f"network {nic.network} ({mode or 'isolated'}, no openvswitch)"
        else:
            declared = [d for d in (ctx.manifests if ctx is not None else ())
                        if d.name == nic.network and isinstance(d.spec, NetworkSpec)]  # fmt: skip
            if declared and isinstance(declared[0].spec, NetworkSpec):
                net_mode = declared[0].spec.mode
                carries = net_mode not in ("nat", "route", "isolated", "bridge")
                what = f"network {nic.network} (mode {net_mode})"
        if carries is False:
            yield FieldProblem(
                ("spec", "interfaces", i, "vlan"),
                f"{what} is made of Linux bridges, which carry no VLAN tag: libvirt would"
                " refuse to start the VM ('vlan tag not supported for this connection type')",
                "remove vlan, or use a network on an openvswitch bridge (or SR-IOV hostdev)",
            )


def serial_files(spec: VirtualMachineSpec) -> list[tuple[FieldPath, str]]:
    """(field path, path) of each host file the VM's serial port writes: its output
    (``serial.file``) and its log (``serial.log.file``); libvirt (virtlogd) truncates
    them when the VM starts unless the log says append."""
    found: list[tuple[FieldPath, str]] = []
    if spec.serial_file:
        found.append((("spec", "serial", "file"), spec.serial_file))
    log = spec.devices.serial_log
    if log is not None and not isinstance(log, str):
        found.append((("spec", "serial", "log", "file"), log.file))
    return found


def check_serial_files(
    m: Manifest, spec: VirtualMachineSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """A file the serial port writes is no disk: not a disk, CD-ROM, kernel or initrd of
    any VM (in the manifests or libvirt), not a volume (of a pool or a Volume
    manifest), and not a file whose header says it is a disk image. Starting the VM
    truncates it (measured: a log file naming another VM's qcow2 image left it 0
    bytes), and allowedDiskRoots holds the images too, so the roots alone cannot
    tell."""
    mine = serial_files(spec)
    if not mine:
        return

    def real(path: str) -> str:
        return os.path.realpath(path) if facts.local else os.path.normpath(path)

    disks: set[str] = set()
    for other in ctx.manifests if ctx is not None else ():
        if isinstance(other.spec, VirtualMachineSpec):
            disks.update(real(p) for where, p in host_files(other.spec)
                         if where[1] != "filesystems")  # fmt: skip
    if ctx is not None:
        for record in ctx.observed.domains.values():
            for xml in (record.config_xml, record.live_xml):
                if xml:
                    try:
                        disks.update(real(p) for p in _defined_files(xml))
                    except Exception:  # an unreadable definition: nothing to compare
                        continue
        disks.update(real(p) for p in ctx.volume_paths)
        disks.update(real(v.path) for v in ctx.observed.volumes.values()
                     if isinstance(v.path, str) and v.path)  # fmt: skip
    for where, path in mine:
        found = facts.paths.get(path)
        image = found.image_format if found is not None and found.exists else None
        if real(path) in disks or image not in (None, "raw"):
            what = f"a {image} disk image" if image not in (None, "raw") else "a disk or volume"
            yield FieldProblem(
                where,
                f"{path} is {what}: the serial port would write over it (libvirt"
                " truncates the file when the VM starts)",
                f"name a file of its own, e.g. /var/lib/libvirt/qemu/{m.name}-serial.log",
            )


VM_CHECKS: tuple[VmCheck, ...] = (
    check_kvm,
    check_machine,
    check_memory,
    check_files,
    check_disk_formats,
    check_bridges,
    check_direct_devices,
    check_graphics_port,
    check_cpu,
    check_host_devices,
    check_tuning,
    check_kept_tuning,
    check_nic_vlans,
    check_serial_files,
)


def check_subnet(
    m: Manifest, spec: NetworkSpec, facts: HostFacts, ctx: Context
) -> Iterator[FieldProblem]:
    """The network's IPv4 subnet overlaps no other libvirt network's (active or autostarted:
    those hold or will hold it) and no subnet on a host interface (a connected route)
    other than this network's own bridge. (The XML modules are imported here, not at the
    top: ``validate`` imports this module for ``path_problems`` and needs none of them.)"""
    if spec.ipv4 is None:
        return
    mine = ipaddress.IPv4Interface(f"{spec.ipv4.address}/{spec.ipv4.prefix}").network
    where: FieldPath = ("spec", "ipv4", "address")
    hint = "pick a free subnet"
    own_bridges = {spec.bridge} if spec.bridge else set()

    for name, record in sorted(ctx.observed.networks.items()):
        fields = _network_fields(record)
        if fields is None:
            continue  # another's network libvirt returns unreadable: nothing to compare
        if name == m.name:
            bridge = fields.get("bridge")
            if isinstance(bridge, str):
                own_bridges.add(bridge)
            continue
        other = _subnet(fields.get("ipv4.address"), fields.get("ipv4.prefix"))
        if other is None or not (record.active or record.autostart):
            continue
        if mine.overlaps(other):
            yield FieldProblem(where, f"{mine} overlaps {other} of libvirt network '{name}'", hint)
            return
    for a in facts.addresses or ():
        if a.interface in own_bridges:
            continue
        other = ipaddress.IPv4Interface(a.address).network
        if mine.overlaps(other):
            yield FieldProblem(
                where, f"{mine} overlaps {other} on host interface {a.interface}", hint
            )
            return


# --- helpers ---------------------------------------------------------------------------


def _network_fields(record: ObservedNetwork) -> Mapping[str, object] | None:
    """A network's declared fields as libvirt has them (running definition first), or
    None when libvirt returns a definition that is not well-formed XML (seen: a raw
    ``&`` in a ``<domain name=...>`` another tool set): preflight compares with other
    networks, and one unreadable network must not stop every plan."""
    from reconciler.xml import network as network_xml
    from reconciler.xml._fields import ParseError

    try:
        return network_xml.observe(record.live_xml or record.config_xml)
    except ParseError:
        return None


def _defined_files(config_xml: str) -> frozenset[str]:
    """The host files a domain definition opens (disk and CD-ROM sources, kernel,
    initrd), as written there."""
    from reconciler.xml._fields import parse

    root = parse(config_xml)
    named = [s.get("file") or s.get("dev") for s in root.findall("devices/disk/source")]
    named += [s.get("dir") for s in root.findall("devices/filesystem/source")]
    named += [root.findtext("os/kernel"), root.findtext("os/initrd")]
    return frozenset(str(n) for n in named if n)


def host_files(spec: VirtualMachineSpec) -> list[tuple[FieldPath, str]]:
    """(field path, path) of each file QEMU opens: disks (image files and block
    devices), CD-ROMs, kernel, initrd, and the folders shared with the guest."""
    found: list[tuple[FieldPath, str]] = [
        (("spec", "disks", i, "file"), d.file) for i, d in enumerate(spec.disks) if d.file
    ]
    found += [(("spec", "disks", i, "device"), d.device)
              for i, d in enumerate(spec.disks) if d.device]  # fmt: skip
    found += [(("spec", "filesystems", i, "source"), f.source)
              for i, f in enumerate(spec.filesystems or ())]  # fmt: skip
    found += [(("spec", "cdroms", i, "file"), c.file) for i, c in enumerate(spec.cdroms) if c.file]
    for key, value in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        if value:
            found.append((("spec", key), value))
    return found


def _about(size: int) -> str:
    """A size for a message: exact when it is round, else to a tenth ("4.5GiB")."""
    exact = format_size(size)
    if exact.endswith(("GiB", "TiB")) or size < 1024**3:
        return exact
    return f"{size / 1024**3:.1f}GiB"


def _written(m: Manifest, key: str) -> bool:
    spec = m.document.get("spec")
    return isinstance(spec, Mapping) and key in spec


def _searchable(d: DirFacts, user: QemuUser) -> bool:
    if d.uid == user.uid:
        return bool(d.mode & stat.S_IXUSR)
    if d.gid == user.gid or d.gid in user.groups:
        return bool(d.mode & stat.S_IXGRP)
    return bool(d.mode & stat.S_IXOTH)


def _listens_overlap(a: str, b: str) -> bool:
    """Two listen addresses contend for a port unless both are distinct specific ones."""
    wildcard = {"", "0.0.0.0", "::"}
    return a in wildcard or b in wildcard or a == b


def _subnet(address: object, prefix: object) -> ipaddress.IPv4Network | None:
    if not isinstance(address, str) or prefix is None:
        return None
    try:
        return ipaddress.IPv4Interface(f"{address}/{prefix}").network
    except ValueError:
        return None


_GRAPHICS = re.compile(r"<graphics\b([^>]*)>")
_ATTR = re.compile(r"""(\w+)=(?:'([^']*)'|"([^"]*)")""")


def display_ports(xml: str) -> list[tuple[int, str, bool]]:
    """(port, listen, fixed) of each VNC/SPICE display in a domain XML; a port not yet
    allocated (-1) is left out. A regular expression, not a parse: this runs over every
    domain of the host, and only the ``<graphics>`` start tags matter."""
    found = []
    for match in _GRAPHICS.finditer(xml):
        attrs = {k: v1 or v2 for k, v1, v2 in _ATTR.findall(match.group(1))}
        try:
            port = int(attrs.get("port", "-1"))
        except ValueError:
            continue
        if port > 0:
            found.append((port, attrs.get("listen", ""), attrs.get("autoport") != "yes"))
    return found


def _context(manifests: Sequence[Manifest], observed: Observed) -> Context:

    bridges = {
        m.spec.bridge
        for m in manifests
        if isinstance(m.spec, NetworkSpec) and m.spec.bridge and m.spec.mode != "bridge"
    }
    for record in observed.networks.values():
        bridge = (_network_fields(record) or {}).get("bridge")
        if isinstance(bridge, str):
            bridges.add(bridge)
    pool_paths = {m.name: m.spec.path for m in manifests
                  if isinstance(m.spec, StoragePoolSpec) and m.spec.path is not None}  # fmt: skip
    for name, pool in observed.pools.items():
        path = pool.path
        if isinstance(path, str):
            pool_paths.setdefault(name, path)
    volume_paths = {
        os.path.join(pool_paths[m.spec.pool], m.name)
        for m in manifests
        if isinstance(m.spec, VolumeSpec) and m.spec.pool in pool_paths
    }
    ports: dict[int, list[tuple[str, str, bool]]] = {}
    declared = {m.name for m in manifests if isinstance(m.spec, VirtualMachineSpec)}
    if any(isinstance(m.spec, VirtualMachineSpec) and m.spec.graphics is not None
           and m.spec.graphics.port is not None for m in manifests):  # fmt: skip
        for name, dom in observed.domains.items():
            if dom.active and dom.live_xml:
                for port, listen, _fixed in display_ports(dom.live_xml):
                    ports.setdefault(port, []).append((name, listen, True))
            elif name not in declared:  # a declared one's own manifest says its port
                for port, listen, fixed in display_ports(dom.config_xml):
                    if fixed:
                        ports.setdefault(port, []).append((name, listen, False))
    return Context(
        observed=observed,
        manifests=manifests,
        network_bridges=frozenset(bridges),
        volume_paths=frozenset(volume_paths),
        ports={p: tuple(holders) for p, holders in ports.items()},
    )


# --- allowed disk roots (validate, offline) -----------------------------------------------


def path_problems(manifests: Sequence[Manifest], policy: PathPolicy) -> list[Finding]:
    """Every host path a manifest names (hostpaths.host_paths: pool paths, volume
    sources, disk and CD-ROM files, kernel, initrd, serial log, password file) that
    fails ``policy``, the one check ``plan`` applies too (SPEC §5), placed at its field."""
    findings: list[Finding] = []
    for m in manifests:
        for host_path in host_paths(m):
            refusal = policy.refusal(host_path)
            if refusal is not None:
                setting = "allowedSecretRoots" if host_path.secret else "allowedDiskRoots"
                findings.append((m, FieldProblem(
                    host_path.where, refusal.removeprefix(host_path.field + " "),
                    f"move it under one of them, or add a root to {setting} in the "
                    "configuration",
                )))  # fmt: skip
    return findings
