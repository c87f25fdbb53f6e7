"""Export: live libvirt objects -> manifest documents, so a host built by hand can be adopted.

What arrives: an ``Observed`` snapshot (observe.py, the very snapshot ``plan``
compares with) and the names to export. What leaves: one ``Exported`` per
object, holding a manifest document (``apiVersion``, ``kind``, ``metadata``,
``spec`` with ``adopt: true``) and the *notes*: every field libvirt has that
the document does not say, so the operator knows where the export is lossy.

No second XML parser: a document is built from the projections of the
per-format field tables (``reconciler.xml.*.observe``), the same flat fields
the planner compares. Two checks then find what the manifest format cannot
carry, and each becomes a note instead of being dropped silently:

* **the planner's own comparison**: the document is validated (schema and
  model, as ``validate`` does), projected with the context ``plan`` uses, and
  compared with the observed projection. Any field that differs would show in
  a plan beside the adoption; it is a note (``graphics.listen: libvirt has
  (none), the manifest gives 127.0.0.1``).
* **the XML the tool would define**: the document is rendered (what ``apply``
  defines) and every element and attribute of libvirt's definition missing
  from it, apart from what libvirt adds on its own (addresses, aliases,
  controllers, the emulator...), is a note (``devices/channel[unix]``).

Pure: no I/O, no libvirt.


One file per kind, as ``reconciler/xml/`` is: ``pool.py``, ``volume.py``,
``network.py``, ``vm.py`` export one object of their kind; ``kept.py`` what a
redefine keeps (the definition against the rendered manifest); ``notes.py`` the
values returned, the note machinery and the checks every kind shares;
``selection.py`` which objects to export; ``output.py`` YAML, JSON and file
names. This module holds ``export`` and re-exports the public names of the others.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.export.kept import kept_in_definition
from reconciler.export.network import export_network, network_spec
from reconciler.export.notes import Context, Exported, Kept, Note, document
from reconciler.export.output import (
    KEPT_HEADING,
    NOTES_HEADING,
    file_name,
    kept_lines,
    to_json,
    to_yaml,
)
from reconciler.export.pool import export_pool, pool_spec
from reconciler.export.selection import STOCK, Ref, SelectionError, resolve, select
from reconciler.export.vm import export_vm, vm_spec
from reconciler.export.volume import export_volume, volume_spec
from reconciler.model import Kind
from reconciler.snapshot import Observed
from reconciler.xml._fields import ParseError

__all__ = [
    "KEPT_HEADING",
    "NOTES_HEADING",
    "STOCK",
    "Context",
    "Exported",
    "Kept",
    "Note",
    "Ref",
    "SelectionError",
    "document",
    "export",
    "export_network",
    "export_pool",
    "export_vm",
    "export_volume",
    "file_name",
    "kept_in_definition",
    "kept_lines",
    "network_spec",
    "pool_spec",
    "resolve",
    "select",
    "to_json",
    "to_yaml",
    "vm_spec",
    "volume_spec",
]


def export(observed: Observed, refs: Iterable[Ref]) -> list[Exported]:
    """One ``Exported`` per ref (in the order given): volumes first, for the VMs' context."""
    refs = list(dict.fromkeys(refs))
    volumes: dict[Ref, Exported] = {}
    base_ctx = Context.make(observed)
    names: dict[str, str] = {}
    for ref in refs:
        if ref.kind is Kind.VOLUME and ref.pool is not None:
            exported = export_volume(observed.volumes[(ref.pool, ref.name)], base_ctx)
            if exported.document is not None and ref.name in names:
                note = Note("metadata.name", "a volume of this name is exported from pool "
                            f"{names[ref.name]}; Volume names are unique in manifests")  # fmt: skip
                exported = Exported(Kind.VOLUME, ref.name, None, (*exported.notes, note), ref.pool)
            elif exported.document is not None:
                names[ref.name] = ref.pool
            volumes[ref] = exported
    ctx = Context.make(observed, volumes.values())
    out = []
    for ref in refs:
        try:
            if ref.kind is Kind.STORAGE_POOL:
                out.append(export_pool(observed.pools[ref.name]))
            elif ref.kind is Kind.VOLUME:
                out.append(volumes[ref])
            elif ref.kind is Kind.NETWORK:
                out.append(export_network(observed.networks[ref.name]))
            else:
                out.append(export_vm(observed.domains[ref.name], ctx))
        except ParseError as exc:
            # libvirt returned a definition that does not parse (seen: a raw '&' in a
            # network's <domain name=...>): that object is not exported, the rest are
            why = f"libvirt returned a definition that is not well-formed XML ({exc}); not exported"
            out.append(Exported(ref.kind, ref.name, None, (Note("definition", why),), ref.pool))
    return out
