"""hatch: what a VM's definition has beyond the typed manifest, as ``xml`` entries.

Export writes a VirtualMachine's typed fields first; whatever the definition has that
the typed manifest, rendered, does not (found by comparing the two trees, as
``kept.kept_in_definition`` does, never from a list of names) becomes entries of its
``xml`` field (the escape hatch, ``xml/edits.py``):

* an element the rendered manifest lacks: ``add`` under its parent, whole;
* an attribute it lacks or spells otherwise: ``value`` on the element's path;
* the text of a leaf element: ``value`` on the element's path;
* an element the render writes where the definition has none of its tag: ``delete``
  (each is then checked: one that would change a typed field is dropped).

Each entry is kept only if it is satisfied by the definition as it is (so applying the
export changes nothing) and changes no typed field (``domain.edit_refusal``); what is
left stays a "kept" note. So export does not care which devices are typed: whatever
the typed render does not produce goes here. Pure.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

from lxml import etree as ET

from reconciler.export.kept import _KEPT_SILENT, _counterpart, _ignored, _noted
from reconciler.export.notes import _Notes
from reconciler.model import NetworkSpec, VirtualMachineSpec, XmlEdit
from reconciler.xml import domain as domain_xml
from reconciler.xml import edits
from reconciler.xml import network as network_xml
from reconciler.xml._fields import Element, parse

# identities of the devices a manifest keys, as path predicates
_IDENTITY = {"disk": "target/@dev", "interface": "mac/@address"}
_QUALIFIERS = ("dev", "name", "type", "id", "model", "index", "port", "bus")


def _quote(value: str) -> str | None:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _step(child: Element, parent: Element) -> str:
    """A path step that selects ``child`` among ``parent``'s children alone: a disk or NIC
    by its identity (target, MAC) always, so the entry goes with that device; else its
    tag when it is the only one, else attributes that tell it apart, else its position
    among the elements with its tag."""
    tag = str(child.tag)
    same = [c for c in parent if c.tag == child.tag]
    ident = _IDENTITY.get(tag) if parent.tag == "devices" else None
    if ident is not None:  # even when alone: the entry goes with that disk, not the first
        where, _, attr = ident.partition("/@")
        found = child.find(where)
        value = None if found is None else found.get(attr)
        quoted = None if value is None else _quote(value)
        if quoted is not None:
            return f"{tag}[{ident}={quoted}]"
    if len(same) == 1:
        return tag
    preds: list[str] = []
    chosen: list[tuple[str, str]] = []
    for attr in _QUALIFIERS:
        value = child.get(attr)
        quoted = None if value is None else _quote(value)
        if quoted is None or value is None:
            continue
        preds.append(f"[@{attr}={quoted}]")
        chosen.append((attr, value))
        if sum(1 for c in same if all(c.get(a) == v for a, v in chosen)) == 1:
            return tag + "".join(preds)
    return f"{tag}[{next(i for i, c in enumerate(same, 1) if c is child)}]"


def _fragment(element: Element) -> str:
    """``element`` as one line of XML (whitespace between elements dropped)."""
    mine = copy.deepcopy(element)
    for node in mine.iter():
        if not isinstance(node.tag, str):
            continue
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
    ET.cleanup_namespaces(mine)
    return ET.tostring(mine, encoding="unicode", with_tail=False)


def _walk(live: Element, mine: Element, path: str, bare: str, out: list[dict[str, Any]],
          devices: bool = False, silent: tuple[str, ...] = _KEPT_SILENT) -> None:  # fmt: skip
    for key, value in live.attrib.items():
        attr = str(key)
        where = f"{bare}@{attr}" if bare else f"@{attr}"
        if attr.startswith("{") or mine.get(attr) == value or _ignored(where, silent):
            continue
        out.append({"xpath": f"{path}/@{attr}", "value": str(value)})
    text = (live.text or "").strip()
    if len(live) == 0 and text and text != (mine.text or "").strip() and not _ignored(
            bare, silent):  # fmt: skip
        out.append({"xpath": path, "value": live.text or ""})
    taken: list[Element] = []
    for child in live:
        if not isinstance(child.tag, str) or str(child.tag).startswith("{"):
            continue
        child_bare = f"{bare}/{child.tag}" if bare else str(child.tag)
        if _ignored(child_bare, silent) or (
                devices and child.tag == "input" and child.get("bus") == "ps2"):  # fmt: skip
            continue
        other = _counterpart(child, live, mine, taken)
        if other is None:
            out.append({"xpath": path, "add": _fragment(child)})
            continue
        taken.append(other)
        step = _step(child, live)
        _walk(child, other, f"./{step}" if path == "." else f"{path}/{step}", child_bare, out,
              silent=silent)  # fmt: skip
    _deletes(live, mine, path, bare, out, silent)
    for key in mine.attrib:  # an attribute the render writes that the definition lacks
        attr = str(key)
        if re.search(r"\[[0-9]+\]", path):
            break  # a place by position is not the same element in both trees
        if attr not in live.attrib and not attr.startswith("{") and not _ignored(
                f"{bare}@{attr}" if bare else f"@{attr}", silent):  # fmt: skip
            out.append({"xpath": f"{path}/@{attr}", "delete": True})


def _deletes(live: Element, mine: Element, path: str, bare: str,
             out: list[dict[str, Any]],
             silent: tuple[str, ...] = _KEPT_SILENT) -> None:  # fmt: skip
    """``delete`` entries for the elements the render writes under ``mine`` that have no
    element of their tag under ``live`` at all (``<features><apic/>``, a ``<features>``
    the definition lacks): the path names them all, and none of the definition's."""
    have = {c.tag for c in live}
    for tag in dict.fromkeys(c.tag for c in mine if isinstance(c.tag, str)):
        where = f"{bare}/{tag}" if bare else str(tag)
        if tag not in have and not _ignored(where, silent):
            out.append({"xpath": f"./{tag}" if path == "." else f"{path}/{tag}",
                        "delete": True})  # fmt: skip


