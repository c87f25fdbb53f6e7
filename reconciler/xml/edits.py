"""The escape hatch: edits of a domain definition in virt-install's ``--xml`` terms.

A VirtualMachine's ``xml`` field is a list of edits, each an ``xpath`` (relative
to ``<domain>``, ``./features/hyperv/relaxed/@state``) and one action:

* ``value``: set the attribute the path ends in (``/@state``), or the text of the
  element it names; missing elements on the way are created (a ``[@attr='v']``
  predicate is written on the element it creates; a step with ``[N]`` or
  ``[child/@attr='v']`` names an element the definition has, and an entry whose
  such step matches nothing is refused at plan);
* ``add``: an XML fragment added as a child of the (first) element the path names,
  unless a child with at least the fragment's attributes, text and children is
  there already (so the ``<address>``, ``<alias>`` and defaults libvirt adds never
  make it differ);
* ``delete``: remove every element (or attribute) the path names.

Each edit is applied after the typed fields (render and patch alike) and is
idempotent. Compared by meaning: ``project`` says what an edit wants (``present``,
``absent``, the value), ``observe`` what a definition has, under one key per entry
in the user's terms (``xml[1] (./devices: <panic model='isa'/>)``).

The path language is the subset of XPath 1.0 that names one place without
evaluating anything: ``.``, ``./step/step``, a step being a name without a prefix,
with predicates ``[N]``, ``[@a='v']``, ``[child/@a='v']`` or ``[child='text']``;
an optional final ``/@name``. Fragments are parsed with the project's safe parser
(no entities, no DTD, no network, lxml's depth and size limits); a DOCTYPE, an
entity reference or a processing instruction is refused, and so is anything in
the tool's own ownership namespace, and (a manifest being input to a root daemon)
what makes libvirt run a program or hand QEMU or dnsmasq raw options: a NIC's
``<script>``, ``<emulator>``, libvirt's passthrough namespaces (``qemu:``,
``dnsmasq:``), a domain ``<seclabel>`` other than libvirt's default (``_UNSAFE``).
A path may not set ``@xmlns`` (lxml writes it as a namespace declaration). Values
are compared as libvirt reads them (``same``).

Pure except ``libvirt_schema`` (reads libvirt's RelaxNG once, lazily).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lxml import etree as ET

from reconciler.model import XmlEdit
from reconciler.xml._fields import _PARSER, Element, Projection, remove

__all__ = [
    "LIBVIRT_DOMAIN_RNG",
    "Edit",
    "apply",
    "contains",
    "edit_key",
    "fragment",
    "libvirt_schema",
    "observe",
    "problem",
    "project",
    "same",
    "schema_errors",
]

LIBVIRT_SCHEMAS = "/usr/share/libvirt/schemas"
LIBVIRT_DOMAIN_RNG = f"{LIBVIRT_SCHEMAS}/domain.rng"
LIBVIRT_NETWORK_RNG = f"{LIBVIRT_SCHEMAS}/network.rng"
LIBVIRT_POOL_RNG = f"{LIBVIRT_SCHEMAS}/storagepool.rng"
_OWNER_NS = "https://reconciler.dev/xmlns/"  # every namespace of the tool's own records

PRESENT = "present"
ABSENT = "absent"


Edit = XmlEdit
"""One entry of a manifest's ``xml`` list (``model.XmlEdit``)."""


# --- the path language ---------------------------------------------------------------

_NAME = r"[A-Za-z_][\w.-]*"
_QUOTED = r"(?:'[^']*'|\"[^\"]*\")"
_PRED = rf"\[(?:[1-9][0-9]{{0,3}}|@{_NAME}={_QUOTED}|(?:{_NAME}/)*(?:@{_NAME}|{_NAME})={_QUOTED})\]"
_STEP = re.compile(rf"^({_NAME})((?:{_PRED})*)\Z")  # \Z: "$" took "name\n" (a YAML "|")
_PRED_ONE = re.compile(
    rf"\[(?:(?P<n>[1-9][0-9]*)|(?P<path>(?:{_NAME}/)*(?:@{_NAME}|{_NAME}))=(?P<q>{_QUOTED}))\]"
)


