"""A VM's tuning: memory backing, CPU pinning, NUMA cells and I/O threads.

The typed values of the manifest fields ``memoryBacking``, ``cputune``, ``numa`` and
``iothreads`` of a VirtualMachine (libvirt's formatdomain "Memory Backing", "CPU
Tuning", "CPU model and topology" ``<numa>``, "IOThreads Allocation"), and the
loading and checking of them from a schema-valid spec (``from_manifest``).

Compatibility: each of the four is managed only when the manifest names it. A
manifest that leaves one out keeps whatever the domain has (``None`` in ``Tuning``);
naming it (even as ``null``, ``{}``, ``[]`` or ``0``) makes it exact.

A CPU set (``cpuset``, ``cpus``) is libvirt's syntax: numbers, ranges ``0-3`` and
exclusions ``^2``, comma-separated; it is kept canonical as libvirt writes it back
(``0,1`` reads back as ``0-1``: ``format_cpuset``).

Pure: no I/O, no libvirt. Problems are returned as (field path, message, hint);
model.py makes them ``FieldProblem``s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from reconciler.units import format_size, parse_size

Path: TypeAlias = tuple[str | int, ...]
Problem: TypeAlias = tuple[Path, str, str]
"""(field path, message, hint): one thing wrong in a manifest's tuning."""

CPUSET_MAX = 16383  # the highest CPU number libvirt takes (VIR_DOMAIN_CPUMASK_LEN 16384)
_CPUSET = re.compile(r"^\^?[0-9]+(-[0-9]+)?$")


def parse_cpuset(text: str) -> frozenset[int]:
    """The CPUs of a libvirt CPU set (``0-3,^2,5``: ranges, exclusions), as numbers.
    ValueError for a text that is not one, or that names no CPU."""
    cpus: set[int] = set()
    excluded: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not _CPUSET.match(part):
            raise ValueError(f"{text!r} is not a CPU set (e.g. 0-1 or 0,2-3,^2)")
        target = excluded if part.startswith("^") else cpus
        first, _, last = part.lstrip("^").partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"{text!r}: the range {part} runs backwards")
        if high > CPUSET_MAX:
            raise ValueError(f"{text!r}: CPU {high} is above {CPUSET_MAX}")
        target.update(range(low, high + 1))
    found = frozenset(cpus - excluded)
    if not found:
        raise ValueError(f"{text!r} names no CPU")
    return found


def format_cpuset(cpus: frozenset[int] | set[int]) -> str:
    """CPU numbers as libvirt writes a CPU set back: ascending ranges, ``0-1,3``."""
    out: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def canonical_cpuset(text: str) -> str:
    """``text`` as libvirt writes it back (``0,1`` -> ``0-1``). ValueError as
    ``parse_cpuset``."""
    return format_cpuset(parse_cpuset(text))


@dataclass(frozen=True, slots=True)
class MemoryBacking:
    """``<memoryBacking>`` (formatdomain "Memory Backing"). ``hugepages``: None for
    none, ``"default"`` for the host's default huge page size, else the page size as
    ``format_size`` writes it (``2MiB``). ``shared``: ``<access mode='shared'/>`` on a
    ``<source type='memfd'/>`` (what virtiofs needs); ``locked``: ``<locked/>``;
    ``nosharepages``: ``<nosharepages/>`` (no KSM merging)."""

    hugepages: str | None = None
    shared: bool = False
    locked: bool = False
    nosharepages: bool = False


@dataclass(frozen=True, slots=True)
class CpuTune:
    """``<cputune>``'s pinning (formatdomain "CPU Tuning"). ``vcpupin``: (vCPU, host CPU
    set) pairs, by vCPU, canonical sets; ``emulatorpin``: the host CPU set of the
    emulator threads, or None (not pinned); ``iothreadpin``: (I/O thread id, host CPU
    set) pairs, by id."""

    vcpupin: tuple[tuple[int, str], ...] = ()
    emulatorpin: str | None = None
    iothreadpin: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NumaCell:
    """One guest NUMA cell (``<cpu><numa><cell>``; formatdomain "CPU model and
    topology"): its ``id``, its vCPUs (a canonical CPU set), its memory in bytes, and
    ``mem_access`` (shared, private; None: libvirt's default)."""

    id: int
    cpus: str
    memory: int
    mem_access: str | None = None


