"""The JSON Schemas of the manifest kinds, and their errors as one-line messages.

The schemas are files (``schemas/*.json`` in the repository, shipped inside the
package as ``reconciler/_schemas``) so that editors can use them too. This
module loads them once, validates one document, and turns jsonschema's errors
into ``(field path, message, hint)`` triples a person can act on. A schema may
carry ``x-message`` next to a keyword that cannot explain itself (a pattern, a
oneOf): that text then says what was expected.

Pure: reads the schema files, nothing else.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

from reconciler.model import FieldPath, Kind

_KIND_FILES = {
    Kind.VIRTUAL_MACHINE: "virtualmachine.schema.json",
    Kind.NETWORK: "network.schema.json",
    Kind.STORAGE_POOL: "storagepool.schema.json",
    Kind.VOLUME: "volume.schema.json",
}
_TYPE_NAMES = {
    "object": "a mapping", "array": "a list", "string": "a string",
    "integer": "an integer", "number": "a number", "boolean": "true or false", "null": "null",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    path: FieldPath
    message: str
    hint: str = ""
    at_key: bool = False  # point at the key of ``path`` rather than its value


def schema_dir() -> Path:
    """Where the schema files are: inside the installed package, else the source tree."""
    packaged = Path(__file__).parent / "_schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).parent.parent / "schemas"


@cache
def _validators() -> dict[Kind, Any]:
    """python-jsonschema validators, imported only when a document is invalid."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    directory = schema_dir()
    resources = []
    for path in sorted(directory.glob("*.schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((path.name, Resource.from_contents(contents, DRAFT202012)))
    registry: Registry[Any] = Registry().with_resources(resources)
    return {
        kind: jsonschema.Draft202012Validator(registry.contents(filename), registry=registry)
        for kind, filename in _KIND_FILES.items()
    }


@cache
def _fast_validators() -> dict[Kind, Any]:
    """jsonschema-rs validators (Rust): the fast yes/no for documents that are valid."""
    directory = schema_dir()

    def retrieve(uri: str) -> Any:
        return json.loads((directory / uri.rsplit("/", 1)[-1]).read_text(encoding="utf-8"))

    return {
        kind: jsonschema_rs.Draft202012Validator(
            retrieve(filename), retriever=retrieve, base_uri=f"file:///schemas/{filename}"
        )
        for kind, filename in _KIND_FILES.items()
    }


def kind_names() -> list[str]:
    return [k.value for k in Kind]


def validate_document(kind: Kind, document: Mapping[str, Any]) -> list[SchemaProblem]:
    """Every schema problem of ``document`` (of a known ``kind``), in document order.

    Valid documents, the common case, are confirmed by jsonschema-rs in
    microseconds; only an invalid one goes through python-jsonschema, whose
    errors carry what ``_explain`` needs (the failing subschema, for x-message).
    Both read the same schema files under the same draft, so they agree.
    """
    if _fast_validators()[kind].is_valid(document):
        return []
    validator = _validators()[kind]
    problems: list[SchemaProblem] = []
    for error in validator.iter_errors(document):
        problems.extend(_explain(error))
    return problems


def _explain(error: Any) -> Iterator[SchemaProblem]:
    """Turn one jsonschema.ValidationError into problems a person can act on."""
    path: FieldPath = tuple(error.absolute_path)
    value: Any = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    keyword = error.validator
    custom = schema.get("x-message")
    if keyword == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        for extra in sorted(set(value) - set(allowed)):
            yield SchemaProblem(
                (*path, extra), "unknown field", _suggest(str(extra), allowed, "field"), at_key=True
            )
    elif keyword == "required":
        for name in error.validator_value:
            if isinstance(value, Mapping) and name not in value:
                yield SchemaProblem((*path, name), "required field is missing", at_key=True)
    elif keyword == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        yield SchemaProblem(
            path,
            f"expected {' or '.join(_TYPE_NAMES.get(n, n) for n in names)}, got {_describe(value)}",
        )
    elif keyword in ("oneOf", "anyOf") and not custom and value is not None and (
        inner := _nullable_alternative(error)
    ):
        # "null, or X": say what is wrong with it as an X, not "not valid under any of
        # the given schemas"
        for sub in inner:
            yield from _explain(sub)
    elif keyword == "enum":
        options = [str(o) for o in error.validator_value]
        hint = _suggest(str(value), options, "value") if isinstance(value, str) else ""
        if "require" in options and str(value).lower() in _TURN_ON:
            hint = "to turn a CPU feature on use require (the host must have it) or force"
        yield SchemaProblem(path, f"{_show(value)} is not one of: {', '.join(options)}", hint)
    elif custom and "propertyNames" in error.schema_path:
        # a key that is not allowed: point at the key itself
        yield SchemaProblem((*path, str(value)), f"{_show(value)} {custom}", at_key=True)
    elif custom:
        if isinstance(value, Mapping | list):
            yield SchemaProblem(path, str(custom))
        else:
            yield SchemaProblem(path, f"{_show(value)} {custom}")
    elif keyword in ("minimum", "maximum"):
        word = "at least" if keyword == "minimum" else "at most"
        yield SchemaProblem(
            path, f"{_show(value)} is out of range (expected {word} {error.validator_value})"
        )
    elif keyword == "uniqueItems":
        yield SchemaProblem(path, "has duplicate items", "list each item once")
    elif keyword == "minItems":
        yield SchemaProblem(path, f"needs at least {error.validator_value} item(s)")
    elif keyword in ("minLength", "maxLength"):
        word = "at least" if keyword == "minLength" else "at most"
        yield SchemaProblem(
            path, f"{_show(value)} must be {word} {error.validator_value} characters"
        )
    elif keyword == "const":
        yield SchemaProblem(path, f"{_show(value)} must be {error.validator_value!r}")
    else:
        yield SchemaProblem(path, error.message)


def _nullable_alternative(error: Any) -> list[Any]:
    """The errors of the one alternative that is not ``{"type": "null"}`` of a
    ``oneOf``/``anyOf`` of two (a field that is X or null), or [] for another shape."""
    options = error.validator_value
    if not isinstance(options, list) or len(options) != 2:
        return []
    others = [i for i, o in enumerate(options) if o != {"type": "null"}]
    if len(others) != 1:
        return []
    return [e for e in error.context or () if e.schema_path and e.schema_path[0] == others[0]]


# words for "on" that are not libvirt's feature policies ("enable" would suggest "disable")
_TURN_ON = ("enable", "enabled", "on", "true", "yes", "1")


_SHOWN = 80
"""The most characters of a value a message repeats (a 5000-character mount tag
buried the message and its fix)."""


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    if len(text) <= _SHOWN:
        return text
    return f"{text[:_SHOWN - 20]}... ({len(text)} characters)"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    return f"string {value!r}"


def _suggest(word: str, options: list[str], what: str) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if what == "field" and options:
        return "expected one of: " + ", ".join(options)
    return ""


def suggest(word: str, options: list[str]) -> str:
    """'did you mean ...?' for ``word`` among ``options``, or ''."""
    return _suggest(word, options, "value")