@dataclass(frozen=True, slots=True)
class _Path:
    steps: tuple[str, ...]  # each step as written (valid XPath on its own)
    attr: str | None  # the final /@name, if any


def _split(xpath: str) -> list[str]:
    """``xpath`` split at the slashes outside predicates and quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in xpath:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


@functools.lru_cache(maxsize=4096)  # bounded: a daemon meets new manifests for months
def _parse_path(xpath: str) -> _Path:
    """The steps of ``xpath``; ValueError (with the fix) when it is outside the language."""
    if xpath == ".":
        return _Path((), None)
    if not xpath.startswith("./"):
        raise ValueError(f"{xpath!r} does not start with './' (paths are relative to "
                         "<domain>, as in virt-install --xml: ./devices, "
                         "./os/@firmware)")  # fmt: skip
    parts = _split(xpath[2:])
    attr = None
    if parts and parts[-1].startswith("@"):
        attr = parts.pop()[1:]
        if not re.fullmatch(_NAME, attr):
            raise ValueError(f"{xpath!r}: '@{attr}' is not an attribute name")
    if not parts and attr is None:
        raise ValueError(f"{xpath!r} names no element")
    for step in parts:
        match = _STEP.match(step)
        if not match:
            raise ValueError(
                f"{xpath!r}: step {step!r} is not a plain name with predicates [N], "
                "[@attr='value'], [child/@attr='value'] or [child='text'] "
                "(no namespace prefixes, functions or axes)")  # fmt: skip
        named = [p.group("path") or "" for p in _PRED_ONE.finditer(match.group(2))]
        if any(n.rpartition("@")[2].lower().startswith("xmlns") for n in named if "@" in n):
            attr = "xmlns"
    if attr is not None and attr.lower().startswith("xmlns"):
        # lxml writes an "xmlns" attribute as a namespace declaration: <owner
        # xmlns="https://reconciler.dev/..."> read back is our ownership record, forged
        raise ValueError(f"{xpath!r}: '@xmlns' is a namespace declaration, not an "
                         "attribute (no entry may move an element into a namespace)")
    return _Path(tuple(parts), attr)


def _step(node: Element, step: str) -> list[Element]:
    """The children of ``node`` that ``step`` (one step of the language) selects."""
    found = node.xpath(step)
    return [c for c in found if isinstance(c, ET._Element)] if isinstance(found, list) else []


def _targets(root: Element, path: _Path) -> list[Element]:
    nodes = [root]
    for step in path.steps:
        nodes = [c for n in nodes for c in _step(n, step)]
    return nodes


def _ensure(root: Element, path: _Path) -> Element:
    """The first element ``path`` names, creating the missing steps (with the attributes
    their ``[@attr='v']`` predicates say). ValueError for a missing step with a ``[N]``
    or ``[child...]`` predicate: that names an existing element, never a new one."""
    node = root
    for step in path.steps:
        found = _step(node, step)
        if found:
            node = found[0]
            continue
        match = _STEP.match(step)
        assert match is not None
        tag, preds = match.group(1), match.group(2)
        attrs: dict[str, str] = {}
        for pred in _PRED_ONE.finditer(preds):
            where = pred.group("path")
            if where is None or not where.startswith("@"):
                # [N], [child/@a='v']: an element the definition has, by its place or its
                # content (a disk by its target), never made up from the predicate
                raise ValueError(f"step {step!r} names no element of the definition; a "
                                 "missing element is created only from a plain name or "
                                 "[@attr='value'] predicates")  # fmt: skip
            attrs[where[1:]] = pred.group("q")[1:-1]
        node = ET.SubElement(node, tag, attrs)
    return node


# --- fragments -------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # bounded (up to 64 KiB each): see _parse_path
def fragment(text: str) -> Element:
    """The element an ``add`` holds, parsed safely. ValueError (why, in one line) for text
    that is not one well-formed element, or that holds a DOCTYPE, an entity reference,
    a processing instruction, or an element or attribute in the tool's own namespace."""
    if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
        raise ValueError("a DOCTYPE or ENTITY declaration is not allowed in a fragment")
    if "<?" in text:
        raise ValueError("a processing instruction or XML declaration is not allowed in a "
                         "fragment")  # fmt: skip
    try:
        root = ET.fromstring(text.strip().encode(), _PARSER)
    except ET.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc.msg}") from None
    for node in root.iter():
        if isinstance(node, ET._Entity):
            raise ValueError(f"entity reference {node.text} is not allowed (write the "
                             "character itself, or &amp; &lt; &gt; &quot; &apos;)")  # fmt: skip
        if isinstance(node, ET._ProcessingInstruction):
            raise ValueError("a processing instruction is not allowed in a fragment")
        if isinstance(node.tag, str) and (
            node.tag.startswith("{" + _OWNER_NS)
            or any(str(k).startswith("{" + _OWNER_NS) for k in node.attrib)
        ):
            raise ValueError("the fragment uses reconciler's own namespace, which holds "
                             "the ownership record")  # fmt: skip
    for comment in [c for c in root.iter() if isinstance(c, ET._Comment)]:
        remove(comment)
    return root