@dataclass(frozen=True, slots=True)
class Tuning:
    """What a manifest says about a VM's tuning; None for what it does not name
    (kept as the domain has it). ``iothreads`` 0: none."""

    memory_backing: MemoryBacking | None = None
    cputune: CpuTune | None = None
    numa: tuple[NumaCell, ...] | None = None
    iothreads: int | None = None

    def pinned_cpus(self) -> tuple[tuple[Path, str, int | None, str], ...]:
        """Every pin, for preflight: (its field path, the projection field it is in
        (``cputune.vcpupin``...), its vCPU or I/O thread (None: the emulator's), its
        canonical CPU set)."""
        if self.cputune is None:
            return ()
        out: list[tuple[Path, str, int | None, str]] = [
            (("spec", "cputune", "vcpupin", i, "cpuset"), "cputune.vcpupin", vcpu, cpuset)
            for i, (vcpu, cpuset) in enumerate(self.cputune.vcpupin)
        ]
        if self.cputune.emulatorpin is not None:
            out.append((("spec", "cputune", "emulatorpin"), "cputune.emulatorpin", None,
                        self.cputune.emulatorpin))  # fmt: skip
        threads = enumerate(self.cputune.iothreadpin)
        out += [(("spec", "cputune", "iothreadpin", i, "cpuset"), "cputune.iothreadpin", thread,
                 cpuset) for i, (thread, cpuset) in threads]  # fmt: skip
        return tuple(out)


