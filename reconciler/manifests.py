"""Manifest files → validated ``Manifest`` values, or every problem found.

What arrives: a directory (the git work tree the operator keeps). What
happens, in order: find the files (recursively; ``*.yaml``/``*.yml``; hidden
files and folders such as ``.git`` and editor temporaries skipped), read and
parse each (yamlsource.py), check each document against its kind's JSON
Schema (schema.py), build the typed spec (model.py), check references across
manifests (references.py), keep the manifests that select this host. What
leaves: a ``LoadResult``, holding the manifests that loaded and the problems,
each placed at ``file:line:col`` with its field path.

A directory with any problem must not be used to prune (SPEC §3): callers
look at ``LoadResult.complete``.

Reads files; otherwise pure.
"""

from __future__ import annotations

import fnmatch
import gc
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import Problem, SourcePosition
from reconciler.model import (
    API_VERSION,
    FieldPath,
    FieldProblem,
    Kind,
    Manifest,
    SpecError,
    XmlEdit,
    build_manifest,
)
from reconciler.references import NOTHING_KNOWN, KnownObjects, check_references
from reconciler.schema import SchemaProblem, kind_names, suggest, validate_document
from reconciler.xml.chars import not_xml
from reconciler.yamlsource import CachedDocument, Document, ParseCache, YamlProblem

MANIFEST_SUFFIXES = (".yaml", ".yml")
_MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a directory holds: the manifests that loaded and every problem found."""

    root: str
    manifests: tuple[Manifest, ...]
    problems: tuple[Problem, ...]
    files: tuple[str, ...]
    # checks that could not be made, one line each (e.g. a host fact libvirt did not
    # give): said to the user, but not problems
    notes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every file loaded and the directory had manifests: safe to prune."""
        return not self.problems and bool(self.files)


def is_manifest_file(name: str) -> bool:
    """Whether a file name counts as a manifest (not hidden, not an editor temporary)."""
    if name.startswith((".", "#", "~")) or name.endswith("~"):
        return False
    return name.endswith(MANIFEST_SUFFIXES)


def discover(root: Path) -> list[Path]:
    """Manifest files under ``root``, sorted; hidden folders are not entered."""
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        found.extend(Path(directory, f) for f in sorted(files) if is_manifest_file(f))
    return found


