"""Every host path a manifest can name, and the one check they all pass (SPEC §5).

A manifest is input to a root daemon: a path in it makes libvirt or the
reconciler create, read or write a file on the host. ``host_paths`` lists
them all, per kind, with the field that names them:

* StoragePool ``path`` of a dir, fs or netfs pool (libvirt creates the folder
  and volumes in it, or mounts on it), and ``source.devices`` (block devices a
  pool's build formats: only the ones the configuration allows),
* Volume ``source`` (copied into the new volume),
* VirtualMachine ``disks[].file``, ``disks[].device`` (a block device),
  ``cdroms[].file``, ``kernel``, ``initrd``, ``serial.file`` (opened by QEMU),
  ``filesystems[].source`` (a folder shared with the guest), and
  ``graphics.passwordFile`` (read by the reconciler, its first line put into the
  domain XML);
* the escape hatch (``xml`` of a VM, a network or a pool): every absolute path an
  entry writes (a value, a predicate's value, any attribute or text of a fragment: a
  block disk, an NVRAM file, a log file, a socket; a NIC's ``dev`` names an
  interface, no path), so the hatch is no way around the roots.

A block device lies under ``/dev``, which no image root holds: it needs a root of
its own in ``allowedDiskRoots`` (the device, or a folder of devices such as
``/dev/vg0``), and its refusal says so.

``PathPolicy.refusal`` is the check: the path, symlinks resolved, must lie
under one of the allowed roots: ``allowedSecretRoots`` for password files,
``allowedDiskRoots`` for everything else (settings.py). For a remote host
(``PathPolicy.remote``) the paths that live there (pool paths, disks, ISOs,
kernels, logs) are checked as written, normalised but not resolved: this
machine's symlinks say nothing of that host's, and nothing here is read for
them. Volume sources and password files are read by the reconciler itself, on
this machine (``HostPath.here``), so they are resolved here in both cases. The planner refuses
a manifest with any path that fails it, and ``read_secret`` reads a password
file only after it passed, so nothing outside the roots is read or created.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree as ET

from reconciler.model import (
    POOL_PATH_TYPES,
    Manifest,
    NetworkSpec,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    XmlEdit,
)

MAX_SECRET = 64 * 1024


@dataclass(frozen=True, slots=True)
class HostPath:
    """One host path a manifest names: ``field`` as plans say it (``disks[1].file``, the
    index in the manifest's list), and ``where`` it is in the document
    (``("spec", "disks", 1, "file")``) for positions."""

    field: str
    path: str
    secret: bool = False  # a password file: checked against the secret roots
    where: tuple[str | int, ...] = ()
    here: bool = False  # read by the reconciler on its own machine, even for a remote host


def host_paths(manifest: Manifest) -> list[HostPath]:
    """Every host path ``manifest`` names, in the order of its fields."""
    spec = manifest.spec
    if isinstance(spec, StoragePoolSpec):
        # the folder libvirt makes or mounts on (a logical, disk or iscsi pool's target is
        # libvirt's view of /dev, not made by it), and the block devices a build formats
        pool = ([HostPath("path", spec.path, where=("spec", "path"))]
                if spec.path is not None and spec.type in POOL_PATH_TYPES else [])  # fmt: skip
        key = "device" if "device" in manifest.document["spec"].get("source", {}) else "devices"
        for i, device in enumerate(spec.source.devices):
            where: tuple[str | int, ...] = (("spec", "source", "device") if key == "device"
                                            else ("spec", "source", "devices", i))  # fmt: skip
            name = "source.device" if key == "device" else f"source.devices[{i}]"
            pool.append(HostPath(name, device, where=where))
        return pool + _hatch_paths(spec.xml)
    if isinstance(spec, VolumeSpec):
        return (
            [HostPath("source", spec.source, where=("spec", "source"), here=True)]
            if spec.source
            else []
        )
    if isinstance(spec, NetworkSpec):
        return _hatch_paths(spec.xml)
    if not isinstance(spec, VirtualMachineSpec):
        return []
    found = [HostPath(f"disks[{i}].file", d.file, where=("spec", "disks", i, "file"))
             for i, d in enumerate(spec.disks) if d.file]  # fmt: skip
    found += [HostPath(f"disks[{i}].device", d.device, where=("spec", "disks", i, "device"))
              for i, d in enumerate(spec.disks) if d.device]  # fmt: skip
    found += [HostPath(f"cdroms[{i}].file", c.file, where=("spec", "cdroms", i, "file"))
              for i, c in enumerate(spec.cdroms) if c.file]  # fmt: skip
    found += [HostPath(f"filesystems[{i}].source", f.source,
                       where=("spec", "filesystems", i, "source"))
              for i, f in enumerate(spec.filesystems or ())]  # fmt: skip
    found += [HostPath(name, value, where=where) for name, value, where in (
        ("kernel", spec.kernel, ("spec", "kernel")), ("initrd", spec.initrd, ("spec", "initrd")),
        ("serial.file", spec.serial_file, ("spec", "serial", "file")),
    ) if value]  # fmt: skip
    log = spec.devices.serial_log
    if log is not None and not isinstance(log, str):
        found.append(HostPath("serial.log.file", log.file, where=("spec", "serial", "log", "file")))
    if spec.graphics is not None and spec.graphics.password_file:
        found.append(HostPath("graphics.passwordFile", spec.graphics.password_file, secret=True,
                              where=("spec", "graphics", "passwordFile"), here=True))  # fmt: skip
    return found + _hatch_paths(spec.xml)


# the fragments passed the load check (one element, no DTD or entities); parsed again
# here as data: nothing resolved, nothing fetched
_PARSER = ET.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_PREDICATE_VALUE = re.compile(r"=(?:'(/[^']*)'|\"(/[^\"]*)\")")
_PREDICATED_STEP = re.compile(r"([A-Za-z_][\w.-]*)((?:\[(?:'[^']*'|\"[^\"]*\"|[^\]'\"])*\])+)")
_ATTR_PREDICATE = re.compile(r"\[@([\w.-]+)=(?:'([^']*)'|\"([^\"]*)\")\]")
# text that starts with a slash and is no host path: a cgroup partition (/machine),
# words of the user's, an LXC guest's own init
NOT_PATHS = frozenset({"partition", "title", "description", "cmdline", "init", "initarg",
                       "initdir"})  # fmt: skip


def _hatch_paths(entries: Sequence[XmlEdit]) -> list[HostPath]:
    """The host paths ``xml`` entries name: every absolute path an entry writes, as a
    value, in a ``[@attr='/...']`` predicate its path creates an element from, or as an
    attribute or text anywhere in a fragment it adds. Not a list of the attributes that
    hold paths (``<source file|dev|dir|path>``, ``<nvram>``, ``<log file>``, an nvdimm's
    ``<path>``, a socket...): libvirt has too many, and one missed is a way around the
    roots. A network disk's ``<source protocol=... name='/x'>`` names a path on a
    server, not here, and is left out."""
    found: list[HostPath] = []
    for i, entry in enumerate(entries):
        for match in _PREDICATE_VALUE.finditer(entry.xpath):
            found.append(HostPath(f"xml[{i}]", match.group(1) or match.group(2),
                                  where=("spec", "xml", i, "xpath")))  # fmt: skip
        for step in _PREDICATED_STEP.finditer(entry.xpath):  # and a relative one
            for pred in _ATTR_PREDICATE.finditer(step.group(2)):
                said = pred.group(2) if pred.group(2) is not None else pred.group(3)
                if _relative_path(step.group(1), "@" + pred.group(1), said):
                    found.append(HostPath(f"xml[{i}]", said, where=("spec", "xml", i, "xpath")))
        last = re.split(r"[/\[]", entry.xpath.rsplit("/", 1)[-1])[0]
        parent = re.split(r"[/\[]", entry.xpath.rsplit("/", 2)[-2] if entry.xpath.count("/") > 1
                          else "")[0]  # fmt: skip
        value = entry.value
        if value is not None and last not in NOT_PATHS and (
                value.startswith("/") or _relative_path(parent, last, value)):  # fmt: skip
            found.append(HostPath(f"xml[{i}]", value, where=("spec", "xml", i, "value")))
        if entry.add is None:
            continue
        try:
            root = ET.fromstring(entry.add.strip().encode(), _PARSER)
        except ET.XMLSyntaxError:
            continue  # refused at load (xml/edits.py)
        for node in root.iter():
            if not isinstance(node.tag, str):
                continue
            text = "" if len(node) or node.tag in NOT_PATHS else (node.text or "").strip()
            remote = node.get("protocol") is not None  # its name is the server's path
            named = [] if remote else [(str(k), str(v)) for k, v in node.attrib.items()]
            for key, value in [*named, ("", text)]:
                parent = node.getparent()
                if value.startswith("/") or _relative_path(
                        node.tag if key else ("" if parent is None else str(parent.tag)),
                        f"@{key}" if key else node.tag, value):  # fmt: skip
                    # a NIC's dev is a host interface, no path
                    found.append(HostPath(f"xml[{i}]", value, where=("spec", "xml", i, "add")))
    return found


_PATH_ATTRS = frozenset({"@file", "@path", "@socket"})
_PATH_TEXTS = frozenset({"nvram", "loader", "kernel", "initrd", "dtb", "block", "char"})


def _relative_path(element: str, name: str, value: str) -> bool:
    """Whether ``value`` of attribute ``name`` (``@file``) of ``element``, or the text of
    element ``name``, is a relative host path: libvirt resolves it from libvirtd's
    working directory, /, so ``etc/shadow`` is /etc/shadow, which the roots check,
    resolving from the reconciler's own, would not see (PathPolicy refuses it as not
    absolute). A target's ``dir`` (a mount tag) and a NIC's ``dev`` are no paths."""
    if not value or value.startswith("/") or element == "target":
        return False
    if name in _PATH_ATTRS or name in _PATH_TEXTS:
        return True
    return element == "source" and (name == "@dir" or (name == "@dev" and "/" in value))


@dataclass(frozen=True, slots=True)
class PathPolicy:
    """The allowed roots; None: that class of path is not restricted.

    Make one per pass: it remembers each directory's resolved path (a pass asks
    about many files in few directories), and a symlink changed between passes
    must be seen by the next one."""

    disk_roots: tuple[Path, ...] | None
    secret_roots: tuple[Path, ...] | None
    # a remote host: its own paths are checked as written (see the module doc)
    remote: bool = False
    _real_dirs: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def allows(self, path: str, *, secret: bool = False, here: bool = True) -> bool:
        """Whether ``path`` (absolute), symlinks resolved, lies under a root of its class.
        ``here=False``: a path on the host, not read by the reconciler; for a remote
        host it is only normalised (``os.path.normpath``), nothing is resolved. A path
        whose links cannot be resolved (``/proc/1/cwd``: permission denied; a loop) is
        not allowed."""
        roots = self.secret_roots if secret else self.disk_roots
        if roots is None:
            return True
        if not os.path.isabs(path):
            return False
        if self.remote and not here:
            real = os.path.normpath(path)
            resolved = map(os.path.normpath, roots)
        else:
            try:
                real = self._real(path)
            except (OSError, ValueError):
                return False
            resolved = map(os.path.realpath, roots)
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep)
                   for r in resolved)  # fmt: skip

    def _real(self, path: str) -> str:
        head, tail = os.path.split(os.path.normpath(path))
        real_head = self._real_dirs.get(head)
        if real_head is None:
            real_head = self._real_dirs[head] = os.path.realpath(head)
        real = os.path.join(real_head, tail)
        return os.path.realpath(real) if os.path.islink(real) else real

    def real_path(self, path: str) -> str | None:
        """``path`` (absolute) with its symlinks resolved, as this pass sees it; None for a
        remote host's path (its links are not this machine's) or one that cannot be
        resolved. Disks are matched by the real file (two spellings of one image are
        one disk), so the planner gets these as data (reconcile.real_paths)."""
        if self.remote or not os.path.isabs(path):
            return None
        try:
            return self._real(path)
        except (OSError, ValueError):
            return None

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
        if self.allows(host_path.path, secret=host_path.secret, here=host_path.here):
            return None
        local = host_path.here or not self.remote
        try:
            real = Path(os.path.realpath(host_path.path) if local
                        else os.path.normpath(host_path.path))  # fmt: skip
        except (OSError, ValueError):
            return f"{where} cannot be resolved (a link that cannot be followed)"
        shown = ", ".join(str(r) for r in roots) or "none"
        via = "" if str(real) == os.path.normpath(host_path.path) else f" (resolves to {real})"
        if str(real).startswith("/dev/") and not host_path.secret:
            return (f"{where}{via} is outside {setting} ({shown}): a block device needs a "
                    f"root of its own there (the device {real}, or its folder)")  # fmt: skip
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
