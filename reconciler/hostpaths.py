"""Every host path a manifest can name, and the one check they all pass (SPEC §5).

A manifest is input to a root daemon: a path in it makes libvirt or the
reconciler create, read or write a file on the host. ``host_paths`` lists
them all, per kind, with the field that names them:

* StoragePool ``path`` (libvirt creates the folder and volumes in it),
* Volume ``source`` (copied into the new volume),
* VirtualMachine ``disks[].file``, ``cdroms[].file``, ``kernel``, ``initrd``,
  ``serial.file`` (opened by QEMU), and ``graphics.passwordFile`` (read by
  the reconciler, its first line put into the domain XML).

``PathPolicy.refusal`` is the check: the path, symlinks resolved, must lie
under one of the allowed roots: ``allowedSecretRoots`` for password files,
``allowedDiskRoots`` for everything else (settings.py). The planner refuses
a manifest with any path that fails it, and ``read_secret`` reads a password
file only after it passed, so nothing outside the roots is read or created.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler.model import (
    Manifest,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
)

MAX_SECRET = 64 * 1024


@dataclass(frozen=True, slots=True)
class HostPath:
    """One host path a manifest names: ``field`` as written (``disks[vdb].file``)."""

    field: str
    path: str
    secret: bool = False  # a password file: checked against the secret roots


def host_paths(manifest: Manifest) -> list[HostPath]:
    """Every host path ``manifest`` names, in the order of its fields."""
    spec = manifest.spec
    if isinstance(spec, StoragePoolSpec):
        return [HostPath("path", spec.path)]
    if isinstance(spec, VolumeSpec):
        return [HostPath("source", spec.source)] if spec.source else []
    if not isinstance(spec, VirtualMachineSpec):
        return []
    found = [HostPath(f"disks[{d.target}].file", d.file) for d in spec.disks if d.file]
    found += [HostPath(f"cdroms[{c.target}].file", c.file) for c in spec.cdroms if c.file]
    found += [HostPath(name, value) for name, value in (
        ("kernel", spec.kernel), ("initrd", spec.initrd), ("serial.file", spec.serial_file),
    ) if value]  # fmt: skip
    if spec.graphics is not None and spec.graphics.password_file:
        found.append(HostPath("graphics.passwordFile", spec.graphics.password_file, secret=True))
    return found


@dataclass(frozen=True, slots=True)
class PathPolicy:
    """The allowed roots; None: that class of path is not restricted."""

    disk_roots: tuple[Path, ...] | None
    secret_roots: tuple[Path, ...] | None

    def refusal(self, host_path: HostPath) -> str | None:
        """Why ``host_path`` is refused (one phrase naming field, path and setting), or None.

        The path must be absolute and, symlinks resolved, lie under one of the
        roots of its class (a root itself counts).
        """
        roots = self.secret_roots if host_path.secret else self.disk_roots
        if roots is None:
            return None
        setting = "allowedSecretRoots" if host_path.secret else "allowedDiskRoots"
        where = f"{host_path.field} {host_path.path}"
        if not os.path.isabs(host_path.path):
            return f"{where} is not an absolute path"
        real = Path(os.path.realpath(host_path.path))
        if any(real.is_relative_to(os.path.realpath(root)) for root in roots):
            return None
        shown = ", ".join(str(r) for r in roots) or "none"
        via = "" if str(real) == os.path.normpath(host_path.path) else f" (resolves to {real})"
        return f"{where}{via} is outside {setting} ({shown})"

    def refusals(self, manifest: Manifest) -> list[str]:
        """The refusal of every host path of ``manifest`` that fails the check."""
        return [r for r in map(self.refusal, host_paths(manifest)) if r is not None]


def read_secret(host_path: HostPath, policy: PathPolicy) -> str | None:
    """The first line of password file ``host_path``, only if it passes ``policy``.

    None when refused, missing, not a regular file (a FIFO or device is never
    opened for reading: no pass can hang on one), larger than 64 KiB, or not
    UTF-8. The file opened is the resolved path that was checked, opened
    without following a symlink swapped in since.
    """
    if policy.refusal(host_path) is not None:
        return None
    real = os.path.realpath(host_path.path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SECRET:
            return None
        data = os.read(fd, MAX_SECRET + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.splitlines()[0] if text else ""