_HEX_ID = re.compile(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}"
                     r"-[0-9A-Fa-f]{12}")  # fmt: skip


def same(want: str, have: str | None) -> bool:
    """Whether ``have`` (what libvirt wrote) says ``want`` (what an entry says), as libvirt
    reads both: a number in any base it accepts (``slot='8'``, libvirt's ``0x08``), a MAC
    address or UUID in either case (libvirt writes them lowercase)."""
    if have is None or want == have:
        return want == have
    if _HEX_ID.fullmatch(want):
        return want.lower() == have.lower()
    try:
        return _number(want) == _number(have)
    except ValueError:
        return False


def _number(text: str) -> int:
    """``text`` as libvirt's number parsing reads it (decimal, or 0x hexadecimal)."""
    text = text.strip()
    if not re.fullmatch(r"[0-9]+|0[xX][0-9A-Fa-f]+", text):
        raise ValueError(text)
    return int(text, 16) if text[:2].lower() == "0x" else int(text, 10)


def contains(want: Element, have: Element) -> bool:
    """Whether ``have`` has at least what ``want`` says: its tag, its attributes with
    their values, its text (whitespace-trimmed, when it has some) and, recursively, a
    distinct child for each of its children."""
    if want.tag != have.tag:
        return False
    if any(not same(str(v), have.get(str(k))) for k, v in want.attrib.items()):
        return False
    text = (want.text or "").strip()
    if text and text != (have.text or "").strip():
        return False
    # the children not matched yet, by tag: each is taken once (a list scanned for the
    # used ones made <m> with 3000 <a/> take two minutes; a fragment may have 16000)
    free: dict[object, list[Element]] = {}
    for c in have:
        if isinstance(c.tag, str):
            free.setdefault(c.tag, []).append(c)
    # the most specific first: a bare <a/> must not take the <a b='1'/> another asks for
    # (libvirt may write them in another order than the fragment)
    wanted = sorted((c for c in want if isinstance(c.tag, str)),
                    key=lambda c: -sum(1 + len(e.attrib) for e in c.iter()))  # fmt: skip
    for child in wanted:
        pool = free.get(child.tag, [])
        at = next((i for i, c in enumerate(pool) if contains(child, c)), None)
        if at is None:
            return False
        del pool[at]
    return True


# --- checks, apply, compare --------------------------------------------------------

_IDENTITY = ("./name", "./uuid")


