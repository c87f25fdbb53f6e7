"""One default per field: the JSON Schemas (schemas/*.json), the model (model.py) and the
field declarations (xml/*.py ``Field.default``) say the same.

For every property of a manifest's ``spec`` that has a schema ``default`` (nested ones
too: a disk's bus, the display's listen address, the CPU topology's sockets), a
manifest that leaves it out and one that writes the schema's default build equal
specs. Where a field declaration carries a default for the same manifest path, it is
the schema's.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import SourcePosition
from reconciler.model import build_manifest
from reconciler.xml import domain as domain_xml
from reconciler.xml import volume as volume_xml

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

# The smallest spec of each kind that holds every object a default lives in (a disk,
# a NIC, a display, a CPU topology), so that each default can be left out and written.
BASES: dict[str, tuple[str, dict[str, Any]]] = {
    "virtualmachine.schema.json": ("VirtualMachine", {
        "memory": "64MiB", "vcpus": 1,
        "disks": [{"file": "/var/lib/libvirt/images/a.img"}],
        "cdroms": [{}],
        "interfaces": [{"network": "default"}],
        "graphics": {"type": "vnc"},
        "cpu": {"mode": "host-model", "topology": {"sockets": 1, "dies": 1, "cores": 1,
                                                   "threads": 1}},
    }),
    "volume.schema.json": ("Volume", {"pool": "images", "capacity": "1GiB"}),
    "network.schema.json": ("Network", {"mode": "isolated",
                                        "ipv4": {"address": "10.9.8.1", "prefix": 24}}),
    "storagepool.schema.json": ("StoragePool", {"path": "/var/lib/libvirt/images"}),
}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(schema, {**schema["$defs"][ref.removeprefix("#/$defs/")],
                                 **{k: v for k, v in node.items() if k != "$ref"}})
    return node


def _defaults(schema: dict[str, Any], node: dict[str, Any],
              path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    node = _resolve(schema, node)
    if "default" in node and path:
        yield path, node["default"]
    for name, child in (node.get("properties") or {}).items():
        yield from _defaults(schema, child, (*path, name))
    items = node.get("items")
    if isinstance(items, dict):
        yield from _defaults(schema, items, (*path, "0"))
    then = node.get("else", {}).get("then") if isinstance(node.get("else"), dict) else None
    if isinstance(then, dict):  # cpu: a name, or an object (if/then/else)
        yield from _defaults(schema, then, path)


def _cases() -> list[tuple[str, tuple[str, ...], Any]]:
    cases = []
    for file in BASES:
        schema = json.loads((SCHEMAS / file).read_text())
        for path, default in _defaults(schema, schema["properties"]["spec"], ()):
            cases.append((file, path, default))
    return cases


CASES = _cases()


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    """Set (value) or remove (value is _GONE) ``path``; False if a container is missing."""
    node: Any = spec
    for part in path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            return False
    if isinstance(node, dict):
        if value is _GONE:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        return True
    return False


_GONE = object()


def _build(kind: str, spec: dict[str, Any]) -> Any:
    document = {"apiVersion": "reconciler/v1", "kind": kind, "metadata": {"name": "d"},
                "spec": spec}
    return build_manifest(document, SourcePosition("d.yaml")).spec


def test_the_schemas_have_defaults_to_pin() -> None:
    by_file = {file for file, _, _ in CASES}
    assert by_file == set(BASES), "a schema's defaults are no longer found"
    assert len(CASES) >= 30


@pytest.mark.parametrize(("file", "path", "default"), CASES,
                         ids=[f"{f.split('.')[0]}:{'.'.join(p)}" for f, p, _ in CASES])
def test_leaving_a_field_out_is_writing_the_schema_default(
    file: str, path: tuple[str, ...], default: Any
) -> None:
    kind, base = BASES[file]
    if path[:3] == ("interfaces", "0", "direct"):  # a direct NIC's own defaults
        base = {**base, "interfaces": [{"direct": {"dev": "eth0"}}]}
    left_out, written = copy.deepcopy(base), copy.deepcopy(base)
    assert _set(left_out, path, _GONE), f"the base spec has no place for {path}"
    assert _set(written, path, default)
    assert _build(kind, left_out) == _build(kind, written), (
        f"{file} says {'.'.join(path)} defaults to {default!r}; the model does otherwise"
    )


# field declarations -> manifest paths in the schema ("0": an item of a list)
_DECLARED = [
    *[(("virtualmachine.schema.json", tuple(f.path.split("."))), f.default)
      for f in domain_xml.FIELDS if f.default is not None],
    *[(("virtualmachine.schema.json", ("disks", "0", f.path)), f.default)
      for f in domain_xml.DISKS.fields if f.default is not None],
    *[(("virtualmachine.schema.json", ("interfaces", "0", *f.path.split("."))), f.default)
      for f in domain_xml.INTERFACES.fields if f.default is not None],
    *[(("volume.schema.json", (f.path,)), f.default)
      for f in volume_xml.FIELDS if f.default is not None],
]


@pytest.mark.parametrize(("where", "declared"), _DECLARED,
                         ids=[".".join(w[1]) for w, _ in _DECLARED])
def test_field_declarations_default_as_the_schema_does(
    where: tuple[str, tuple[str, ...]], declared: object
) -> None:
    schema = {(f, p): d for f, p, d in CASES}
    assert where in schema, f"{'.'.join(where[1])} declares a default the schema has not"
    expected = schema[where]
    assert declared == (tuple(expected) if isinstance(expected, list) else expected)


def test_the_field_declarations_carry_defaults() -> None:
    assert len(_DECLARED) >= 10
