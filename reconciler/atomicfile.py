"""The one atomic file writer: a reader, or a crash at any point, sees the old file or
the new one, whole.

Every file the tool replaces goes through ``write_atomically``: the inventory, the
status file, the verified-plans and parse caches (state directory, statedir.py), the
configuration ``probe`` extends, the files ``export`` writes and the metrics textfile.
gitsource.py replaces whole snapshot folders and a symlink by rename, and syncs the
folder with ``fsync_dir`` from here.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: str | bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (``str`` is written as UTF-8).

    A temporary file beside it (``.<name>.<random>.tmp``, in the same folder so the
    rename stays on one file system) is written and fsynced, takes the mode and
    owner, is renamed over ``path``, and the folder is fsynced so that the rename
    survives a power cut. An existing regular file keeps its mode and owner (uid,
    gid); a new one gets ``mode`` (default 0600: state files are private). A symlink
    at ``path`` is replaced, not followed.

    Raises ``OSError`` (callers name what they were writing). When any step before
    the rename fails, the temporary file is removed and ``path`` is untouched.
    """
    before: os.stat_result | None = None
    with contextlib.suppress(FileNotFoundError):
        found = os.lstat(path)
        if stat.S_ISREG(found.st_mode):
            before = found
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), stat.S_IMODE(before.st_mode) if before else mode)
            if before is not None:
                made = os.fstat(handle.fileno())
                if (made.st_uid, made.st_gid) != (before.st_uid, before.st_gid):
                    os.fchown(handle.fileno(), before.st_uid, before.st_gid)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file, a removal) durable.
    Raises ``OSError``."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
