"""YAML text → plain Python documents, each with the position of every field.

PyYAML composes the node graph (with libyaml's C parser when it is present);
we build the Python values ourselves so that every value, and every mapping
key, keeps its line and column for error messages. Scalars resolve as in
YAML 1.2's core schema: only true/false are booleans and there are no
base-60 numbers, so `on`, `no` and an unquoted MAC such as 52:54:00:12:34:56
stay strings. Duplicate keys, unknown tags and alias bombs are errors.

Pure: takes text, returns values. No file system access (manifests.py reads).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.atomicfile import write_atomically
from reconciler.model import FieldPath

try:
    from yaml.cyaml import CParser as _Parser  # type: ignore[attr-defined]

    LIBYAML = True
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser, Composer):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)

    LIBYAML = False

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MAX_NODES = 200_000


class _CoreResolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema resolution (no yes/no/on/off, no sexagesimal)."""


_CoreResolver.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_CoreResolver.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_CoreResolver.add_implicit_resolver(
    _NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreResolver.add_implicit_resolver(_MERGE, re.compile(r"^(?:<<)$"), ["<"])


@functools.lru_cache(maxsize=4096)
def _resolve_scalar(value: str, implicit: bool) -> str:
    """The tag of a plain scalar; cached, since manifests repeat keys and values a lot."""
    if not implicit:
        return _STR
    resolvers = _CoreResolver.yaml_implicit_resolvers.get(value[:1] if value else "", [])
    for tag, regexp in resolvers:
        if regexp.match(value):
            return str(tag)
    return _STR


class _Loader(_Parser, _CoreResolver):
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _CoreResolver.__init__(self)

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # Same answer as BaseResolver.resolve (we register no path resolvers), faster.
        if kind is yaml.ScalarNode:
            return _resolve_scalar(value, bool(implicit[0]))
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass  # no path resolvers are registered: nothing to track

    def ascend_resolver(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its value, and where each of its fields is written.

    Positions are found on demand from the composed node tree, so that a
    valid document, the common case, pays nothing for them.
    """

    value: Any
    node: yaml.Node = field(repr=False)

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    @property
    def column(self) -> int:
        return int(self.node.start_mark.column) + 1

    def position(self, path: FieldPath, *, key: bool = False) -> tuple[int, int] | None:
        """(line, column) of the value at ``path`` (of its key, with ``key``), 1-based.

        None when ``path`` is not written in the document (a missing field).
        """
        node = self.node
        for i, part in enumerate(path):
            found = _child(node, part)
            if found is None:
                return None
            key_node, node = found
            if key and i == len(path) - 1 and key_node is not None:
                node = key_node
        return (node.start_mark.line + 1, node.start_mark.column + 1)


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in reversed(node.value):
            if key_node.tag == _MERGE:
                merged = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in merged:
                    found = _child(source, part)
                    if found is not None:
                        return found
            elif isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                return (key_node, value_node)
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return (None, node.value[part])
    return None


@dataclass(frozen=True, slots=True)
class CachedDocument:
    """A document whose value came from a ``ParseCache``; positions parse ``text`` on demand."""

    value: Any
    line: int
    column: int
    text: str = field(repr=False)
    index: int = 0

    def position(self, path: FieldPath, *, key: bool = False) -> tuple[int, int] | None:
        return _reparsed(self.text)[self.index].position(path, key=key)


@functools.lru_cache(maxsize=64)
def _reparsed(text: str) -> list[Document]:
    return list(parse_documents(text))


class ParseCache:
    """Parsed documents by the digest of the text they came from, kept in a JSON file.

    YAML parsing is most of the cost of loading a large, unchanged manifest
    tree; JSON is read ten times faster. Keyed by content (and this module's
    version), so an edited file is parsed again; only files that parse cleanly
    are cached. ``save`` keeps the entries used since ``load``.
    """

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[list[Any]]] = {}
        self._used: dict[str, list[list[Any]]] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == self.VERSION:
                    self._entries = data["entries"]
            except (OSError, ValueError, KeyError, AttributeError):
                self._entries = {}

    def documents(self, text: str) -> list[Document] | list[CachedDocument]:
        """The documents of ``text``; raises ``YamlProblem`` like ``parse_documents``."""
        key = hashlib.sha256(text.encode()).hexdigest()
        hit = self._entries.get(key)
        if hit is not None:
            self._used[key] = hit
            return [CachedDocument(v, line, col, text, i) for i, (v, line, col) in enumerate(hit)]
        parsed = list(parse_documents(text))
        self._used[key] = [[d.value, d.line, d.column] for d in parsed]
        return parsed

    def save(self) -> None:
        if self.path is None or self._used == self._entries:
            return
        with contextlib.suppress(OSError):
            write_atomically(
                self.path, json.dumps({"version": self.VERSION, "entries": self._used})
            )


class YamlProblem(Exception):
    """The text is not YAML we accept; line and column are 1-based (0: unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.hint = hint


def parse_documents(text: str) -> Iterator[Document]:
    """Yield every non-empty document of ``text``; raise ``YamlProblem`` at the first error."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            value = _Builder().build(node)
            if value is None:
                continue  # an empty document ("---" with nothing after it)
            yield Document(value=value, node=node)
    except yaml.MarkedYAMLError as exc:
        raise _explain(exc, text) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _explain(exc: yaml.MarkedYAMLError, source: str) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    problem = exc.problem or "not valid YAML"
    lines = source.splitlines()
    offending = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in problem or "\t" in offending[: max(column, 1)]:
        return YamlProblem(
            "tab character where YAML expects spaces",
            line,
            column,
            "indent with spaces only; YAML does not allow tabs for indentation",
        )
    text = problem
    if exc.context:
        text = f"{exc.context}, {problem}"
    return YamlProblem(f"not valid YAML: {text}", line, column)


class _Builder:
    def __init__(self) -> None:
        self.count = 0

    def build(self, node: yaml.Node) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise YamlProblem(
                f"document has more than {_MAX_NODES} values (alias expansion?)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node)
        if node.tag != _SEQ:
            raise self._tag_problem(node)
        return [self.build(child) for child in node.value]

    def _mapping(self, node: yaml.MappingNode) -> dict[str, Any]:
        if node.tag != _MAP:
            raise self._tag_problem(node)
        result: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = (
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                for source in sources:
                    value = self.build(source)
                    if not isinstance(value, dict):
                        raise YamlProblem(
                            "'<<' merges only mappings",
                            source.start_mark.line + 1,
                            source.start_mark.column + 1,
                        )
                    for k, v in value.items():
                        merged.setdefault(k, v)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(
                    "mapping keys must be plain text",
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
            key = str(self._scalar(key_node))
            if key in result:
                first = next(k for k, _ in node.value if k.value == key)
                raise YamlProblem(
                    f"duplicate key '{key}' (first at line {first.start_mark.line + 1})",
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                    hint="a key may appear once per mapping",
                )
            result[key] = self.build(value_node)
        for k, v in merged.items():
            result.setdefault(k, v)
        return result

    @staticmethod
    def _scalar(node: yaml.Node) -> Any:
        text: str = node.value
        tag = node.tag
        if tag == _STR:
            return text
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return text.lower() == "true"
        if tag == _INT:
            if text.startswith("0o"):
                return int(text[2:], 8)
            return int(text, 0) if text.startswith("0x") else int(text)
        if tag == _FLOAT:
            lowered = text.lower()
            if lowered.lstrip("+-") in (".inf", ".nan"):
                return float(lowered.replace(".", ""))
            return float(text)
        raise _Builder._tag_problem(node)

    @staticmethod
    def _tag_problem(node: yaml.Node) -> YamlProblem:
        return YamlProblem(
            f"unsupported YAML tag {node.tag}",
            node.start_mark.line + 1,
            node.start_mark.column + 1,
            "remove the tag; manifests use plain mappings, lists and scalars",
        )