def snapshot(root: str | os.PathLike[str]) -> tuple[object, ...]:
    """What the manifest files under ``root`` are now, cheaply: where the root points,
    and each file's name, size, inode and change times. Equal snapshots taken around a
    read mean the read saw files nobody was changing (the daemon's removal check)."""
    path = Path(root)
    entries: list[object] = [os.path.realpath(path)]
    try:
        files = discover(path) if path.is_dir() else []
    except OSError:
        return (None,)
    for file in files:
        try:
            st = file.stat()
        except OSError:
            entries.append((str(file), None))
            continue
        entries.append((str(file), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(entries)


def load_directory(
    root: str | os.PathLike[str],
    *,
    known: KnownObjects = NOTHING_KNOWN,
    host: str | None = None,
) -> LoadResult:
    """Load, validate and cross-check every manifest under ``root``.

    ``host``: keep only manifests whose ``metadata.hosts`` select this host name
    (None keeps all). ``known``: libvirt objects that references may name.
    """
    return check_against(load_unchecked(root, host=host), known)


def load_unchecked(
    root: str | os.PathLike[str], *, host: str | None = None, cache: ParseCache | None = None
) -> LoadResult:
    """Every manifest under ``root`` that is valid on its own; references not yet checked.

    ``cache``: parsed YAML by content digest (see ``ParseCache``), saved afterwards."""
    parser = cache or ParseCache(None)
    shown_root = os.fspath(root)
    path = Path(root)
    if not path.exists():
        return _failed(shown_root, "directory does not exist", "check the path, or create it")
    if not path.is_dir():
        return _failed(shown_root, "is not a directory", "pass the folder holding the manifests")
    files = discover(path)
    if not files:
        return _failed(
            shown_root,
            "no manifests found (expected *.yaml or *.yml files)",
            "an empty directory is never applied; it would delete everything",
        )
    problems: list[Problem] = []
    manifests: list[Manifest] = []
    with _gc_paused():
        for file in files:
            shown = os.path.join(shown_root, os.path.relpath(file, path))
            bad = not_xml(shown)
            if bad is not None:
                # the ownership record in libvirt names the manifest by this path
                printable = "".join(repr(c)[1:-1] if not_xml(c) else c for c in shown)
                problems.append(Problem(
                    SourcePosition(printable),
                    f"the manifest's path holds {bad!r}, a character XML cannot hold, and "
                    "libvirt's ownership record names the manifest by its path",
                    hint="rename the folder or file"))  # fmt: skip
                continue
            manifests.extend(load_file(file, shown, problems, parser))
    parser.save()
    return LoadResult(
        root=shown_root,
        manifests=tuple(m for m in manifests if host is None or selects_host(m, host)),
        problems=tuple(problems),
        files=tuple(os.path.join(shown_root, os.path.relpath(f, path)) for f in files),
    )


def check_against(load: LoadResult, known: KnownObjects) -> LoadResult:
    """``load`` with references checked (against each other and ``known``); a manifest with
    a problem is dropped from the result, its problems added."""
    return drop_findings(load, check_references(load.manifests, known))


def drop_findings(
    load: LoadResult,
    findings: Iterable[tuple[Manifest, FieldProblem]],
    notes: Iterable[str] = (),
) -> LoadResult:
    """``load`` without the manifests that ``findings`` name, their problems placed at
    ``file:line:col`` and added (a manifest with a problem is not planned, and nothing is
    pruned: ``complete`` is False); ``notes`` are added to ``LoadResult.notes``."""
    problems = list(load.problems)
    broken: set[int] = set()
    for manifest, problem in findings:
        broken.add(id(manifest))
        problems.append(
            Problem(
                manifest.position(problem.path),
                problem.message,
                _dotted(problem.path),
                problem.hint,
            )
        )
    return LoadResult(
        root=load.root,
        manifests=tuple(m for m in load.manifests if id(m) not in broken),
        problems=tuple(problems),
        files=load.files,
        notes=(*load.notes, *notes),
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while parsing.

    Parsing allocates many small acyclic objects (YAML nodes and marks); the
    collector would rescan them over and over, half of the load time for a
    thousand manifests. Nothing allocated here forms cycles that need it.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _failed(shown_root: str, message: str, hint: str) -> LoadResult:
    return LoadResult(
        shown_root, (), (Problem(SourcePosition(shown_root), message, hint=hint),), ()
    )


def selects_host(manifest: Manifest, host: str) -> bool:
    hosts = manifest.metadata.hosts
    return not hosts or any(fnmatch.fnmatchcase(host, pattern) for pattern in hosts)


def load_file(
    file: Path, shown: str, problems: list[Problem], parser: ParseCache | None = None
) -> list[Manifest]:
    """Every valid manifest in one file; problems are appended to ``problems``."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        problems.append(Problem(SourcePosition(shown), f"cannot read file: {exc.strerror}"))
        return []
    if len(data) > _MAX_FILE_BYTES:
        problems.append(
            Problem(
                SourcePosition(shown),
                f"file is larger than {_MAX_FILE_BYTES // 1024 // 1024} MiB",
                hint="split it into several manifest files",
            )
        )
        return []
    if b"\x00" in data:
        problems.append(
            Problem(
                SourcePosition(shown), "binary file, not YAML text", hint="remove it or rename it"
            )
        )
        return []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(
            Problem(SourcePosition(shown, line, 1), "not UTF-8 text", hint="save the file as UTF-8")
        )
        return []
    return load_text(text, shown, problems, parser)


def load_text(
    text: str, shown: str, problems: list[Problem], parser: ParseCache | None = None
) -> list[Manifest]:
    """Every valid manifest in ``text`` (the contents of file ``shown``)."""
    manifests: list[Manifest] = []
    try:
        documents = (parser or ParseCache(None)).documents(text)
        for document in documents:
            manifest = _load_document(document, shown, problems)
            if manifest is not None:
                manifests.append(manifest)
    except YamlProblem as exc:
        where = SourcePosition(shown, exc.line, exc.column)
        problems.append(Problem(where, exc.message, hint=exc.hint))
        return manifests
    if not documents:
        # An empty file is what a slow writer or an editor leaves for a moment (issue
        # 11): taken as valid, it would delete everything the file declared. A file
        # that declares nothing is a problem, so nothing is pruned while it exists.
        problems.append(
            Problem(
                SourcePosition(shown),
                "file holds no manifest (empty, or only comments and ---)",
                hint="an empty manifest file is never valid: delete the file to remove "
                "what it declared",
            )
        )
    return manifests


def _load_document(
    document: Document | CachedDocument, shown: str, problems: list[Problem]
) -> Manifest | None:
    start = SourcePosition(shown, document.line, document.column)

    def at(path: FieldPath, *, key: bool = False) -> SourcePosition:
        while path:
            found = document.position(path, key=key)
            if found is not None:
                return SourcePosition(shown, *found)
            path, key = path[:-1], True
        return start

    value = document.value
    if not isinstance(value, dict):
        problems.append(
            Problem(
                start,
                f"document is {_a(value)}, expected a mapping",
                hint="a manifest has apiVersion, kind, metadata and spec",
            )
        )
        return None
    head = _check_head(value)
    if head is not None:
        path, message, hint = head
        problems.append(Problem(at(path), message, _dotted(path), hint))
        return None
    kind = Kind(value["kind"])
    schema_problems = validate_document(kind, value)
    if schema_problems:
        problems.extend(_placed(schema_problems, at))
        return None
    unwritable = list(_unwritable_text(value))
    unwritable += _xml_edit_problems(value)
    try:
        manifest = build_manifest(value, start, document)
    except SpecError as exc:
        unwritable += exc.problems
        manifest = None
    for p in unwritable:
        problems.append(Problem(at(p.path), p.message, _dotted(p.path), p.hint))
    return None if unwritable else manifest


def _xml_edit_problems(value: Mapping[str, Any]) -> list[FieldProblem]:
    """A problem for each entry of a spec's ``xml`` (the escape hatch) whose
    path is outside the language or whose fragment is not one safe, well-formed element
    (``xml.edits.problem``): what ``validate --offline`` checks of it. Its validity
    against libvirt's schema and the typed fields is checked at plan time."""
    if not value.get("spec", {}).get("xml"):  # a VM's, a network's or a pool's
        return []
    # lxml only for a manifest that uses the hatch: loading the others stays light
    from reconciler.xml.edits import problem as edit_problem

    found = []
    for i, raw in enumerate(value.get("spec", {}).get("xml", ())):
        edit = XmlEdit(xpath=raw["xpath"], value=raw.get("value"), add=raw.get("add"),
                       delete=bool(raw.get("delete", False)))  # fmt: skip
        wrong = edit_problem(edit)
        if wrong is not None:
            key, why, fix = wrong
            found.append(FieldProblem(("spec", "xml", i, key), why, fix))
    return found


_NOT_IN_XML: frozenset[FieldPath] = frozenset({("spec", "cloudInit")})
"""Subtrees whose text never goes into libvirt's XML (the cloud-init seed is an ISO)."""


def _unwritable_text(value: object, where: FieldPath = ()) -> Iterator[FieldProblem]:
    """A problem for each string of a document (keys too) holding a character XML 1.0
    cannot hold (``xml.chars``), or a carriage return, which XML parsing turns into a
    newline (XML 1.0 "End-of-Line Handling"), so that what libvirt keeps never equals
    the manifest and a plan never settles. The one check for every text field (names,
    paths, cmdline, serial, keymap, DNS names...), at its line, before any plan."""
    if where in _NOT_IN_XML:
        return
    if isinstance(value, str):
        bad = "\r" if "\r" in value else not_xml(value)
        if bad is not None:
            yield FieldProblem(where, f"holds {bad!r}, a character libvirt's XML cannot keep",
                               "remove it (write a line break as \\n)")  # fmt: skip
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                yield from _unwritable_text(key, (*where, key))
            yield from _unwritable_text(item, (*where, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _unwritable_text(item, (*where, i))


def _check_head(value: dict[str, Any]) -> tuple[FieldPath, str, str] | None:
    """apiVersion and kind decide which schema applies, so they are checked first."""
    if "apiVersion" not in value:
        return (("apiVersion",), "required field is missing", f"add apiVersion: {API_VERSION}")
    if value["apiVersion"] != API_VERSION:
        return (
            ("apiVersion",),
            f"{value['apiVersion']!r} is not a known apiVersion",
            f"expected {API_VERSION}",
        )
    if "kind" not in value:
        return (
            ("kind",),
            "required field is missing",
            "expected one of: " + ", ".join(kind_names()),
        )
    kind = value["kind"]
    if kind not in kind_names():
        hint = suggest(str(kind), kind_names()) or "expected one of: " + ", ".join(kind_names())
        return (("kind",), f"{kind!r} is not a known kind", hint)
    return None


def _placed(found: Iterable[SchemaProblem], at: Any) -> list[Problem]:
    placed = [Problem(at(p.path, key=p.at_key), p.message, _dotted(p.path), p.hint) for p in found]
    return sorted(placed, key=lambda p: (p.position.line, p.position.column))


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


def _a(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
