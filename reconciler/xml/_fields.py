"""Field declarations shared by the per-kind XML modules: one place, both directions.

A ``Field`` names a manifest field (its projection key, e.g. ``"maxMemory"``),
says how to get its desired value from a spec, and where it lives in libvirt
XML (a ``Place``: an attribute, an element's text, a flag element, a list of
elements, or a small custom place). From that one declaration the kind
modules derive all three directions:

* render:  spec -> value -> ``place.write(root, value)``
* project: spec -> value -> ``place.canon(value)`` (the form reading it back gives)
* observe: live XML -> ``place.read(root)``

so render, project and observe cannot disagree. ``Device`` does the same for
repeated devices (disks, NICs, DHCP hosts), keyed by identity, never position:
``disks[web-data].bus``.

A redefinition patches the current definition instead of rendering a new one
(``Place.clear`` removes what ``write`` writes, ``Device.patch`` keeps each
device's element, so its ``<address>``, ``<alias>`` and everything the manifest
does not manage stay as they are).

Pure: no I/O, no libvirt. Values are written as lxml attributes and text, never
by string formatting, so the serializer escapes every one; text that XML 1.0
cannot carry at all (NUL, most control characters) is refused. lxml, not
xml.etree: it keeps foreign namespace prefixes (``libosinfo:``) as written, and
its parser here resolves no entities and fetches nothing (docs/decisions.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from lxml import etree as ET

from reconciler.xml.chars import NOT_XML

Element: TypeAlias = ET._Element
Projection: TypeAlias = dict[str, object]
"""Flat, canonical view of an object's fields: field path -> value (None: absent)."""

T = TypeVar("T")

_NOT_XML = NOT_XML  # what XML 1.0 cannot hold (chars.py: shared with the loader)


def xml_text(value: str, what: str = "value") -> str:
    """Return ``value`` if XML can carry it, else raise ValueError (never silently drop)."""
    bad = _NOT_XML.search(value)
    if bad is not None:
        raise ValueError(f"{what} contains a character XML cannot hold: {bad.group()!r}")
    return value


# --- codecs: canonical value <-> XML string --------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """How a canonical value is spelled in XML, and read back."""

    dump: Callable[[Any], str]
    load: Callable[[str], Any]


def _load_yes_no(text: str) -> bool:
    return text.strip().lower() in ("yes", "on", "true", "1")