def problem(edit: Edit) -> tuple[str, str, str] | None:
    """What is wrong with ``edit`` on its own, as (the key it is at: ``xpath`` or ``add``,
    why, the fix), or None: the path outside the language, a fragment that is not one
    safe well-formed element, an edit of the domain's name, uuid or metadata record."""
    try:
        path = _parse_path(edit.xpath)
    except ValueError as exc:
        return ("xpath", str(exc), "write a path as virt-install --xml does, "
                "e.g. ./features/hyperv/relaxed/@state")  # fmt: skip
    head = "./" + path.steps[0] if path.steps else "."
    if any(head == p or head.startswith(p + "[") for p in _IDENTITY):
        return ("xpath", f"{edit.xpath} is the domain's identity",
                "the name is metadata.name; the uuid is libvirt's")  # fmt: skip
    names = [_tag(step) for step in path.steps]
    # ./metadata[1] names it as well as ./metadata: deleting it deletes our record
    if names == ["metadata"] and path.attr is None and (edit.value is not None or edit.delete):
        return ("xpath", "./metadata holds reconciler's ownership record",
                "add your own element under ./metadata instead")  # fmt: skip
    if not path.steps and path.attr is None and (edit.value is not None or edit.delete):
        return ("xpath", "'.' is the root element itself",
                "name an element below it, or an attribute (./@attr)")  # fmt: skip
    unsafe = next((n for j, n in enumerate(names)
                   if n in _UNSAFE and (n != "seclabel" or j == 0)), None)  # fmt: skip
    if unsafe is not None and not edit.delete:
        return ("xpath", f"{edit.xpath} reaches <{unsafe}>: {_UNSAFE[unsafe]}",
                "leave it to the host's configuration (not a manifest's)")  # fmt: skip
    if edit.add is not None:
        if path.attr is not None:
            return ("xpath", f"{edit.xpath} names an attribute; add puts an element "
                    "under an element", "drop the /@... step, or use value:")  # fmt: skip
        try:
            root = fragment(edit.add)
        except ValueError as exc:
            return ("add", str(exc), "give one element, e.g. <panic model='isa'/>")
        for node in root.iter():
            if not isinstance(node.tag, str):
                continue
            tag = ET.QName(node).localname if str(node.tag).startswith("{") else str(node.tag)
            if str(node.tag).startswith("{" + _QEMU_NS):
                return ("add", f"<{tag}> in a libvirt passthrough namespace "
                        f"({ET.QName(node).namespace}) hands "
                        "options to QEMU or dnsmasq outside libvirt's checks and the "
                        "allowed roots (qemu:commandline, dnsmasq:options run programs "
                        "and open files as root or QEMU)",
                        "use a typed field or a plain libvirt element; passthrough is "
                        "not allowed from a manifest")  # fmt: skip
            if str(node.tag).startswith("{"):
                continue
            if tag == "seclabel" and not (node is root and not path.steps):
                continue  # a device's: relabel or not one file (its path passes the roots)
            if tag in _UNSAFE and not (tag == "seclabel" and _default_confinement(node)):
                return ("add", f"<{tag}>: {_UNSAFE[tag]}",
                        "leave it to the host's configuration (not a manifest's)")  # fmt: skip
            raw = _raw_host_device(tag, node.get("type"))
            if raw is not None:
                return ("add", raw, "attach it by hand (virsh attach-device) if it is "
                        "meant: a manifest cannot")  # fmt: skip
    if edit.value is not None and path.attr == "type" and names:
        raw = _raw_host_device(names[-1], edit.value)
        if raw is not None:
            return ("value", raw, "attach it by hand (virsh attach-device) if it is "
                    "meant: a manifest cannot")  # fmt: skip
    return None


def _raw_host_device(tag: str, kind: str | None) -> str | None:
    """Why an element of ``tag`` and ``type`` ``kind`` hands a host's device to a guest
    beyond the allowed roots, or None. A SCSI host device is raw access to a host disk
    (formatdomain "Host device assignment": ``type='scsi'``, ``scsi_host``), and an
    NVMe disk takes a host NVMe controller away from the host (``<disk type='nvme'>``):
    neither has a path the roots could judge, as a block disk's ``/dev/...`` has."""
    if tag == "hostdev" and kind in ("scsi", "scsi_host"):
        return (f"<hostdev type='{kind}'> gives the guest a host SCSI device, which no "
                "allowed root covers")
    if tag == "disk" and kind == "nvme":
        return ("<disk type='nvme'> gives the guest a host NVMe controller, which no "
                "allowed root covers")
    return None