_CPU_BOOKKEEPING = ("cpu@check", "cpu@match", "cpu/model@fallback")


def _cpu_silent(live: Element, mine: Element) -> tuple[str, ...]:
    """What the walk of ``<cpu>`` leaves out: libvirt's bookkeeping (check, match,
    fallback) too, unless the CPU model itself goes through the hatch (the typed render
    writes a ``<cpu>`` for NUMA cells but no model): then the model's entry needs them,
    or the typed ``cpu`` field would read the qemu64 model libvirt adds to a
    ``type='qemu'`` domain (``domain.read_cpu``: none, with them) as a model named."""
    if live.find("model") is not None and mine.find("model") is None:
        return tuple(p for p in _KEPT_SILENT if p not in _CPU_BOOKKEEPING)
    return _KEPT_SILENT


def candidates(config_xml: str, rendered: str, notes: _Notes) -> list[dict[str, Any]]:
    """Every ``xml`` entry (as a manifest writes it) that would make the rendered manifest
    (``rendered``, without ``xml``) say what the definition ``config_xml`` has, before the
    checks of ``entries``. Devices a note covers are left to their note."""
    live, mine = parse(config_xml), parse(rendered)
    out: list[dict[str, Any]] = []
    taken: list[Element] = []
    for element in live:
        if not isinstance(element.tag, str):
            continue
        tag = str(element.tag)
        if tag == "metadata":  # other tools' records, whole; never ours
            for record in element:
                if isinstance(record.tag, str) and not str(record.tag).startswith(
                        "{" + domain_xml.OWNER_NAMESPACE + "}"):  # fmt: skip
                    out.append({"xpath": "./metadata", "add": _fragment(record)})
            continue
        if _ignored(tag, _KEPT_SILENT) or (tag == "cpu" and notes.covers("cpu")):
            continue
        other = _counterpart(element, live, mine, taken)
        if other is None:
            out.append({"xpath": ".", "add": _fragment(element)})
            continue
        taken.append(other)
        if tag != "devices":
            _walk(element, other, f"./{_step(element, live)}", tag, out,
                  silent=_cpu_silent(element, other) if tag == "cpu" else _KEPT_SILENT)
            continue
        done: list[Element] = []
        for device in element:
            if not isinstance(device.tag, str) or _ignored(f"devices/{device.tag}",
                                                           _KEPT_SILENT):  # fmt: skip
                continue
            if device.tag == "input" and device.get("bus") == "ps2":
                continue
            counterpart = _counterpart(device, element, other, done)
            if counterpart is not None:
                done.append(counterpart)
                _walk(device, counterpart, f"./devices/{_step(device, element)}",
                      f"devices/{device.tag}", out)  # fmt: skip
            elif not _noted(device, notes):
                out.append({"xpath": "./devices", "add": _fragment(device)})
    _deletes(live, mine, ".", "", out)
    return out