STR = Codec(dump=str, load=str)
INT = Codec(dump=str, load=lambda text: int(text.strip()))
YES_NO = Codec(dump=lambda value: "yes" if value else "no", load=_load_yes_no)
MAC = Codec(dump=lambda value: str(value).lower(), load=lambda text: text.strip().lower())
KIB = Codec(dump=lambda value: str(int(value) // 1024), load=lambda text: int(text.strip()) * 1024)
"""Bytes in the model, KiB in libvirt (which always writes memory as unit='KiB')."""


# --- element paths -----------------------------------------------------------

# One step of a path: a tag, optionally with [@attr='value'] predicates. A predicate
# [@attr?='value'] also matches an element without that attribute (libvirt's default:
# <ip> without family is IPv4), and is not written when the step is created.
_STEP = re.compile(r"^([A-Za-z_][\w.-]*)((?:\[@[\w.-]+\??='[^']*'\])*)$")
_PREDICATE = re.compile(r"\[@([\w.-]+)(\??)='([^']*)'\]")


@dataclass(frozen=True, slots=True)
class _Step:
    tag: str
    attrs: dict[str, str]  # written when the step is created, and matched
    defaults: dict[str, str]  # matched when present (absent: the default)
    path: str  # the step as ElementPath, without the defaulted predicates

    def matches(self, element: Element) -> bool:
        return all(element.get(k) in (None, v) for k, v in self.defaults.items())


@functools.cache
def _steps(path: str) -> tuple[_Step, ...]:
    """The steps of ``path``. Paths come from the field tables, so each is parsed once."""
    steps = []
    for step in path.split("/"):
        match = _STEP.match(step)
        if match is None:
            raise ValueError(f"unsupported path step {step!r} in {path!r}")
        attrs: dict[str, str] = {}
        defaults: dict[str, str] = {}
        for name, optional, value in _PREDICATE.findall(match.group(2)):
            (defaults if optional else attrs)[name] = value
        tag = match.group(1)
        steps.append(_Step(tag, attrs, defaults,
                           tag + "".join(f"[@{k}='{v}']" for k, v in attrs.items())))  # fmt: skip
    return tuple(steps)


@functools.cache
def _plain(path: str) -> bool:
    return "?=" not in path


def findall(root: Element, path: str) -> list[Element]:
    """Every element at ``path`` below ``root``, in document order (``""``: root)."""
    if not path:
        return [root]
    if _plain(path):
        return list(root.findall(path))
    nodes = [root]
    for step in _steps(path):
        nodes = [c for n in nodes for c in n.findall(step.path) if step.matches(c)]
    return nodes


def find(root: Element, path: str) -> Element | None:
    """The first element at ``path`` below ``root`` (``""``: root itself)."""
    if not path:
        return root
    if _plain(path):
        return root.find(path)
    found = findall(root, path)
    return found[0] if found else None


def ensure(root: Element, path: str) -> Element:
    """The element at ``path``, creating missing steps (with their predicate attributes,
    not the defaulted ones)."""
    node = root
    if not path:
        return node
    for step in _steps(path):
        child = next((c for c in node.findall(step.path) if step.matches(c)), None)
        if child is None:
            child = ET.SubElement(node, step.tag, dict(step.attrs))
        node = child
    return node


def reorder(parent: Element, order: Sequence[str]) -> None:
    """Sort ``parent``'s children into libvirt's usual order (stable; unknown tags last)."""
    rank = {tag: i for i, tag in enumerate(order)}
    children = sorted(parent, key=lambda child: rank.get(child.tag, len(order)))
    parent[:] = children


def remove(element: Element) -> None:
    """Take ``element`` out of its parent, keeping the text that followed it."""
    parent = element.getparent()
    if parent is None:
        return
    if element.tail and element.tail.strip():
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def beside(
    element: Element, kind: Callable[[Element], bool] | None = None, *, ahead: bool = False
) -> None:
    """Move ``element`` (just appended) after the last sibling with its tag, so a
    device added to a definition stands with its kind (libvirt orders them anyway).
    With ``kind``: after the last such sibling ``kind`` accepts, or, when none does,
    before the first sibling with its tag if ``ahead``, else after the last. A new
    ``<disk device='disk'>`` goes after the last disk, before the CD-ROMs: the document
    order of disks is the order libvirt lists them in, and a disk re-added on a running
    VM must not drift behind the CD-ROMs (formatdomain.html#bios-bootloader)."""
    parent = element.getparent()
    if parent is None:
        return
    same = [c for c in parent if c.tag == element.tag and c is not element]
    if kind is not None:
        mine = [c for c in same if kind(c)]
        if mine:
            mine[-1].addnext(element)
        elif same and ahead:
            same[0].addprevious(element)
        elif same:
            same[-1].addnext(element)
        return
    if same:
        same[-1].addnext(element)


def drop_attr(element: Element, name: str) -> None:
    """Remove attribute ``name`` of ``element`` if it has one."""
    if name in element.attrib:
        del element.attrib[name]


def _remove_at(root: Element, path: str) -> None:
    if not path:
        return
    for element in findall(root, path):
        remove(element)


def _set_fixed(element: Element, fixed: Mapping[str, str]) -> None:
    for key, value in fixed.items():
        element.set(key, value)


# --- places: where a value lives -------------------------------------------


class Place(Protocol):
    """Where one value lives in the XML. ``None`` means absent in both directions.

    ``clear`` removes what ``write`` writes (and nothing else), so a redefinition
    can change one value of an existing definition: clear, then write."""

    def write(self, root: Element, value: Any) -> None: ...

    def clear(self, root: Element) -> None: ...

    def read(self, root: Element) -> object: ...

    def canon(self, value: Any) -> object: ...


@dataclass(frozen=True, slots=True)
class Attr:
    """An attribute ``name`` of the element at ``path``; ``fixed`` attributes go with it."""

    path: str
    name: str
    codec: Codec = STR
    fixed: Mapping[str, str] | None = None

    def write(self, root: Element, value: Any) -> None:
        element = ensure(root, self.path)
        _set_fixed(element, self.fixed or {})
        element.set(self.name, xml_text(self.codec.dump(value), self.name))

    def clear(self, root: Element) -> None:
        element = find(root, self.path)
        if element is None:
            return
        drop_attr(element, self.name)
        if not self.path:
            return
        # an element left with only the attributes that select or go with it is gone
        last = _steps(self.path)[-1]
        kept = {**last.attrs, **last.defaults, **(self.fixed or {})}
        if (
            len(element) == 0
            and not (element.text or "").strip()
            and all(kept.get(str(k)) == v for k, v in element.attrib.items())
        ):
            remove(element)

    def read(self, root: Element) -> object:
        element = find(root, self.path)
        text = None if element is None else element.get(self.name)
        return None if text is None else self.codec.load(text)

    def canon(self, value: Any) -> object:
        return self.codec.load(self.codec.dump(value))


@dataclass(frozen=True, slots=True)
class Text:
    """The text of the element at ``path``; ``fixed`` attributes go on that element."""

    path: str
    codec: Codec = STR
    fixed: Mapping[str, str] | None = None

    def write(self, root: Element, value: Any) -> None:
        element = ensure(root, self.path)
        _set_fixed(element, self.fixed or {})
        element.text = xml_text(self.codec.dump(value), self.path)

    def clear(self, root: Element) -> None:
        _remove_at(root, self.path)

    def read(self, root: Element) -> object:
        element = find(root, self.path)
        if element is None:
            return None
        return self.codec.load(element.text or "")

    def canon(self, value: Any) -> object:
        return self.codec.load(self.codec.dump(value))


@dataclass(frozen=True, slots=True)
class Flag:
    """An empty element whose presence means True (``<readonly/>``)."""

    path: str

    def write(self, root: Element, value: Any) -> None:
        if value:
            ensure(root, self.path)

    def clear(self, root: Element) -> None:
        _remove_at(root, self.path)

    def read(self, root: Element) -> object:
        return find(root, self.path) is not None

    def canon(self, value: Any) -> object:
        return bool(value)


@dataclass(frozen=True, slots=True)
class Each:
    """A tuple of values, one element ``tag`` each under ``parent`` (``<boot dev=/>``...).

    ``attr`` None: the element's text holds the value. ``fixed`` attributes are
    written on each element and select them when reading (``bus='usb'``).
    """

    parent: str
    tag: str
    attr: str | None = None
    codec: Codec = STR
    fixed: Mapping[str, str] | None = None

    def write(self, root: Element, value: Any) -> None:
        if not value:
            return
        parent = ensure(root, self.parent)
        for item in value:
            text = xml_text(self.codec.dump(item), self.tag)
            attrs = {} if self.attr is None else {self.attr: text}
            element = ET.SubElement(parent, self.tag, {**attrs, **(self.fixed or {})})
            if self.attr is None:
                element.text = text

    def clear(self, root: Element) -> None:
        parent = find(root, self.parent)
        if parent is None:
            return
        for element in list(parent.findall(self.tag)):
            if all(element.get(k) == v for k, v in (self.fixed or {}).items()):
                remove(element)

    def read(self, root: Element) -> object:
        parent = find(root, self.parent)
        if parent is None:
            return ()
        values = []
        for element in parent.findall(self.tag):
            if any(element.get(k) != v for k, v in (self.fixed or {}).items()):
                continue
            text = (element.text or "") if self.attr is None else element.get(self.attr)
            if text is not None:
                values.append(self.codec.load(text))
        return tuple(values)

    def canon(self, value: Any) -> object:
        return tuple(self.codec.load(self.codec.dump(item)) for item in value or ())


# --- fields -----------------------------------------------------------------


class _Kept:
    """The desired value of a field the manifest does not name, where a manifest that
    does not name it keeps what the definition has (``KEPT``)."""

    _instance: _Kept | None = None

    def __new__(cls) -> _Kept:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<kept>"

    # equal to every value: a projection with a kept field equals any observation of
    # it (``observe(xml) == project(spec)`` holds by meaning, whatever the domain has)
    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


KEPT: Any = _Kept()
"""A field's ``get`` returns ``KEPT`` when the manifest does not name the field: render
writes nothing, ``patch_fields`` leaves the definition's value, the projection holds
``KEPT`` (equal to every value) and ``diff`` sees no change (the compatibility rule of
issue 13: a field a manifest does not name is kept as the domain has it). Test it with
``is``, never ``==``."""


def _same(value: object) -> object:
    return value


class ChangeClass(StrEnum):
    """What changing a field takes (the planner classifies a change by it)."""

    LIVE = "live"  # can be applied to the running object (libvirt may still refuse)
    RESTART = "restart"  # the definition changes now, the running object at its next start
    REPLACE = "replace"  # the object is made again (a volume: its data lost)


@dataclass(frozen=True, slots=True)
class Field(Generic[T]):
    """One manifest field: its projection key, its desired value, its place in the XML,
    and what the engine needs to know about it besides.

    ``variant``: only for devices whose root ``type`` attribute has this value
    (``source@network`` only on ``<interface type='network'>``). ``fallback``:
    when the XML leaves it out, libvirt means the value of that other field
    (``<vcpu>`` without ``current`` means all of them). ``show``: how the value
    is compared and shown, applied to both sides (a secret becomes a token).

    ``change``: what changing it takes (``ChangeClass``); ``live_readable``: False
    when the running definition cannot tell the value (a balloon's current size, the
    CPU model host-model expands to), so the running object is not compared on it.
    ``default``: the manifest's value when it leaves the field out, in projection
    terms (tests pin it to the JSON Schema's and the model's); ``unit``: the unit of
    the projection's value (``bytes``) and ``rounding`` how libvirt keeps a value of
    it (``rounding.py``: what a definition read back holds). ``export``: the inverse,
    projection value -> manifest value as export writes it (``format_size`` for a
    size); None: export does not write the field as is.
    """

    path: str
    get: Callable[[T], object]
    place: Place
    variant: str | None = None
    fallback: str | None = None
    show: Callable[[object], object] = _same
    change: ChangeClass = ChangeClass.RESTART
    live_readable: bool = True
    default: object = None
    unit: str | None = None
    rounding: Callable[[int], int] | None = None
    export: Callable[[object], object] | None = _same

    def exported(self, value: object) -> object:
        """``value`` (as observed) as a manifest writes it; None when it is the default
        or the field is not exported as is (``export`` is None)."""
        if self.export is None or value is None or value == self.default:
            return None
        return self.export(value)


def change_class(fields: Iterable[Field[Any]], path: str) -> ChangeClass | None:
    """The change class of the field ``path`` (a projection key), None if no field has it."""
    for field in fields:
        if field.path == path:
            return field.change
    return None


def _wanted(field: Field[T], desired: T, variant: str | None) -> object:
    if field.variant is not None and field.variant != variant:
        return None
    return field.get(desired)


def render_fields(
    root: Element, fields: Iterable[Field[T]], desired: T, variant: str | None = None
) -> None:
    """Write every field's desired value that is not None into ``root``."""
    for field in fields:
        value = _wanted(field, desired, variant)
        if value is not None and value is not KEPT:
            field.place.write(root, value)


def patch_fields(
    root: Element,
    fields: Iterable[Field[T]],
    desired: T,
    variant: str | None = None,
    observed_variant: str | None = None,
) -> list[str]:
    """Set in ``root`` each field whose desired value differs from the one it has
    (clear that place, write the desired value); every other part of ``root`` stays
    as it is. Returns the paths of the fields changed."""
    fields = tuple(fields)
    want = project_fields(fields, desired, "", variant)
    have = observe_fields(root, fields, "", observed_variant)
    changed: list[str] = []
    # Twice at most: a field that reads as another's value when left out (``fallback``:
    # <vcpu> without ``current`` means all of them) matched only through that field;
    # once that field changed, it reads differently and is written in its own right.
    for _ in range(2):
        todo = [field for field in fields
                if want[field.path] is not KEPT and want[field.path] != have[field.path]]
        if not todo:
            break
        for field in todo:
            value = _wanted(field, desired, variant)
            if value is None or not isinstance(field.place, Attr | Text):
                field.place.clear(root)
            # an attribute or a text is set where it stands (the element keeps its place
            # and its other attributes: <memory unit='KiB' dumpCore='on'>)
            if value is not None:
                field.place.write(root, value)
            if field.path not in changed:
                changed.append(field.path)
        have = observe_fields(root, fields, "", variant)
    return changed


def project_fields(
    fields: Iterable[Field[T]], desired: T, prefix: str = "", variant: str | None = None
) -> Projection:
    """Canonical values of the fields, as reading them back from rendered XML gives them."""
    out: Projection = {}
    for field in fields:
        value = _wanted(field, desired, variant)
        if value is KEPT:
            out[prefix + field.path] = KEPT
            continue
        out[prefix + field.path] = None if value is None else field.show(field.place.canon(value))
    return out


def observe_fields(
    root: Element | None, fields: Iterable[Field[Any]], prefix: str = "", variant: str | None = None
) -> Projection:
    """Read the fields from live XML; ``root`` None reads every field as absent."""
    fields = tuple(fields)
    raw: dict[str, object] = {}
    for field in fields:
        if root is None or (field.variant is not None and field.variant != variant):
            raw[field.path] = None
        else:
            raw[field.path] = field.place.read(root)
    out: Projection = {}
    for field in fields:
        value = raw[field.path]
        if value is None and field.fallback is not None and root is not None:
            value = raw[field.fallback]
        out[prefix + field.path] = None if value is None else field.show(value)
    return out


# --- devices: repeated elements keyed by identity ---------------------------


@dataclass(frozen=True, slots=True)
class Device(Generic[T]):
    """A repeated element (``<disk device='disk'>``), keyed by identity (target, MAC).

    ``section`` is the manifest list (``disks``); ``parent``/``tag`` where the
    elements live; ``fixed`` root attributes both written and used to select
    the elements when reading (``device='disk'``). ``key`` is the identity's
    place and ``key_of`` its desired value. ``variant_of`` gives the root
    ``type`` attribute (``file``/``volume``), which gates variant fields.
    ``decorate`` adds structure that is not a field (a CD-ROM's ``<readonly/>``).
    ``order`` sorts the children like libvirt writes them.
    """

    section: str
    parent: str
    tag: str
    key: Place
    key_of: Callable[[T], object]
    fields: tuple[Field[T], ...]
    fixed: Mapping[str, str] | None = None
    variant_of: Callable[[T], str] | None = None
    decorate: Callable[[Element, T], None] | None = None
    order: tuple[str, ...] = ()
    variants: frozenset[str] | None = None
    readdress: frozenset[str] = frozenset()
    # adding or removing a whole device: LIVE (hot-plug) or RESTART; the change
    # class of a field of a device that stays is the field's own
    change: ChangeClass = ChangeClass.RESTART
    # a new element with no sibling of its set stands ahead of the others with its tag
    # (a disk before the CD-ROMs: see ``beside``)
    ahead: bool = False

    def _selects(self, element: Element) -> bool:
        return all(element.get(k) == v for k, v in (self.fixed or {}).items())

    def managed(self, element: Element) -> bool:
        """Whether ``element`` is one of this device set's (a manifest makes the set
        exact): its fixed attributes match and its ``type`` is one of ``variants``."""
        if not self._selects(element):
            return False
        return self.variants is None or element.get("type", "") in self.variants

    def _path(self, key: object) -> str:
        return f"{self.section}[{key}]."

    def render(self, root: Element, items: Iterable[T]) -> None:
        items = tuple(items)
        if not items:
            return
        parent = ensure(root, self.parent)
        for item in items:
            self._render_one(parent, item)

    def _render_one(self, parent: Element, item: T) -> Element:
        element = ET.SubElement(parent, self.tag)
        variant = None
        if self.variant_of is not None:
            variant = self.variant_of(item)
            element.set("type", variant)
        _set_fixed(element, self.fixed or {})
        self.key.write(element, self.key_of(item))
        render_fields(element, self.fields, item, variant)
        if self.decorate is not None:
            self.decorate(element, item)
        if self.order:
            reorder(element, self.order)
        return element

    def patch(self, root: Element, items: Iterable[T]) -> list[Element]:
        """Make this device set in ``root`` exactly ``items``, keeping every element
        that stays: an element whose identity is declared keeps its place, its
        ``<address>``, ``<alias>`` and whatever else the manifest does not manage, and
        gets only the fields that differ (a change of a ``readdress`` field, such as a
        disk's bus, also drops its address: the old one cannot fit). Elements of the
        set that are not declared are removed; elements outside the set (``managed``
        False) are not touched. New ones are appended without an address (libvirt
        assigns a free one). Returns the elements appended."""
        wanted = {self.key.canon(self.key_of(item)): item for item in items}
        parent = find(root, self.parent)
        seen: set[object] = set()
        for element in [] if parent is None else list(parent.findall(self.tag)):
            if not self.managed(element):
                continue
            key = self.key.read(element)
            if key is None or key in seen:
                # no identity (observe skips it), or the same one twice (one image on two
                # targets; observe sees one): no plan line could show a change, so kept
                continue
            item = wanted.get(key)
            if item is None:
                remove(element)
                continue
            seen.add(key)
            self._patch_one(element, item)
        added = []
        for key, item in wanted.items():
            if key not in seen:
                element = self._render_one(ensure(root, self.parent), item)
                beside(element, self._selects if self.fixed else None, ahead=self.ahead)
                added.append(element)
        return added

    def _patch_one(self, element: Element, item: T) -> None:
        have = element.get("type") if self.variant_of is not None else None
        variant = None if self.variant_of is None else self.variant_of(item)
        if variant is not None and variant != have:
            for field in self.fields:  # another kind of source: the old one goes
                if field.variant is not None:
                    field.place.clear(element)
            element.set("type", variant)
            have = variant
        changed = patch_fields(element, self.fields, item, variant, have)
        if self.readdress.intersection(changed):
            _remove_at(element, "address")
        if changed and self.decorate is not None:
            self.decorate(element, item)

    def project(self, items: Iterable[T]) -> Projection:
        out: Projection = {}
        for item in items:
            variant = None if self.variant_of is None else self.variant_of(item)
            key = self.key.canon(self.key_of(item))
            out.update(project_fields(self.fields, item, self._path(key), variant))
        return out

    def observe(self, root: Element) -> Projection:
        out: Projection = {}
        parent = find(root, self.parent)
        if parent is None:
            return out
        for element in parent.findall(self.tag):
            if not self.managed(element):
                continue
            key = self.key.read(element)
            if key is None:
                continue
            variant = element.get("type") if self.variant_of is not None else None
            out.update(observe_fields(element, self.fields, self._path(key), variant))
        return out

    def element(self, root: Element, key: object) -> Element | None:
        """The element whose identity is ``key`` (as the projection spells it), or None."""
        parent = find(root, self.parent)
        if parent is None:
            return None
        for element in parent.findall(self.tag):
            if not self.managed(element):
                continue
            if self.key.read(element) == key:
                return element
        return None


# --- documents --------------------------------------------------------------


# No entity expansion, no DTD, no network: a document is data, never an instruction
# to fetch or expand something (billion laughs, external entities).
_PARSER = ET.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False,
)  # fmt: skip

ParseError = ET.XMLSyntaxError


def parse(xml: str | bytes | Element) -> Element:
    """Parse an XML document from libvirt (or a fixture) into its root element.

    An element passes through, so a caller can parse once and read twice.
    Raises ``ParseError`` (lxml's XMLSyntaxError, a SyntaxError)
    on text that is not well-formed XML."""
    if isinstance(xml, str):
        xml = xml.encode()
    if isinstance(xml, bytes):
        return ET.fromstring(xml, _PARSER)
    return xml


def parse_own(xml: str | bytes | Element) -> Element:
    """``parse``, but an element is copied: a tree a patch may change without changing
    the caller's (``domain.patch``, ``network.patch``, ``pool.patch``)."""
    root = parse(xml)
    return root if isinstance(xml, (str, bytes)) else ET.fromstring(ET.tostring(root))


def serialize(root: Element) -> str:
    """Indented XML text, as golden files and ``virsh dumpxml`` show it."""
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode", with_tail=False) + "\n"
