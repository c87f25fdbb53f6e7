"""notes"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.diff import device_of, diff
from reconciler.errors import SourcePosition
from reconciler.model import API_VERSION, Kind, Manifest, SpecError, build_manifest
from reconciler.report import show_value
from reconciler.schema import validate_document
from reconciler.snapshot import Observed, VolumeRecord
from reconciler.xml._fields import Projection

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


_IPV4 = re.compile(r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Note:
    """Something libvirt has that the exported manifest does not say."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class Kept:
    """Something the definition has that the manifest does not manage: applying the
    manifest to this object keeps it as defined (a redefine patches the current
    definition); a VM created from the manifest elsewhere would not have it.

    ``path``: where it is in libvirt's XML (``devices/channel[org.qemu.guest_agent.0]``,
    ``clock``); ``label``: what it is, as a user reads it
    (``channel (org.qemu.guest_agent.0)``, ``clock: timer rtc, timer pit``)."""

    path: str
    label: str

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True)
class Exported:
    """One object's manifest document (None: it cannot be exported), its notes (what
    applying the manifest would change, or why it cannot be exported) and what the
    object has that the manifest does not manage and a redefine keeps (``kept``)."""

    kind: Kind
    name: str
    document: dict[str, Any] | None
    notes: tuple[Note, ...] = ()
    pool: str | None = None  # volumes: their pool
    kept: tuple[Kept, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind.value}/{self.name}"


class _Notes:
    """Notes of one object, one per field; a device noted as a whole covers its fields."""

    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}
        self._silent: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if not self.covers(path):
            self._notes[path] = Note(path, message)

    def silence(self, path: str) -> None:
        """No note for ``path`` (a device: nor its fields): the device is not managed
        by the manifest, and listed as kept instead."""
        self._silent.add(path)

    def silenced(self, path: str) -> bool:
        return path in self._silent

    def covers(self, path: str) -> bool:
        if path in self._notes or path in self._silent:
            return True
        dev = device_of(path)
        return dev is not None and (f"{dev[0]}[{dev[1]}]" in self._notes
                                    or f"{dev[0]}[{dev[1]}]" in self._silent)  # fmt: skip

    def __iter__(self) -> Iterator[Note]:
        return iter(self._notes.values())

    def all(self) -> tuple[Note, ...]:
        return tuple(self._notes.values())


def document(kind: Kind, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind.value, "metadata": {"name": name},
            "spec": dict(spec)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Context:
    """What projecting a VM or volume needs: where volumes are and their formats, as the
    planner's context computes them (live volumes, then the exported Volume manifests)."""

    observed: Observed
    volume_pools: Mapping[str, str] = field(default_factory=dict)
    volume_formats: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, observed: Observed, volumes: Iterable[Exported] = ()) -> Context:
        pools: dict[str, str] = {}
        formats: dict[str, str] = {}
        for (pool, name), record in observed.volumes.items():
            pools.setdefault(name, pool)
            fmt = record.format
            if fmt is not None:
                formats.setdefault(name, fmt)
        for v in volumes:
            if v.document is not None:
                pools[v.name] = v.document["spec"]["pool"]
                formats[v.name] = v.document["spec"].get("format", "qcow2")
        return cls(observed, pools, formats)

    def volume_by_path(self, path: str) -> VolumeRecord | None:
        for record in self.observed.volumes.values():
            if record.path == path:
                return record
        return None


def _build(kind: Kind, doc: dict[str, Any], notes: _Notes) -> Manifest | None:
    """The document as ``validate`` loads it, or None (with a note) if it would not load."""
    problems = validate_document(kind, doc)
    if problems:
        for p in problems:
            notes.add(".".join(str(part) for part in p.path) or "spec", p.message)
        return None
    try:
        return build_manifest(doc, SourcePosition("<export>"))
    except SpecError as exc:
        for fp in exc.problems:
            notes.add(".".join(str(part) for part in fp.path) or "spec", fp.message)
        return None


def _compare(desired: Projection, actual: Projection, notes: _Notes) -> None:
    """Every field a plan would show besides the adoption becomes a note."""
    for change in diff(desired, actual):
        notes.add(
            change.path,
            f"libvirt has {show_value(change.path, change.old)}, "
            f"the manifest gives {show_value(change.path, change.new)}",
        )


def _unexportable(kind: Kind, name: str, notes: _Notes, pool: str | None = None) -> Exported:
    return Exported(kind, name, None, notes.all(), pool)


def _check_name(kind: Kind, name: str, notes: _Notes) -> bool:
    if _NAME.match(name):
        return True
    notes.add("metadata.name", f"{name!r} is not a name a manifest can hold "
              "(1-64 characters [A-Za-z0-9_.-], starting with a letter or digit)")  # fmt: skip
    return False


def _entries(projection: Projection, section: str) -> list[str]:
    """Identities of a section's devices, in the order libvirt lists them."""
    keys: list[str] = []
    for path, value in projection.items():
        dev = device_of(path)
        if dev is not None and dev[0] == section and value is not None and dev[1] not in keys:
            keys.append(dev[1])
    return keys


def _tuple(value: object) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else ()