_QEMU_NS = "http://libvirt.org/schemas/"  # qemu:, lxc:, xen:, a network's dnsmasq:
_UNSAFE = {
    "script": "libvirt runs this program as root when the NIC starts",
    "downscript": "libvirt runs this program as root when the NIC stops",
    "emulator": "libvirt runs this program (the QEMU binary)",
    "seclabel": "it changes how QEMU is confined (or runs it as another user, root "
                "too); only libvirt's default, type='dynamic' relabelling, may be added",
}
"""Elements no entry may add or set: a manifest is input to a root daemon, which runs
no program a repository names (SPEC §5). Deleting one is allowed (libvirt fills in
the emulator, the host's default confinement)."""


def _default_confinement(seclabel: Element) -> bool:
    """Whether a domain's ``<seclabel>`` says only what libvirt does by default (and
    writes into definitions): ``type='dynamic'``, relabelling, no label of its own."""
    return (seclabel.get("type", "dynamic") == "dynamic" and seclabel.get("relabel") != "no"
            and not any(isinstance(c.tag, str) for c in seclabel))  # fmt: skip


def _tag(step: str) -> str:
    """The element name of a path step (``disk[@type='file']``: ``disk``)."""
    return step.split("[", 1)[0]


def edit_key(index: int, edit: Edit) -> str:
    """The projection key of entry ``index`` in the user's terms:
    ``xml[1] (./devices: <panic model='isa'/>)``, ``xml[0] (./os/@firmware)``."""
    if edit.add is not None:
        text = " ".join(edit.add.split())
        if len(text) > 60:
            text = text[:57] + "..."
        return f"xml[{index}] ({edit.xpath}: {text})"
    if edit.delete:
        return f"xml[{index}] ({edit.xpath}: delete)"
    return f"xml[{index}] ({edit.xpath})"


def project(edits: Sequence[Edit]) -> Projection:
    """What each edit wants: ``present`` (add), ``absent`` (delete), or its value."""
    out: Projection = {}
    for i, edit in enumerate(edits):
        out[edit_key(i, edit)] = (
            PRESENT if edit.add is not None else ABSENT if edit.delete else edit.value
        )
    return out


def _read(root: Element, edit: Edit) -> object:
    path = _parse_path(edit.xpath)
    found = _targets(root, path)
    if edit.add is not None:
        want = fragment(edit.add)
        return PRESENT if found and any(contains(want, c) for c in found[0]) else ABSENT
    if edit.delete:
        if path.attr is not None:
            found = [e for e in found if e.get(path.attr) is not None]
        return PRESENT if found else ABSENT
    if not found:
        return None
    have = found[0].get(path.attr) if path.attr is not None else (found[0].text or "")
    # by meaning: libvirt's spelling of the entry's value is the entry's value
    return edit.value if edit.value is not None and same(edit.value, have) else have


def observe(root: Element, edits: Sequence[Edit]) -> Projection:
    """What ``root`` (a domain definition) has of each edit, keyed as ``project``."""
    return {edit_key(i, edit): _read(root, edit) for i, edit in enumerate(edits)}


def apply(root: Element, edits: Iterable[Edit]) -> None:
    """Apply ``edits`` to ``root`` in order (in place), each only where it is not
    satisfied yet. ValueError (naming ``xml[i]``) for an edit that cannot be applied."""
    for i, edit in enumerate(edits):
        try:
            _apply_one(root, edit)
        except ValueError as exc:
            raise ValueError(f"xml[{i}] ({edit.xpath}): {exc}") from None


def _apply_one(root: Element, edit: Edit) -> None:
    path = _parse_path(edit.xpath)
    if edit.delete:
        for element in _targets(root, path):
            if path.attr is None:
                remove(element)
            elif path.attr in element.attrib:
                del element.attrib[path.attr]
        return
    if edit.add is not None:
        parent = _ensure(root, path)
        want = fragment(edit.add)
        if not any(contains(want, c) for c in parent):
            parent.append(copy.deepcopy(want))
        return
    assert edit.value is not None
    element = _ensure(root, path)
    if path.attr is not None:
        element.set(path.attr, edit.value)
    else:
        element.text = edit.value


