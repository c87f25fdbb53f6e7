"""A domain's tuning in libvirt XML: memory backing, pinning, NUMA cells, I/O threads.

One ``Field`` per manifest field (``FIELDS``), so that render, patch, project and
observe come from one declaration, as in domain.py:

* ``memoryBacking.hugepages`` / ``.shared`` / ``.locked`` / ``.nosharepages``:
  ``<memoryBacking>`` (formatdomain "Memory Backing"); shared memory is
  ``<source type='memfd'/><access mode='shared'/>``, what virtiofs needs;
* ``cputune.vcpupin`` / ``cputune.emulatorpin``: ``<cputune>``'s ``<vcpupin>`` and
  ``<emulatorpin>`` (formatdomain "CPU Tuning"), the only LIVE ones: set on a
  running domain with virDomainPinVcpuFlags / virDomainPinEmulator;
* ``numa``: ``<cpu><numa><cell>`` (formatdomain "CPU model and topology");
* ``iothreads``: ``<iothreads>`` (formatdomain "IOThreads Allocation").

A manifest that does not name a section keeps what the domain has: ``kept_paths``
gives the projection keys the planner must not compare, ``patch`` leaves them alone,
and ``render`` writes nothing for them. Elements of ``<cputune>`` and
``<memoryBacking>`` that are not declared here (shares, quotas, iothreadpin...) are
kept by a redefine.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import VirtualMachineSpec
from reconciler.tuning import (
    CpuTune,
    MemoryBacking,
    NumaCell,
    Tuning,
    canonical_cpuset,
    describe_cells,
    describe_pins,
    format_cpuset,
    parse_cpuset,
)
from reconciler.units import format_size, parse_size
from reconciler.xml._fields import (
    INT,
    Attr,
    ChangeClass,
    Codec,
    Element,
    Field,
    Flag,
    Projection,
    Text,
    ensure,
    observe_fields,
    parse,
    patch_fields,
    project_fields,
    remove,
    render_fields,
    reorder,
    xml_text,
)

__all__ = [
    "FIELDS",
    "FIELDS_BY_PATH",
    "arrange",
    "hold",
    "host_cpus_from_capabilities",
    "kept_paths",
    "observe",
    "patch",
    "pins",
    "project",
    "read",
    "render",
    "without_full_pins",
]

_KIB_FACTOR = {"b": 1, "bytes": 1, "kib": 1024, "k": 1024, "mib": 1024**2, "m": 1024**2,
               "gib": 1024**3, "g": 1024**3, "tib": 1024**4, "t": 1024**4}  # fmt: skip


def _bytes(value: str, unit: str | None) -> int:
    """A libvirt size with its unit (KiB when none: formatdomain "Memory Allocation")."""
    return int(value.strip()) * _KIB_FACTOR.get((unit or "KiB").lower(), 1024)


CPUSET = Codec(dump=str, load=canonical_cpuset)
"""A host or guest CPU set, canonical as libvirt writes it back (``0,1`` -> ``0-1``)."""


# --- custom places ------------------------------------------------------------


def _memfd(root: Element) -> None:
    """Give ``<memoryBacking>`` a ``<source type='memfd'/>`` unless it names a source."""
    backing = ensure(root, "memoryBacking")
    if backing.find("source") is None:
        ET.SubElement(backing, "source", {"type": "memfd"})


def _drop_memfd(root: Element, unless: str) -> None:
    """Remove the ``<source type='memfd'/>`` a write added, unless ``unless`` (the other
    field that wants it) is still there."""
    if root.find(unless) is None:
        for element in root.findall("memoryBacking/source[@type='memfd']"):
            remove(element)


@dataclass(frozen=True, slots=True)
class _Hugepages:
    """``<memoryBacking><hugepages>``: ``default`` (no ``<page>``: the host's default
    size) or one page size (``<page size unit>``), as ``format_size`` writes it.
    Written on a ``<source type='memfd'/>`` (QEMU's memfd with hugetlb): huge pages
    without a hugetlbfs mount that libvirtd must have found when it started."""

    def write(self, root: Element, value: Any) -> None:
        _memfd(root)
        huge = ensure(root, "memoryBacking/hugepages")
        if value != "default":
            kib = parse_size(str(value)) // 1024
            ET.SubElement(huge, "page", {"size": str(kib), "unit": "KiB"})

    def clear(self, root: Element) -> None:
        for element in root.findall("memoryBacking/hugepages"):
            remove(element)
        _drop_memfd(root, "memoryBacking/access[@mode='shared']")

    def read(self, root: Element) -> object:
        huge = root.find("memoryBacking/hugepages")
        if huge is None:
            return None
        page = huge.find("page")
        if page is None or page.get("size") is None:
            return "default"
        return format_size(_bytes(str(page.get("size")), page.get("unit")))

    def canon(self, value: Any) -> object:
        return value if value == "default" else format_size(parse_size(str(value)))


@dataclass(frozen=True, slots=True)
class _Shared:
    """``memoryBacking.shared``: ``<access mode='shared'/>``, written with a
    ``<source type='memfd'/>`` (anonymous memory a vhost-user process such as
    virtiofsd can map; formatdomain "Memory Backing"). Reads true on any source
    whose access is shared (a hugetlbfs or file source made by hand)."""

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        _memfd(root)
        ensure(root, "memoryBacking/access").set("mode", "shared")

    def clear(self, root: Element) -> None:
        for element in root.findall("memoryBacking/access"):
            remove(element)
        _drop_memfd(root, "memoryBacking/hugepages")

    def read(self, root: Element) -> object:
        return root.find("memoryBacking/access[@mode='shared']") is not None

    def canon(self, value: Any) -> object:
        return bool(value)


@dataclass(frozen=True, slots=True)
class _Pins:
    """``cputune.vcpupin`` / ``cputune.iothreadpin``: every ``<TAG KEY cpuset>`` of
    ``<cputune>`` (``<vcpupin vcpu>``, ``<iothreadpin iothread>``), as (number,
    canonical CPU set) pairs by number; ``()`` for none."""

    tag: str
    key: str

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        tune = ensure(root, "cputune")
        for vcpu, cpuset in value:
            ET.SubElement(tune, self.tag, {self.key: str(int(vcpu)),
                                           "cpuset": xml_text(str(cpuset), "cpuset")})  # fmt: skip

    def clear(self, root: Element) -> None:
        for element in root.findall(f"cputune/{self.tag}"):
            remove(element)

    def read(self, root: Element) -> object:
        pins = []
        for element in root.findall(f"cputune/{self.tag}"):
            vcpu, cpuset = element.get(self.key), element.get("cpuset")
            if vcpu is None or cpuset is None:
                continue
            try:
                pins.append((int(vcpu), canonical_cpuset(cpuset)))
            except ValueError:
                pins.append((int(vcpu), cpuset))
        return tuple(sorted(pins))

    def canon(self, value: Any) -> object:
        return tuple(sorted((int(v), canonical_cpuset(str(c))) for v, c in value or ()))


@dataclass(frozen=True, slots=True)
class _Cells:
    """``numa``: the ``<cell>``s of ``<cpu><numa>``, by id, as ``NumaCell``s (memory in
    bytes, written in KiB as libvirt writes it back)."""

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        cpu = ensure(root, "cpu")
        numa = ET.SubElement(cpu, "numa")
        for cell in value:
            attrs = {"id": str(cell.id), "cpus": xml_text(cell.cpus, "cpus"),
                     "memory": str(cell.memory // 1024), "unit": "KiB"}  # fmt: skip
            if cell.mem_access is not None:
                attrs["memAccess"] = xml_text(cell.mem_access, "memAccess")
            ET.SubElement(numa, "cell", attrs)

    def clear(self, root: Element) -> None:
        for element in root.findall("cpu/numa"):
            remove(element)
        cpu = root.find("cpu")
        if cpu is not None and len(cpu) == 0 and not cpu.attrib:
            remove(cpu)

    def read(self, root: Element) -> object:
        cells = []
        for element in root.findall("cpu/numa/cell"):
            cpus, memory = element.get("cpus"), element.get("memory")
            if element.get("id") is None or memory is None:
                continue
            try:
                canon = "" if cpus is None else format_cpuset(parse_cpuset(cpus))
            except ValueError:
                canon = str(cpus)
            cells.append(NumaCell(int(str(element.get("id"))), canon,
                                  _bytes(memory, element.get("unit")),
                                  element.get("memAccess")))  # fmt: skip
        return tuple(sorted(cells, key=lambda cell: cell.id))

    def canon(self, value: Any) -> object:
        return tuple(value or ())


# --- the declarations -----------------------------------------------------------


# A section a manifest does not name reads as none here (what render gives a new VM);
# render and patch never write it (``_managed``), and the planner does not compare it
_NO_BACKING = MemoryBacking()
_NO_TUNE = CpuTune()


def _backing(attr: str) -> Callable[[VirtualMachineSpec], object]:
    def get(spec: VirtualMachineSpec) -> object:
        return getattr(spec.tuning.memory_backing or _NO_BACKING, attr)

    return get


def _tune(spec: VirtualMachineSpec) -> CpuTune:
    return spec.tuning.cputune or _NO_TUNE


def _none_if_empty(show: Callable[[Any], str]) -> Callable[[object], object]:
    def shown(value: object) -> object:
        return show(value) if value else None

    return shown


FIELDS: tuple[Field[VirtualMachineSpec], ...] = (
    Field("memoryBacking.hugepages", _backing("hugepages"), _Hugepages()),
    Field("memoryBacking.shared", _backing("shared"), _Shared(), default=False),
    Field("memoryBacking.locked", _backing("locked"), Flag("memoryBacking/locked"),
          default=False),
    Field("memoryBacking.nosharepages", _backing("nosharepages"),
          Flag("memoryBacking/nosharepages"), default=False),
    # pinning is done to the running domain too (virDomainPinVcpuFlags, PinEmulator)
    Field("cputune.vcpupin", lambda s: _tune(s).vcpupin,
          _Pins("vcpupin", "vcpu"), show=_none_if_empty(describe_pins), change=ChangeClass.LIVE),
    Field("cputune.emulatorpin", lambda s: _tune(s).emulatorpin,
          Attr("cputune/emulatorpin", "cpuset", CPUSET), change=ChangeClass.LIVE),
    # (virDomainPinIOThread)
    Field("cputune.iothreadpin", lambda s: _tune(s).iothreadpin,
          _Pins("iothreadpin", "iothread"), show=_none_if_empty(describe_pins),
          change=ChangeClass.LIVE),
    Field("numa", lambda s: s.tuning.numa or (), _Cells(), show=_none_if_empty(describe_cells)),
    Field("iothreads", lambda s: s.tuning.iothreads or None, Text("iothreads", INT)),
)  # fmt: skip

FIELDS_BY_PATH: Mapping[str, Field[VirtualMachineSpec]] = {f.path: f for f in FIELDS}

_SECTIONS: Mapping[str, Callable[[VirtualMachineSpec], object]] = {
    "memoryBacking.": lambda s: s.tuning.memory_backing,
    "cputune.": lambda s: s.tuning.cputune,
    "numa": lambda s: s.tuning.numa,
    "iothreads": lambda s: s.tuning.iothreads,
}


def kept_paths(spec: VirtualMachineSpec) -> frozenset[str]:
    """The projection keys of the sections ``spec`` does not name: kept as the domain
    has them, never compared (a manifest written before these fields plans as before)."""
    return _kept(tuple(prefix for prefix, get in _SECTIONS.items() if get(spec) is None))


@functools.cache
def _kept(unnamed: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f.path for f in FIELDS if any(f.path.startswith(p) for p in unnamed))


def _managed(spec: VirtualMachineSpec) -> tuple[Field[VirtualMachineSpec], ...]:
    return _named(kept_paths(spec))


@functools.cache
def _named(kept: frozenset[str]) -> tuple[Field[VirtualMachineSpec], ...]:
    return tuple(f for f in FIELDS if f.path not in kept)


# libvirt's order of the top-level elements these live among (formatdomain; libvirt
# writes them so, and a golden file reads like `virsh dumpxml`)
_AFTER = {"memoryBacking": ("currentMemory", "memory", "memtune", "blkiotune"),
          "iothreads": ("vcpu",),
          "cputune": ("iothreadids", "iothreads", "vcpus", "vcpu")}  # fmt: skip


def arrange(root: Element) -> None:
    """Move ``<memoryBacking>``, ``<iothreads>`` and ``<cputune>`` (appended by a write)
    to where libvirt writes them, after the elements they follow."""
    for tag, after in _AFTER.items():
        element = root.find(tag)
        if element is None:
            continue
        for name in after:
            anchor = root.find(name)
            if anchor is not None:
                anchor.addnext(element)
                break


_ORDER = {
    "memoryBacking": ("hugepages", "nosharepages", "locked", "source", "access", "allocation",
                      "discard"),
    "cputune": ("shares", "global_period", "global_quota", "period", "quota",
                "emulator_period", "emulator_quota", "iothread_period", "iothread_quota",
                "vcpupin", "emulatorpin", "iothreadpin"),
}  # fmt: skip


def _tidy(root: Element) -> None:
    """Drop a ``<memoryBacking>`` or ``<cputune>`` left empty by a clear; sort the
    children of one that stays as libvirt writes them."""
    for tag, order in _ORDER.items():
        element = root.find(tag)
        if element is not None and len(element) == 0 and not element.attrib:
            remove(element)
        elif element is not None:
            reorder(element, order)


def render(root: Element, spec: VirtualMachineSpec) -> None:
    """Write the tuning ``spec`` names into a new domain's ``root``."""
    render_fields(root, _managed(spec), spec)
    _tidy(root)


def hold(root: Element) -> Element | None:
    """A copy of ``root``'s ``<cpu><numa>``, taken before domain.py's fields are patched
    (a changed ``cpu`` rewrites the whole ``<cpu>``), for ``patch`` to keep."""
    numa = root.find("cpu/numa")
    return None if numa is None else ET.fromstring(ET.tostring(numa, with_tail=False))


def patch(root: Element, spec: VirtualMachineSpec, numa: Element | None = None) -> list[str]:
    """Set in ``root`` (an existing definition) the named tuning fields that differ;
    what the manifest does not name stays, and so does ``numa`` (``hold``'s copy) when
    the manifest does not name ``numa`` and ``root`` lost it. Returns the paths changed."""
    if numa is not None and spec.tuning.numa is None and root.find("cpu/numa") is None:
        ensure(root, "cpu").append(numa)
    changed = patch_fields(root, _managed(spec), spec)
    _tidy(root)
    if changed:
        arrange(root)
    return changed


def project(spec: VirtualMachineSpec) -> Projection:
    """The desired tuning fields, keyed as ``observe`` keys them. A section the manifest
    does not name projects as none (what ``render`` gives a new domain: nothing); the
    planner does not compare it with an existing domain (``kept_paths``)."""
    return project_fields(FIELDS, spec)


def observe(root: Element) -> Projection:
    """The tuning fields of a domain's XML (inactive or live)."""
    if all(root.find(tag) is None for tag in _TOP) and root.find("cpu/numa") is None:
        return dict(_UNTUNED)  # most domains: four lookups, not one per field
    return observe_fields(root, FIELDS)


_TOP = ("memoryBacking", "cputune", "iothreads")
_UNTUNED = observe_fields(ET.Element("domain"), FIELDS)


def without_full_pins(
    projection: Mapping[str, object], host_cpus: frozenset[int] | None
) -> Mapping[str, object]:
    """``projection`` with each pin to every host CPU taken as no pin: libvirt keeps a
    ``<vcpupin>`` or ``<emulatorpin>`` of all host CPUs in a running domain after a
    pin is undone live (virDomainPinVcpuFlags cannot remove one), and such a pin means
    no pin. ``host_cpus`` None (not known): unchanged. ``projection`` itself when no pin
    is one to every host CPU (the common case: nothing copied)."""
    if not host_cpus or all(projection.get(p) is None for p in _PIN_PATHS):
        return projection
    everything = format_cpuset(host_cpus)
    out = dict(projection)
    if out.get("cputune.emulatorpin") == everything:
        out["cputune.emulatorpin"] = None
    for path in ("cputune.vcpupin", "cputune.iothreadpin"):
        shown = out.get(path)
        if isinstance(shown, str):
            kept = tuple((v, c) for v, c in pins(shown).items() if c != everything)
            out[path] = describe_pins(kept) or None
    return out


_PIN_PATHS = ("cputune.vcpupin", "cputune.emulatorpin", "cputune.iothreadpin")


def pins(shown: object) -> dict[int, str]:
    """The pins of a ``cputune.vcpupin`` or ``cputune.iothreadpin`` projection value
    (``0:0-1 1:1``), by vCPU or I/O thread."""
    if not isinstance(shown, str):
        return {}
    return {int(v): c for v, _, c in (p.partition(":") for p in shown.split())}



def host_cpus_from_capabilities(caps_xml: str) -> frozenset[int] | None:
    """The host's CPU numbers in capabilities XML (``<host><topology><cells><cell><cpus>
    <cpu id>``; formatcaps "Host capabilities"); None when it lists none."""
    root = parse(caps_xml)
    cpus = root.findall("host/topology/cells/cell/cpus/cpu")
    found = frozenset(int(str(cpu.get("id"))) for cpu in cpus if cpu.get("id"))
    return found or None


def read(root: Element) -> Tuning:
    """The tuning of a domain's XML as a ``Tuning``, each section named only where the
    domain has something in it (what export writes)."""
    p = observe_fields(root, FIELDS)
    huge = _Hugepages().read(root)
    backing = MemoryBacking(
        hugepages=None if huge is None else str(huge),
        shared=bool(p["memoryBacking.shared"]), locked=bool(p["memoryBacking.locked"]),
        nosharepages=bool(p["memoryBacking.nosharepages"]),
    )  # fmt: skip
    pins = _Pins("vcpupin", "vcpu").read(root)
    threads = _Pins("iothreadpin", "iothread").read(root)
    assert isinstance(pins, tuple) and isinstance(threads, tuple)
    emulator = p["cputune.emulatorpin"]
    tune = CpuTune(pins, None if emulator is None else str(emulator), threads)
    cells = _Cells().read(root)
    assert isinstance(cells, tuple)
    count = p["iothreads"]
    return Tuning(
        memory_backing=None if backing == MemoryBacking() else backing,
        cputune=None if tune == CpuTune() else tune,
        numa=cells or None,
        iothreads=count if isinstance(count, int) and count > 0 else None,
    )
