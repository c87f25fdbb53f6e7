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

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

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


class _Loader(_Parser, _CoreResolver):
    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        _CoreResolver.__init__(self)


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its value, and (line, column) of each field, 1-based."""

    value: Any
    line: int
    column: int
    positions: dict[FieldPath, tuple[int, int]]
    key_positions: dict[FieldPath, tuple[int, int]]


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
            builder = _Builder()
            value = builder.build(node, ())
            if value is None:
                continue  # an empty document ("---" with nothing after it)
            yield Document(
                value=value,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
                positions=builder.positions,
                key_positions=builder.key_positions,
            )
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
        self.positions: dict[FieldPath, tuple[int, int]] = {}
        self.key_positions: dict[FieldPath, tuple[int, int]] = {}
        self.count = 0

    def build(self, node: yaml.Node, path: FieldPath) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise YamlProblem(
                f"document has more than {_MAX_NODES} values (alias expansion?)",
                node.start_mark.line + 1,
                node.start_mark.column + 1,
            )
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self._tag_problem(node)
            return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, Any]:
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
                    value = self.build(source, path)
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
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in result:
                first = self.key_positions[(*path, key)]
                raise YamlProblem(
                    f"duplicate key '{key}' (first at line {first[0]})",
                    *where,
                    hint="a key may appear once per mapping",
                )
            self.key_positions[(*path, key)] = where
            result[key] = self.build(value_node, (*path, key))
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