# --- the typed fields win ---------------------------------------------------------


def refusal(
    entries: Sequence[Edit], base: Element, observe_typed: Callable[[Element], Projection]
) -> tuple[int, str] | None:
    """Why an entry of ``entries`` cannot be applied to ``base`` (not changed), as (its
    index, why), or None. The entries are applied in order to a copy; where the typed
    fields (``observe_typed``) differ at the end from ``base``'s, the first entry that
    changed one of them is refused naming the field (an entry may change one on the way
    that a later one sets back). An entry that cannot be applied is refused too."""
    if not entries:
        return None
    trial = ET.fromstring(ET.tostring(base))
    before = observe_typed(trial)
    now = before
    changed: list[set[str]] = []
    for i, edit in enumerate(entries):
        try:
            _apply_one(trial, edit)
        except ValueError as exc:  # numbered as in the manifest (apply would say xml[0])
            return i, f"xml[{i}] ({edit.xpath}): {exc}"
        after = observe_typed(trial)
        changed.append({k for k in set(now) | set(after) if now.get(k) != after.get(k)})
        now = after
    differ = {k for k in set(before) | set(now) if before.get(k) != now.get(k)}
    for i, keys in enumerate(changed):
        touched = sorted({k.split("[", 1)[0] for k in keys & differ})
        if touched:
            return i, (f"xml[{i}] ({entries[i].xpath}) changes what the typed field"
                       f"{'s' if len(touched) > 1 else ''} {', '.join(touched)} "
                       "manage(s); the typed fields win: set "
                       f"{' / '.join(touched)} in the manifest instead")  # fmt: skip
    return None


def invalid(composed: Element, entries: Sequence[Edit], base: Element | None,
            schema_file: str) -> tuple[int, str] | None:  # fmt: skip
    """Whether ``composed`` (typed fields and ``entries``) is invalid against libvirt's
    RelaxNG ``schema_file``, as (the index of the first entry that makes it so, the
    schema's message), or None. Not blamed on the entries when ``base`` (the definition
    without them, not changed) is invalid already, or where the schema is missing."""
    if not entries:
        return None
    schema = libvirt_schema(schema_file)
    if schema is None:
        return None
    why = schema_errors(composed, schema)
    if why is None or base is None:
        return None
    root = ET.fromstring(ET.tostring(base))
    if schema_errors(root, schema) is not None:
        return None
    for i, edit in enumerate(entries):
        apply(root, (edit,))
        found = schema_errors(root, schema)
        if found is not None:
            return i, _schema_says(found, schema_file)
    return len(entries) - 1, _schema_says(why, schema_file)


def _schema_says(why: str, schema_file: str) -> str:
    """libvirt's schema message (libxml2's: it names the parent, as in "Extra element
    devices in interleave"), with what to check."""
    return (f"libvirt's schema ({Path(schema_file).name}) refuses the definition with "
            f"this entry ({why}); check the element and attribute names and values "
            "against libvirt's format documentation (formatdomain, formatnetwork, "
            "formatstorage)")  # fmt: skip


# --- libvirt's schema ------------------------------------------------------------


@functools.cache
def libvirt_schema(path: str = LIBVIRT_DOMAIN_RNG) -> ET.RelaxNG | None:
    """libvirt's domain RelaxNG schema (loaded once), or None where it is not installed
    (a host without libvirt's schemas: the edits are then checked by libvirt at define)."""
    if not Path(path).is_file():
        return None
    try:
        return ET.RelaxNG(file=path)
    except (ET.RelaxNGParseError, OSError):
        return None


def schema_errors(root: Element, schema: ET.RelaxNG | None = None) -> str | None:
    """Why ``root`` (a composed domain definition) is not valid against libvirt's domain
    schema (its first error, with the line libvirt's schema names), or None."""
    schema = schema if schema is not None else libvirt_schema()
    if schema is None or schema.validate(root):
        return None
    errors = [e for e in schema.error_log if e.message]
    return errors[0].message if errors else "not valid against libvirt's domain schema"
