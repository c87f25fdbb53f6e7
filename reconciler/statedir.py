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
    instance-id      INSTANCE_ID     this reconciler instance's id, made once (instance_id)
    images/          IMAGES          Volume images fetched from URLs, by sha256: a cache
                                     (imagefetch.py; ``<sha256>.part`` while downloading)

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

import contextlib
import errno
import os
import stat
import uuid
from pathlib import Path
from typing import Literal, overload

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
# The instance id (issue 10: owner identity): the id this reconciler instance records
# in the ownership metadata of what it manages (instance_id, owners.py).
INSTANCE_ID = "instance-id"
IMAGES = "images"

LAYOUT = (INVENTORY, STATUS, LOCK, VERIFIED_PLANS, PARSE_CACHE, GIT_REPOSITORY, GIT_HOME,
          GIT_SNAPSHOTS, INSTANCE_ID, IMAGES)  # fmt: skip


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


# --- this instance's id ------------------------------------------------------------


@overload
def instance_id(state_dir: Path, *, create: Literal[True]) -> str: ...
@overload
def instance_id(state_dir: Path, *, create: bool) -> str | None: ...
def instance_id(state_dir: Path, *, create: bool) -> str | None:
    """This reconciler instance's id: the UUID in ``<state_dir>/instance-id``.

    The id names the owner in every ownership record the instance writes (SPEC §3,
    "Owners are distinct"). With ``create`` a state directory without one gets one,
    made once and atomically: written whole to a temporary file, fsynced, then
    hard-linked into place (``link`` fails when the name exists, so two processes
    racing both end up with the first one's id), and the result is always an id:
    the commands that write (apply, run, delete, adopt) never go on without one.
    Without ``create`` (read-only commands such as ``plan``) nothing is written:
    None when there is none yet.

    Raises ``StateDirError`` naming the file when it cannot be read or written, is a
    symbolic link (dangling, or shared with another state directory: two state
    directories would be one instance) or hard-linked (the same), is not a regular
    file, or holds something that is not a UUID (it is never replaced: records carry
    it).
    """
    file = path(state_dir, INSTANCE_ID)
    text = _read_instance(file)
    if text is None and create:
        _create_instance(file)
        text = _read_instance(file)
        if text is None:  # (it was there a moment ago: removed by someone else)
            raise StateDirError(f"{file}: the instance id was made and is gone; "
                                "run the command again")  # fmt: skip
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise StateDirError(
            f"{file}: not an instance id ({text[:40]!r}); {_RESTORE}"
        ) from None


# what to do with an instance-id file that cannot be used
_RESTORE = ("restore the file from a backup, or move it aside: a new id makes every object "
            "this instance owned foreign (take them back with reconciler adopt "
            "--from-instance OLD_ID DIR)")


def _read_instance(path: Path) -> str | None:
    """The file's text; None when there is no file. A symbolic link (even a dangling
    one) or anything but a regular file is refused: ``O_NOFOLLOW``, then ``fstat``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            target = os.readlink(path) if os.path.islink(path) else "?"
            raise StateDirError(
                f"{path}: the instance id is a symbolic link (to {target}), refused: each "
                "state directory is one reconciler instance with its own id in a regular "
                "file; replace the link by a copy of the file it names only if this state "
                "directory IS that instance (else two would share one identity), or "
                f"remove it and let the next apply make a new id ({_RESTORE})"
            ) from None
        raise error(path, "read the instance id", exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateDirError(f"{path}: the instance id is not a regular file; {_RESTORE}")
        if info.st_nlink > 1 and not _being_made(path, fd, info):
            raise StateDirError(
                f"{path}: the instance id is hard-linked ({info.st_nlink} names for one "
                "file), refused: each state directory is one reconciler instance with its "
                "own id, and a second name (another state directory's instance-id, found "
                "with find / -samefile) would make two instances one identity; replace it "
                "by a copy (cp --remove-destination) only if this state directory IS that "
                f"instance, or remove it and let the next apply make a new id ({_RESTORE})"
            )
        data = os.read(fd, 4096)
    except OSError as exc:
        raise error(path, "read the instance id", exc) from None
    finally:
        os.close(fd)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise StateDirError(
            f"{path}: not an instance id (not text: {len(data)} bytes of binary data); "
            f"{_RESTORE}"
        ) from None


def _being_made(path: Path, fd: int, info: os.stat_result) -> bool:
    """Whether ``path``'s (open as ``fd``, ``info`` its ``fstat``) second name is the
    temporary file ``_create_instance`` links it from (another process is making the
    id this moment): the same file as a ``.instance-id.*.tmp`` beside it, or a file
    whose second name is gone by the time the folder is looked at."""
    try:
        siblings = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return False
    for tmp in siblings:
        with contextlib.suppress(OSError):
            found = tmp.lstat()
            if (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino):
                return True
    return os.fstat(fd).st_nlink == 1  # the temporary name went after the first fstat


def _create_instance(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, f"{uuid.uuid4()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: its id
            os.link(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise error(path, "write the instance id", exc) from None
    finally:
        tmp.unlink(missing_ok=True)
