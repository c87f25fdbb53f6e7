"""The state directory: its layout (every name in it), and made usable or one clear error.

Layout (``--state-dir`` / ``stateDir``, default /var/lib/reconciler, mode 0700).
Every file or folder the tool keeps there is named here and nowhere else; the
modules that own each one take its path from ``path(state_dir, NAME)``::

    inventory.json   INVENTORY       which objects the tool owns (inventory.py)
    status.json      STATUS          what the last pass found, per object (status.py)
    lock             LOCK            one reconciler at a time (lock.py)
    verified.json    VERIFIED_PLANS  VMs found in sync, by fingerprint: a cache (reconcile.py)
    parsed.json      PARSE_CACHE     parsed manifests by content digest: a cache (yamlsource.py)
    git/             GIT_REPOSITORY  a git source's private bare repository (gitsource.py)
    git-home/        GIT_HOME        an empty HOME for git and ssh (gitsource.py)
    snapshots/       GIT_SNAPSHOTS   one read-only folder per applied commit, ``current``
                                     the symlink to the applied one (gitsource.py)
    instance-id      INSTANCE_ID     reserved: this reconciler instance's id (issue 10)

Files are replaced with ``atomicfile.write_atomically``; the caches can be
deleted at any time (they cost time only), the inventory never (it is what makes
owned networks, pools and volumes ours).

Every OS error met in the state directory becomes a ``StateDirError``: one
line naming the path, the system's reason and what to do (a full disk, a
read-only file system, a file in the way, no permission), which cli.py
prints like any user error, never a traceback. A state directory that does
not exist yet is created (mode 0700, with its parents); one that cannot be
created or read is an error, never an empty inventory, since an empty
inventory would make every owned object look foreign.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from reconciler.errors import StateDirError

# --- the layout: every name under the state directory -------------------------------

INVENTORY = "inventory.json"
STATUS = "status.json"
LOCK = "lock"
VERIFIED_PLANS = "verified.json"
PARSE_CACHE = "parsed.json"
GIT_REPOSITORY = "git"
GIT_HOME = "git-home"
GIT_SNAPSHOTS = "snapshots"
# Reserved for the instance id (issue 10: owner identity): the id this reconciler
# instance records in the ownership metadata of what it creates.
INSTANCE_ID = "instance-id"

LAYOUT = (INVENTORY, STATUS, LOCK, VERIFIED_PLANS, PARSE_CACHE, GIT_REPOSITORY, GIT_HOME,
          GIT_SNAPSHOTS, INSTANCE_ID)  # fmt: skip


def path(state_dir: Path, name: str) -> Path:
    """``state_dir/name`` for one of the names above; ``ValueError`` for any other
    (a file in the state directory that this module does not name is a bug)."""
    if name not in LAYOUT:
        raise ValueError(f"{name!r} is not part of the state directory's layout (statedir.py)")
    return Path(state_dir) / name


# --- made usable, or one clear error -------------------------------------------------

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
