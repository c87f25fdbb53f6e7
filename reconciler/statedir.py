"""The state directory (inventory, lock, status, caches): made usable, or one clear error.

Every OS error met in the state directory becomes a ``StateDirError``: one
line naming the path, the system's reason and what to do (a full disk, a
read-only file system, a file in the way, no permission), which cli.py
prints like any user error, never a traceback. A state directory that does
not exist yet is created (mode 0700, with its parents); one that cannot be
created or read is an error, never an empty inventory, since an empty
inventory would make every owned object look foreign.

Used by inventory.py, lock.py and status.py; knows nothing of their files.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.errors import StateDirError

_HINTS = {
    errno.ENOSPC: "free space on its file system",
    errno.EDQUOT: "free space on its file system (quota)",
    errno.EROFS: "its file system is read-only; choose a writable one with --state-dir "
    "or stateDir",
    errno.EACCES: "check the owner, mode and attributes (lsattr) of the state directory",
    errno.EPERM: "check the owner, mode and attributes (lsattr) of the state directory",
    errno.ENOTDIR: "a file is in the way; move it, or choose another --state-dir or stateDir",
    errno.EEXIST: "a file is in the way; move it, or choose another --state-dir or stateDir",
    errno.ENOENT: "choose a state directory that can be created (--state-dir or stateDir)",
}
_DEFAULT_HINT = "choose a usable state directory with --state-dir or stateDir"


def error(path: Path, doing: str, exc: OSError) -> StateDirError:
    """``path: cannot <doing>: <reason>; <what to do>`` for an OS error at ``path``."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0, _DEFAULT_HINT)
    return StateDirError(f"{path}: cannot {doing}: {reason}; {hint}")


def prepare(state_dir: Path, *, write: bool) -> None:
    """Make ``state_dir`` a usable folder, or raise ``StateDirError`` naming it.

    Created with mode 0700 (and its parents) when missing. It must then be a
    directory that can be listed and, with ``write``, written (a read-only
    or immutable folder fails here, before anything is planned or changed).
    """
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass  # a file in the way: reported below
    except OSError as exc:
        raise error(state_dir, "create the state directory", exc) from None
    try:
        st = os.stat(state_dir)
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(
                f"{state_dir}: the state directory is not a folder; {_HINTS[errno.ENOTDIR]}"
            )
        os.listdir(state_dir)
    except OSError as exc:
        raise error(state_dir, "read the state directory", exc) from None
    if write and not os.access(state_dir, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_mount(state_dir) else errno.EACCES
        raise error(state_dir, "write the state directory", OSError(code, os.strerror(code)))


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
