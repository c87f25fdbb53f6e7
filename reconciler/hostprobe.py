"""Probe what VMs this host can start, and the vmDefaults that make them start.

Nested KVM differs from host to host: on AMD hosts running KVM inside a VM,
every ``kvm`` domain whose CPU has ``arch-capabilities`` (IA32_ARCH_CAPABILITIES,
MSR 0x10a) dies at start with ``failed to set MSR 0x10a``; a host without
``/dev/kvm`` runs only ``type: qemu`` (TCG). ``probe`` finds out by starting a
throwaway domain (a unique name, 32 MiB, no disks, no NICs; transient and
started with libvirt's autodestroy, so it is gone when destroyed, and even if
this process is killed, when its connection closes) made by the product's own
path (manifest -> host defaults -> ``domain_xml.render``), trying each
candidate in ``CANDIDATES`` until one starts. The first that starts is this
host's ``VmDefaults`` (empty when plain ``kvm`` starts). ``scripts/setup-host.sh``
writes it into the configuration (``write_config``), and the test suite probes
once per run the same way.

It touches nothing but the throwaway domain, which never outlives the probe.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.atomicfile import write_atomically
from reconciler.errors import HypervisorError, SourcePosition
from reconciler.hostdefaults import VmDefaults, merge_vm_spec
from reconciler.hypervisor import Hypervisor
from reconciler.model import VirtualMachineSpec, build_manifest
from reconciler.xml import domain as domain_xml

ARCH_CAPABILITIES = {"features": {"arch-capabilities": "disable"}}
# In order: kvm as it is; kvm without arch-capabilities (AMD under nested KVM);
# the same with the host CPU passed through; TCG.
CANDIDATES: tuple[VmDefaults, ...] = (
    VmDefaults(),
    VmDefaults(cpu=ARCH_CAPABILITIES),
    VmDefaults(cpu={"mode": "host-passthrough", **ARCH_CAPABILITIES}),
    VmDefaults(type="qemu"),
)
SETTLE = 1.0  # seconds a started domain must stay running to count as started
QEMU_LOG_DIR = "/var/log/libvirt/qemu"  # where libvirt logs each domain (its error is kept)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One candidate tried: ``error`` None when the domain started and kept running."""

    defaults: VmDefaults
    error: str | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe found. ``defaults``: the first candidate that started (None: not
    even ``type: qemu`` starts, libvirt cannot run guests here). ``kvm``: /dev/kvm
    exists. ``attempts``: every candidate tried, in order."""

    defaults: VmDefaults | None
    kvm: bool
    attempts: tuple[Attempt, ...]

    @property
    def kvm_usable(self) -> bool:
        return self.defaults is not None and self.defaults.type != "qemu"

    def summary(self) -> str:
        """One line for a person: what runs here and which defaults that takes."""
        first = self.attempts[0].error if self.attempts else None
        if self.defaults is None:
            last = self.attempts[-1].error if self.attempts else "nothing tried"
            return f"no VM starts on this host, not even type: qemu ({last})"
        if not self.kvm:
            return "no /dev/kvm: only type: qemu (emulation) can run; vmDefaults type: qemu"
        if self.defaults.type == "qemu":
            return (f"type: kvm guests do not start here ({first}); only type: qemu can run;"
                    " vmDefaults type: qemu")  # fmt: skip
        if not self.defaults:
            return "type: kvm guests start as they are; no vmDefaults needed"
        return (f"type: kvm guests start only with {self.defaults.describe()}"
                f" (without: {first})")  # fmt: skip


def _spec(defaults: VmDefaults) -> VirtualMachineSpec:
    raw: dict[str, Any] = {"memory": "32MiB", "serial": "none"}
    merged, _ = merge_vm_spec(raw, defaults)
    document = {"apiVersion": "reconciler/v1", "kind": "VirtualMachine",
                "metadata": {"name": "probe"}, "spec": merged}  # fmt: skip
    spec = build_manifest(document, SourcePosition("<probe>")).spec
    assert isinstance(spec, VirtualMachineSpec)
    return spec


def try_start(hv: Hypervisor, name: str, defaults: VmDefaults) -> str | None:
    """Start and destroy throwaway domain ``name`` with ``defaults``; None if it started and
    kept running for ``SETTLE`` seconds, else libvirt's or QEMU's error text."""
    xml = domain_xml.render(name, _spec(defaults))
    try:
        hv.start_throwaway_domain(xml)
        time.sleep(SETTLE)
        if not hv.domain_active(name):
            return "the domain stopped right after it started"
        return None
    except HypervisorError as exc:
        return str(exc)
    finally:
        with contextlib.suppress(HypervisorError):
            hv.destroy_domain(name)  # transient: gone once destroyed
        if not urlsplit(getattr(hv, "uri", "")).netloc:  # local: no litter in libvirt's logs
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(QEMU_LOG_DIR, f"{name}.log"))


def probe(
    hv: Hypervisor,
    *,
    prefix: str = "reconciler-probe-",
    kvm_present: Callable[[], bool] = lambda: os.path.exists("/dev/kvm"),
) -> ProbeResult:
    """Try ``CANDIDATES`` in order on throwaway domains named ``prefix`` + random hex.
    Without /dev/kvm only ``type: qemu`` is tried. Raises ``ConnectionLost`` when
    libvirt cannot be reached."""
    kvm = kvm_present()
    attempts: list[Attempt] = []
    for candidate in CANDIDATES if kvm else CANDIDATES[-1:]:
        error = try_start(hv, prefix + secrets.token_hex(4), candidate)
        attempts.append(Attempt(candidate, error))
        if error is None:
            return ProbeResult(candidate, kvm, tuple(attempts))
    return ProbeResult(None, kvm, tuple(attempts))


# --- the configuration file ---------------------------------------------------------

MAX_CONFIG = 1024 * 1024  # bytes: a configuration file larger than this is not edited


class ConfigNotWritten(ValueError):
    """The configuration file cannot take the vmDefaults safely; the message says why and
    what to add by hand."""


def defaults_yaml(defaults: VmDefaults) -> str:
    """``vmDefaults`` as a YAML block for the configuration file."""
    import yaml

    return yaml.safe_dump({"vmDefaults": defaults.as_config()}, sort_keys=False)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(re.sub(r"[\x00-\x1f\x7f]+", " ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _read_regular(path: Path) -> tuple[str, os.stat_result] | None:
    """The text of the regular file ``path`` and its stat, None when it does not exist.
    Never follows a symlink, never blocks on a FIFO, never reads a device."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ConfigNotWritten(f"{path}: {what}; not written (give the file itself)")
    if st.st_size > MAX_CONFIG:
        raise ConfigNotWritten(f"{path}: larger than {MAX_CONFIG} bytes; not written")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_CONFIG + 1)
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError:
        raise ConfigNotWritten(f"{path}: not UTF-8 text; not written") from None


