"""The schema files themselves: valid draft 2020-12, documented, usable by editors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from reconciler.schema import schema_dir

SCHEMAS = sorted(schema_dir().glob("*.schema.json"))
REPO = Path(__file__).resolve().parents[2]


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_is_valid_draft_2020_12(path: Path) -> None:
    schema = _load(path)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def _undocumented(node: Any, root: dict[str, Any], common: dict[str, Any], where: str) -> list[str]:
    """Properties that have no description, directly or through the definition they $ref."""
    found: list[str] = []
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            target = sub
            ref = sub.get("$ref", "")
            if ref.startswith("common.schema.json#/$defs/"):
                target = common["$defs"][ref.rsplit("/", 1)[-1]]
            elif ref.startswith("#/$defs/"):
                target = root["$defs"][ref.rsplit("/", 1)[-1]]
            if "description" not in sub and "description" not in target:
                found.append(f"{where}.{name}")
        for key, sub in node.items():
            found += _undocumented(sub, root, common, f"{where}/{key}")
    elif isinstance(node, list):
        for sub in node:
            found += _undocumented(sub, root, common, where)
    return found


@pytest.mark.parametrize(
    "path", [p for p in SCHEMAS if p.name != "manifest.schema.json"], ids=lambda p: p.name
)
def test_every_field_is_described(path: Path) -> None:
    schema = _load(path)
    common = _load(schema_dir() / "common.schema.json")
    assert _undocumented(schema, schema, common, "") == []


def test_editor_entry_schema_checks_examples() -> None:
    """What an editor does with `$schema=.../manifest.schema.json`: plain jsonschema, no reconciler."""
    resources = [(p.name, Resource.from_contents(_load(p), DRAFT202012)) for p in SCHEMAS]
    registry: Registry[Any] = Registry().with_resources(resources)
    validator = jsonschema.Draft202012Validator(
        registry.contents("manifest.schema.json"), registry=registry
    )
    documents = [
        doc
        for path in sorted((REPO / "manifests" / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    assert len(documents) == 7
    for doc in documents:
        assert list(validator.iter_errors(doc)) == []
    bad = dict(documents[-1], spec={**documents[-1]["spec"], "memory": "1 GB"})
    assert list(validator.iter_errors(bad))
