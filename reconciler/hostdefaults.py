"""Per-host VM defaults: what this host's configuration adds under every VM manifest.

A property of the host (its KVM cannot virtualise ``arch-capabilities``; it
has no KVM at all) belongs in the host's configuration, not in every manifest
of a repository shared by a fleet. ``vmDefaults`` in ``/etc/reconciler/config.yaml``
holds such defaults (settings.py reads it into a ``VmDefaults``); this module
merges them under each VirtualMachine's own spec, the manifest winning field
by field, before the manifest is built:

* ``type``: taken when the manifest does not say ``type``.
* ``cpu``: for VMs of type kvm only (TCG emulates its CPU and has none of a
  KVM host's quirks). The manifest's mode or model wins; the default's mode
  or model is taken when the manifest names neither. ``features`` merge by
  name, the manifest's policy winning. ``migratable`` is taken when the
  manifest does not say it and the resulting mode has it. A topology is a
  VM's own and has no host default.

The result is the desired state itself: plans compare with it (no perpetual
diff), its digest covers it, and the manifest records which fields came from
the host (``Manifest.host_defaults``), so a plan can say where a value came from.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import Problem
from reconciler.manifests import LoadResult, _dotted
from reconciler.model import (
    CPU_HYPERVISOR_DEFAULT,
    CPU_MODES,
    Kind,
    Manifest,
    SpecError,
    build_manifest,
    cpu_from_manifest,
)

__all__ = ["VmDefaults", "apply_vm_defaults", "merge_vm_spec", "vm_defaults_from_config"]


@dataclass(frozen=True, slots=True)
class VmDefaults:
    """``vmDefaults`` of the host configuration. ``cpu`` is a mapping in manifest form
    (``{"mode": ..., "features": {...}}``, a string normalised to one); ``origin``
    names the file it came from, for plans and messages."""

    type: str | None = None
    cpu: Mapping[str, Any] | None = None
    origin: str = "the host configuration"

    def __bool__(self) -> bool:
        return self.type is not None or bool(self.cpu)

    def as_config(self) -> dict[str, Any]:
        """The ``vmDefaults`` mapping as the configuration file writes it."""
        out: dict[str, Any] = {} if self.type is None else {"type": self.type}
        if self.cpu:
            out["cpu"] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.cpu.items()}
        return out

    def describe(self) -> str:
        """One line for logs and ``setup-host``: ``type=qemu, cpu.features.x=disable``."""
        parts = [] if self.type is None else [f"type={self.type}"]
        for key, value in (self.cpu or {}).items():
            if key == "features":
                parts += [f"cpu.features.{n}={p}" for n, p in value.items()]
            else:
                parts.append(f"cpu.{key}={value}")
        return ", ".join(parts)


def _cpu_mapping(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        return {"mode": value} if value in CPU_MODES else {"model": value}
    assert isinstance(value, Mapping)
    return dict(value)


def vm_defaults_from_config(value: object) -> VmDefaults:
    """The ``vmDefaults`` mapping of the configuration file (already checked against
    config.schema.json) -> ``VmDefaults``. Raises ValueError for a CPU libvirt would
    refuse (a model with a mode other than custom, say)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping (e.g. {{cpu: {{features: ...}}}}), got {value!r}")
    cpu = None
    if value.get("cpu") is not None:
        cpu = _cpu_mapping(value["cpu"])
        try:  # a mode-less default applies to any manifest mode: check migratable with one
            check = cpu if "mode" in cpu or "migratable" not in cpu else \
                {**cpu, "mode": "host-passthrough"}  # fmt: skip
            cpu_from_manifest(check)
        except SpecError as exc:
            first = exc.problems[0]
            error = ValueError(f"{first.message}; {first.hint}" if first.hint else first.message)
            error.path = ("cpu", *first.path[2:])  # type: ignore[attr-defined]
            raise error from None
        if "features" in cpu:
            cpu["features"] = dict(cpu["features"])
    return VmDefaults(type=value.get("type"), cpu=cpu)


def merge_vm_spec(
    spec: Mapping[str, Any], defaults: VmDefaults
) -> tuple[dict[str, Any], list[str]]:
    """``spec`` (a VirtualMachine manifest's, as written) with ``defaults`` merged under
    it, and the dotted paths of the fields that came from the defaults."""
    merged = dict(spec)
    taken: list[str] = []
    if defaults.type is not None and "type" not in merged:
        merged["type"] = defaults.type
        taken.append("type")
    if not defaults.cpu or merged.get("type", "kvm") != "kvm":
        return merged, taken
    if merged.get("cpu") == CPU_HYPERVISOR_DEFAULT:  # no <cpu>: nothing to add to
        return merged, taken
    base = dict(defaults.cpu)
    own = _cpu_mapping(merged["cpu"]) if "cpu" in merged else {}
    cpu = dict(own)
    if "mode" not in own and "model" not in own:
        for key in ("mode", "model"):
            if key in base:
                cpu[key] = base[key]
                taken.append(f"cpu.{key}")
    features = dict(own.get("features", {}))
    for name, policy in base.get("features", {}).items():
        if name not in features:
            features[name] = policy
            taken.append(f"cpu.features.{name}")
    if features:
        cpu["features"] = features
    mode = cpu.get("mode", "custom" if "model" in cpu else "host-model")
    if "migratable" in base and "migratable" not in own and mode in ("host-passthrough", "maximum"):
        cpu["migratable"] = base["migratable"]
        taken.append("cpu.migratable")
    if taken and any(t.startswith("cpu") for t in taken):
        merged["cpu"] = cpu
    return merged, taken


def apply_vm_defaults(load: LoadResult, defaults: VmDefaults) -> LoadResult:
    """``load`` with ``defaults`` merged under every VirtualMachine manifest. A VM whose
    merged spec is not valid (a default the manifest cannot take) is dropped with a
    problem naming both the field and the configuration file."""
    if not defaults:
        return load
    manifests: list[Manifest] = []
    problems: list[Problem] = list(load.problems)
    for m in load.manifests:
        if m.kind is not Kind.VIRTUAL_MACHINE:
            manifests.append(m)
            continue
        spec, taken = merge_vm_spec(m.document["spec"], defaults)
        if not taken:
            manifests.append(m)
            continue
        document = {**m.document, "spec": spec}
        try:
            built = build_manifest(document, m.source, m.locator)
        except SpecError as exc:
            for p in exc.problems:
                problems.append(
                    Problem(
                        m.position(p.path),
                        p.message,
                        _dotted(p.path),
                        f"{p.hint + '; ' if p.hint else ''}"
                        f"{', '.join(taken)} came from vmDefaults in {defaults.origin}",
                    )
                )
            continue
        manifests.append(dataclasses.replace(
            built, host_defaults=tuple(taken), host_defaults_origin=defaults.origin))
    return dataclasses.replace(load, manifests=tuple(manifests), problems=tuple(problems))