def _mapping(text: str) -> dict[str, Any] | None:
    """The one YAML mapping ``text`` holds ({} when empty), or None when it holds
    anything else or is not valid YAML."""
    from reconciler.yamlsource import YamlProblem, parse_documents

    try:
        documents = list(parse_documents(text))
    except YamlProblem:
        return None
    if not documents:
        return {}
    if len(documents) > 1 or not isinstance(documents[0].value, dict):
        return None
    return dict(documents[0].value)


def write_config(path: Path, result: ProbeResult) -> str:
    """Add the probe's ``vmDefaults`` to the configuration file at ``path`` (created,
    mode 0644, when missing); a file that already has ``vmDefaults`` is left as it is.
    Returns what was done, in one line.

    The file is replaced atomically (atomicfile.write_atomically),
    keeping its mode and owner, and only when the result is the same configuration
    plus ``vmDefaults``: a file that is not valid YAML, holds no mapping, or whose style
    (flow, JSON) an appended block would break is left untouched, and
    ``ConfigNotWritten`` says what to add by hand. A symlink, FIFO or device is never
    followed or read. Raises OSError when the folder cannot be written."""
    defaults = result.defaults
    if not defaults:
        return f"{path}: no vmDefaults needed"
    block = defaults_yaml(defaults)
    by_hand = f"add this to it by hand:\n{block}"
    found = _read_regular(path)
    text = found[0] if found is not None else ""
    before = _mapping(text)
    if before is None:
        raise ConfigNotWritten(f"{path}: not a valid configuration (one YAML mapping); "
                               f"fix it first, or {by_hand}")  # fmt: skip
    if "vmDefaults" in before:
        return (f"{path}: has vmDefaults already; left as it is"
                f" (this host needs {defaults.describe()})")  # fmt: skip
    comment = f"# Written by reconciler probe: {_one_line(result.summary())}\n"
    new = text + ("\n" if text and not text.endswith("\n") else "") + "\n" + comment + block
    after = _mapping(new)
    if after != {**before, "vmDefaults": defaults.as_config()}:
        raise ConfigNotWritten(f"{path}: its style (flow or JSON) cannot take an appended "
                               f"block; {by_hand}")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, new, mode=0o644)  # an existing file keeps its mode and owner
    return f"{path}: wrote vmDefaults: {defaults.describe()}"