def _edit(entry: dict[str, Any]) -> XmlEdit:
    return XmlEdit(xpath=entry["xpath"], value=entry.get("value"), add=entry.get("add"),
                   delete=bool(entry.get("delete", False)))  # fmt: skip


def entries(config_xml: str, rendered: str, spec: VirtualMachineSpec,
            notes: _Notes) -> list[dict[str, Any]]:  # fmt: skip
    """The ``xml`` entries export writes for a VM (``candidates``), each kept only when
    it is a valid entry, is satisfied by the definition as it is (applying the exported
    manifest changes nothing), and changes no typed field (``domain.edit_refusal``), of
    the definition nor, all entries together, of ``rendered`` (a VM created from the
    manifest: the plan would refuse it)."""
    return _checked(candidates(config_xml, rendered, notes), spec, parse(config_xml),
                    rendered, domain_xml.edit_refusal)  # fmt: skip


def network_entries(config_xml: str, rendered: str, spec: NetworkSpec,
                    silent: tuple[str, ...]) -> list[dict[str, Any]]:  # fmt: skip
    """The ``xml`` entries export writes for a network (formatnetwork): the same tree
    comparison from ``<network>`` down (``silent``: what is never written), other
    tools' ``<metadata>`` whole; each checked as ``entries`` checks a VM's."""
    live, mine = parse(config_xml), parse(rendered)
    found: list[dict[str, Any]] = []
    for record in live.findall("metadata/*"):
        if isinstance(record.tag, str) and not str(record.tag).startswith(
                "{" + network_xml.OWNER_NAMESPACE + "}"):  # fmt: skip
            found.append({"xpath": "./metadata", "add": _fragment(record)})
    _walk(live, mine, ".", "", found, silent=(*silent, "metadata"))
    return _checked(found, spec, live, rendered, network_xml.edit_refusal)


_Spec = TypeVar("_Spec", VirtualMachineSpec, NetworkSpec)


def _checked(
    found: list[dict[str, Any]], spec: _Spec, base: Element, rendered: str,
    refusal: Callable[[_Spec, str | Element], tuple[int, str] | None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Of ``found``, the entries that are valid, are each satisfied by ``base`` (the
    definition as it is: applying the exported manifest changes nothing) and change no
    typed field of it (``refusal``: the kind's ``edit_refusal``); then, all together,
    none that changes a typed field of ``rendered`` (an object created from the
    manifest: the plan would refuse it), the one at fault dropped each round."""
    out = []
    for entry in found:
        edit = _edit(entry)
        if edits.problem(edit) is not None:
            continue
        one = dataclasses.replace(spec, xml=(edit,))
        if edits.observe(base, one.xml) != edits.project(one.xml):
            continue
        if refusal(one, base) is not None:
            continue
        out.append(entry)
    for _ in range(len(out)):
        wrong = refusal(dataclasses.replace(spec, xml=tuple(_edit(e) for e in out)), rendered)
        if wrong is None:
            break
        del out[wrong[0]]
    return out