def page_size(value: object) -> str | None:
    """The manifest's ``memoryBacking.hugepages`` as ``MemoryBacking.hugepages`` holds
    it: None (false, null), ``"default"`` (true), or the page size as ``format_size``
    writes it. ValueError for a size that is not one."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, Mapping):
        size = value.get("pageSize")
        return "default" if size is None else format_size(parse_size(str(size)))
    raise ValueError(f"{value!r} is not a hugepages setting")


def from_manifest(
    raw: Mapping[str, Any], max_vcpus: int, max_memory: int
) -> tuple[Tuning, list[Problem]]:
    """The ``Tuning`` of a schema-valid VirtualMachine spec ``raw``, and what is wrong
    with it: a CPU set that is not one, a vCPU pinned that the VM does not have (its
    vCPUs are 0 .. ``max_vcpus`` - 1) or pinned twice, NUMA cells whose memory does
    not add up to ``max_memory`` (bytes) or whose vCPUs do not cover each vCPU
    exactly once, cell ids not 0 .. n-1."""
    problems: list[Problem] = []
    memory_backing = None
    if "memoryBacking" in raw:
        mb = raw["memoryBacking"] or {}
        try:
            huge = page_size(mb.get("hugepages"))
        except ValueError as exc:
            problems.append((("spec", "memoryBacking", "hugepages"), str(exc), ""))
            huge = None
        memory_backing = MemoryBacking(
            hugepages=huge,
            shared=bool(mb.get("shared", False)),
            locked=bool(mb.get("locked", False)),
            nosharepages=bool(mb.get("nosharepages", False)),
        )
    cputune = None
    if "cputune" in raw:
        threads = int(raw["iothreads"] or 0) if "iothreads" in raw else None
        cputune = _cputune(raw["cputune"] or {}, max_vcpus, threads, problems)
    numa = None
    if "numa" in raw:
        numa = _numa(raw["numa"] or (), max_vcpus, max_memory, problems)
    iothreads = None
    if "iothreads" in raw:
        iothreads = int(raw["iothreads"] or 0)
    return Tuning(memory_backing, cputune, numa, iothreads), problems


def _vcpus_text(max_vcpus: int) -> str:
    return "vCPU 0" if max_vcpus == 1 else f"vCPUs 0-{max_vcpus - 1}"


def _cputune(
    tune: Mapping[str, Any], max_vcpus: int, iothreads: int | None, problems: list[Problem]
) -> CpuTune:
    pins: dict[int, str] = {}
    for i, pin in enumerate(tune.get("vcpupin") or ()):
        where: Path = ("spec", "cputune", "vcpupin", i)
        vcpu = int(pin["vcpu"])
        if vcpu >= max_vcpus:
            problems.append(((*where, "vcpu"),
                             f"vCPU {vcpu} is pinned, but the VM has {_vcpus_text(max_vcpus)}"
                             f" (maxVcpus {max_vcpus})",
                             "pin only vCPUs below maxVcpus, or raise maxVcpus"))  # fmt: skip
            continue
        if vcpu in pins:
            problems.append(((*where, "vcpu"), f"vCPU {vcpu} is pinned twice",
                             "list each vCPU once"))  # fmt: skip
            continue
        try:
            pins[vcpu] = canonical_cpuset(str(pin["cpuset"]))
        except ValueError as exc:
            problems.append(((*where, "cpuset"), str(exc), "write host CPUs, e.g. 0-1"))
    emulatorpin = None
    if tune.get("emulatorpin") is not None:
        try:
            emulatorpin = canonical_cpuset(str(tune["emulatorpin"]))
        except ValueError as exc:
            problems.append((("spec", "cputune", "emulatorpin"), str(exc),
                             "write host CPUs, e.g. 0"))  # fmt: skip
    threads: dict[int, str] = {}
    for i, pin in enumerate(tune.get("iothreadpin") or ()):
        where = ("spec", "cputune", "iothreadpin", i)
        thread = int(pin["iothread"])
        if iothreads is not None and not 1 <= thread <= iothreads:
            have = "none" if not iothreads else f"1 to {iothreads}"
            problems.append(((*where, "iothread"),
                             f"I/O thread {thread} is pinned, but the VM's are {have}"
                             f" (iothreads: {iothreads})",
                             "pin only I/O threads the VM has, or raise iothreads"))  # fmt: skip
            continue
        if thread in threads:
            problems.append(((*where, "iothread"), f"I/O thread {thread} is pinned twice",
                             "list each I/O thread once"))  # fmt: skip
            continue
        try:
            threads[thread] = canonical_cpuset(str(pin["cpuset"]))
        except ValueError as exc:
            problems.append(((*where, "cpuset"), str(exc), "write host CPUs, e.g. 0-1"))
    return CpuTune(tuple(sorted(pins.items())), emulatorpin, tuple(sorted(threads.items())))


def _numa(
    cells_raw: Any, max_vcpus: int, max_memory: int, problems: list[Problem]
) -> tuple[NumaCell, ...]:
    cells: list[NumaCell] = []
    owner: dict[int, int] = {}  # vCPU -> the index of the cell that has it
    for i, c in enumerate(cells_raw):
        where: Path = ("spec", "numa", i)
        try:
            cpus = parse_cpuset(str(c["cpus"]))
        except ValueError as exc:
            problems.append(((*where, "cpus"), str(exc), "write vCPU numbers, e.g. 0-1"))
            continue
        outside = sorted(v for v in cpus if v >= max_vcpus)
        if outside:
            problems.append(((*where, "cpus"),
                             f"cell {c['id']} has vCPU {format_cpuset(set(outside))}, but the VM"
                             f" has {_vcpus_text(max_vcpus)} (maxVcpus {max_vcpus})",
                             "a cell's cpus are the guest's vCPUs, not host CPUs"))  # fmt: skip
        for v in sorted(cpus):
            if v in owner:
                problems.append(((*where, "cpus"),
                                 f"vCPU {v} is in cells {cells_raw[owner[v]]['id']} and {c['id']}",
                                 "put each vCPU in one cell"))  # fmt: skip
            owner.setdefault(v, i)
        cells.append(NumaCell(id=int(c["id"]), cpus=format_cpuset(cpus),
                              memory=parse_size(str(c["memory"])),
                              mem_access=c.get("memAccess")))  # fmt: skip
    if not cells:
        return ()
    ids = sorted(cell.id for cell in cells)
    if ids != list(range(len(cells))):
        problems.append((("spec", "numa"),
                         f"cell ids are {', '.join(map(str, ids))}; libvirt needs 0 to"
                         f" {len(cells) - 1}, each once",
                         "number the cells 0, 1, ..."))  # fmt: skip
    missing = sorted(set(range(max_vcpus)) - set(owner))
    if missing and len(cells) == len(list(cells_raw)):
        problems.append((("spec", "numa"),
                         f"vCPU {format_cpuset(set(missing))} in no cell: the cells must cover"
                         f" {_vcpus_text(max_vcpus)} (maxVcpus {max_vcpus})",
                         "add them to a cell's cpus"))  # fmt: skip
    total = sum(cell.memory for cell in cells)
    if total != max_memory:
        problems.append((("spec", "numa"),
                         f"the cells' memory adds up to {format_size(total)}, but maxMemory"
                         f" is {format_size(max_memory)} (libvirt makes the VM's memory the"
                         " sum of its cells)",
                         "make the cells' memory add up to maxMemory (memory when maxMemory"
                         " is not set)"))  # fmt: skip
    return tuple(sorted(cells, key=lambda cell: cell.id))


def describe_pins(pins: tuple[tuple[int, str], ...]) -> str:
    """Pins as the plan shows them: ``0:0-1 1:1`` (vCPU:host CPUs)."""
    return " ".join(f"{vcpu}:{cpuset}" for vcpu, cpuset in pins)


def describe_cells(cells: tuple[NumaCell, ...]) -> str:
    """Cells as the plan shows them: ``0:cpus=0,memory=512MiB,memAccess=shared; 1:...``."""
    parts = []
    for cell in cells:
        text = f"{cell.id}:cpus={cell.cpus},memory={format_size(cell.memory)}"
        if cell.mem_access is not None:
            text += f",memAccess={cell.mem_access}"
        parts.append(text)
    return "; ".join(parts)


def manifest(tuning: Tuning) -> dict[str, Any]:
    """The manifest fields of ``tuning`` (``memoryBacking``, ``cputune``, ``numa``,
    ``iothreads``), each only where it is named, as a manifest writes them (export)."""
    out: dict[str, Any] = {}
    mb = tuning.memory_backing
    if mb is not None:
        backing: dict[str, Any] = {}
        if mb.hugepages == "default":
            backing["hugepages"] = True
        elif mb.hugepages is not None:
            backing["hugepages"] = {"pageSize": mb.hugepages}
        for key, value in (("shared", mb.shared), ("locked", mb.locked),
                           ("nosharepages", mb.nosharepages)):  # fmt: skip
            if value:
                backing[key] = True
        out["memoryBacking"] = backing
    if tuning.cputune is not None:
        tune: dict[str, Any] = {}
        if tuning.cputune.vcpupin:
            tune["vcpupin"] = [{"vcpu": v, "cpuset": c} for v, c in tuning.cputune.vcpupin]
        if tuning.cputune.emulatorpin is not None:
            tune["emulatorpin"] = tuning.cputune.emulatorpin
        if tuning.cputune.iothreadpin:
            tune["iothreadpin"] = [{"iothread": t, "cpuset": c}
                                   for t, c in tuning.cputune.iothreadpin]  # fmt: skip
        out["cputune"] = tune
    if tuning.numa is not None:
        cells = []
        for cell in tuning.numa:
            item: dict[str, Any] = {"id": cell.id, "cpus": cell.cpus,
                                    "memory": format_size(cell.memory)}  # fmt: skip
            if cell.mem_access is not None:
                item["memAccess"] = cell.mem_access
            cells.append(item)
        out["numa"] = cells
    if tuning.iothreads is not None:
        out["iothreads"] = tuning.iothreads
    return out
