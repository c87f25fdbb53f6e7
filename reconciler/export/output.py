"""output"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from reconciler.export.notes import Exported, Kept
from reconciler.model import Kind


class _Flow(list[Any]):
    """A list written inline (``boot: [cdrom, disk]``)."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)  # lists indented under their key


_Dumper.add_representer(
    _Flow, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


class _Quoted(str):
    """A string written in quotes: MAC addresses, as the schema asks."""


_Dumper.add_representer(
    _Quoted, lambda d, data: d.represent_scalar("tag:yaml.org,2002:str", str(data), style="'")
)


_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def _flowed(value: Any) -> Any:
    if isinstance(value, str) and _MAC.match(value):
        return _Quoted(value)
    if isinstance(value, dict):
        return {k: _flowed(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return _Flow(value)
        return [_flowed(v) for v in value]
    return value


KEPT_HEADING = "kept as defined, not managed by this manifest"


NOTES_HEADING = "not in this manifest as libvirt has it: applying the manifest changes it"


# Devices listed as one line per tag, by kind and count: what tells them apart (index,
# chassis, port) is libvirt's bookkeeping, not something a user reads or chooses.
_GROUPED = {"controller": "controllers"}
_KIND = re.compile(r"^(\S+) (\S+)(?: \(([^)]*)\))?")


def _kind(label: str) -> str:
    """A grouped device's kind from its label: ``controller pci (pcie-root-port): ...``
    is ``pcie-root-port`` (a PCI controller is its model), ``controller usb
    (qemu-xhci)`` is ``usb qemu-xhci``, ``controller sata`` is ``sata``."""
    found = _KIND.match(label)
    if found is None:
        return label
    _, kind, model = found.groups()
    kind = kind.rstrip(":")
    if model and kind == "pci":
        return model
    return f"{kind} {model}" if model else kind


def kept_lines(kept: Iterable[Kept]) -> list[str]:
    """Labels of ``kept``, each once, in order, a repeated one with its count
    (``channel (org.qemu.guest_agent.0) (x2)``); the devices of a ``_GROUPED`` tag
    as one line where the first stood, each kind with its count, most first
    (``controllers: 14 pcie-root-port, usb qemu-xhci, sata``)."""
    counts: dict[str, int] = {}
    groups: dict[str, dict[str, int]] = {}
    for item in kept:
        tag = item.path.removeprefix("devices/").split("[", 1)[0]
        heading = _GROUPED.get(tag) if item.path.startswith("devices/") else None
        if heading is None:
            counts[item.label] = counts.get(item.label, 0) + 1
            continue
        if heading not in groups:
            groups[heading] = {}
            counts[heading] = 0  # its place in the order
        kind = _kind(item.label)
        groups[heading][kind] = groups[heading].get(kind, 0) + 1
    lines = []
    for label, n in counts.items():
        if label in groups:
            kinds = sorted(groups[label].items(), key=lambda kv: -kv[1])  # stable: in order
            lines.append(f"{label}: " + ", ".join(k if c == 1 else f"{c} {k}" for k, c in kinds))
        else:
            lines.append(label if n == 1 else f"{label} (x{n})")
    return lines


def _one_line(text: str) -> str:
    """``text`` fit for one comment line: a line break in it would end the comment."""
    return " ".join(text.split())


def to_yaml(item: Exported, source: str) -> str:
    """One manifest document as YAML text, headed by comments: what the object has that
    the manifest does not manage and applying it keeps, then the notes (what applying
    it would change)."""
    assert item.document is not None
    lines = [f"# Exported by 'reconciler export' from {source}: {item.key}"]
    if item.kept:
        lines.append(f"# {KEPT_HEADING[0].upper()}{KEPT_HEADING[1:]} (applying it "
                     "leaves them as they are; a VM created from it would lack them):")  # fmt: skip
        lines += [f"#   {_one_line(line)}" for line in kept_lines(item.kept)]
    if item.notes:
        lines.append(f"# {NOTES_HEADING[0].upper()}{NOTES_HEADING[1:]} (check each before "
                     "applying):")  # fmt: skip
        lines += [f"#   {_one_line(str(note))}" for note in item.notes]
    body = yaml.dump(_flowed(item.document), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)  # fmt: skip
    return "\n".join(lines) + "\n" + body


_DIRS = {Kind.STORAGE_POOL: "pools", Kind.VOLUME: "volumes", Kind.NETWORK: "networks",
         Kind.VIRTUAL_MACHINE: "vms"}  # fmt: skip


def file_name(item: Exported) -> str:
    """Where an object's manifest goes in the output directory (``vms/web-1.yaml``)."""
    return f"{_DIRS[item.kind]}/{item.name}.yaml"


def to_json(item: Exported, file: str | None = None) -> dict[str, Any]:
    """One object as ``reconciler -o json export`` prints it (docs/adoption.md): its
    document (null: not exported), ``kept`` (what applying keeps as defined, with where
    it is in libvirt's XML) and ``notes`` (what applying would change, or why it could
    not be exported). ``file``: where the manifest was written, if it was."""
    return {
        "kind": item.kind.value,
        "name": item.name,
        "pool": item.pool,
        "exported": item.document is not None,
        "file": file,
        "document": item.document,
        "kept": [{"path": k.path, "what": k.label} for k in item.kept],
        "notes": [{"field": n.field, "message": n.message} for n in item.notes],
    }
