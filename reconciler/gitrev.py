"""The git revision of the manifest directory, read from the repository's files alone.

The daemon runs as root and the manifest directory is often a git work tree
that other people's tools write to. Running ``git`` there would honour the
repository's own configuration (``core.fsmonitor``, hooks, filter drivers,
``include.path`` ...), so anyone who can write ``.git`` could run a program as
root (SPEC §5). This module runs no program and does not read ``.git/config``
at all: it reads ``HEAD``, refs, ``packed-refs``, the index and the object
database as data, every file opened without blocking (a FIFO in the place of
``HEAD`` cannot hang a pass), only regular files, and bounded in size.

What it understands: a ``.git`` directory or a ``.git`` file (``gitdir: ...``,
as ``git worktree add`` and submodules make), found in the directory or any
parent (as git finds it); ``commondir`` of linked work trees; symbolic and
detached ``HEAD``; loose and packed refs; loose and packed objects (pack index
version 2, offset and reference deltas); index versions 2, 3 and 4; SHA-1 and
SHA-256 repositories.

The dirty flag (``-dirty`` after the commit) says that the manifests loaded
may not be the commit's: a tracked file under the directory that differs from
the index (size, mode, or content when its time stamp changed), an index that
differs from the commit's tree under the directory (staged changes, merge
conflicts), or a manifest file the loader would read that the index does not
track (even one ``.gitignore`` names: it is applied all the same). Filters
(``core.autocrlf``, ``filter.*``) are configuration and are not honoured: a
file they would rewrite counts as changed. When something needed for the
answer cannot be read (an index extension this reader does not know, an
object found only in an alternate object store), the revision is reported
dirty: it is never claimed to be exactly a commit that it may not be.

``settings.check_manifest_dir`` checks the permissions of everything read
here (``paths_read``) before the daemon calls ``revision``.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler.manifests import is_manifest_file

MAX_SMALL_FILE = 1 << 20  # HEAD, a ref, a .git file, commondir, packed-refs
MAX_INDEX = 256 << 20
MAX_DELTA_DEPTH = 1000
_HEX = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
# refs kept per work tree in a linked work tree's own git dir (git-worktree(1))
_PER_WORKTREE = ("refs/bisect/", "refs/worktree/", "refs/rewritten/")


class Unreadable(Exception):
    """Something in the repository cannot be read or understood."""


@dataclass(frozen=True, slots=True)
class Repository:
    """Where a work tree's repository lives: ``git_dir`` holds HEAD and the index;
    ``common_dir`` (the same, except for linked work trees) the refs and objects."""

    worktree: Path
    git_dir: Path
    common_dir: Path


Vet = Callable[[Path], None]


def find_repository(directory: Path, vet: Vet | None = None) -> Repository | None:
    """The repository whose work tree holds ``directory`` (symlinks resolved), or None.

    Looks for ``.git`` in the directory and its parents, as git does. ``vet`` is
    called with each path before it is read (a ``.git`` file, the directory it
    names, ``commondir``); it raises to stop the search (settings.py checks
    ownership and modes with it). None when no repository is found or one
    cannot be read.
    """
    real = Path(os.path.realpath(directory))
    for candidate in (real, *real.parents):
        dot = candidate / ".git"
        try:
            st = os.stat(dot)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        if vet is not None:
            vet(dot)
        try:
            if stat.S_ISDIR(st.st_mode):
                git_dir = Path(os.path.realpath(dot))
            elif stat.S_ISREG(st.st_mode):
                text = _read_small(dot).decode("utf-8", "replace").strip()
                if not text.startswith("gitdir:"):
                    return None
                git_dir = Path(os.path.realpath(candidate / text[len("gitdir:") :].strip()))
                if vet is not None:
                    vet(git_dir)
            else:
                return None
            common_dir = git_dir
            if os.path.lexists(git_dir / "commondir"):
                if vet is not None:
                    vet(git_dir / "commondir")
                pointer = _read_small(git_dir / "commondir").decode("utf-8", "replace").strip()
                common_dir = Path(os.path.realpath(git_dir / pointer))
                if vet is not None:
                    vet(common_dir)
        except Unreadable:
            return None
        if not (git_dir / "HEAD").is_file():
            return None
        return Repository(candidate, git_dir, common_dir)
    return None


def paths_read(repo: Repository) -> Iterator[Path]:
    """Every existing file and folder ``revision`` may read, for a permission check.

    The git dirs, HEAD, the index, ``config`` and ``config.worktree`` (not
    read here, but git run by a person would obey them), ``packed-refs``,
    every folder and file under ``refs``, the object folders and the pack
    files. A generator, and a folder is yielded before it is listed: a caller
    that checks each path as it comes has checked every folder before this
    reads it.
    """
    candidates = [
        repo.git_dir, repo.git_dir / "HEAD", repo.git_dir / "index",
        repo.git_dir / "commondir", repo.git_dir / "config", repo.git_dir / "config.worktree",
        repo.common_dir, repo.common_dir / "config", repo.common_dir / "packed-refs",
    ]  # fmt: skip
    seen: set[Path] = set()
    for path in candidates:
        if path not in seen and os.path.lexists(path):
            seen.add(path)
            yield path
    for refs in {repo.git_dir / "refs", repo.common_dir / "refs"}:
        if refs.is_dir():
            yield refs
            for folder, subdirs, files in os.walk(refs):
                subdirs.sort()
                for name in [*subdirs, *sorted(files)]:
                    yield Path(folder, name)
    objects = repo.common_dir / "objects"
    if objects.is_dir():
        yield objects
        for entry in sorted(os.scandir(objects), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)
        pack = objects / "pack"
        if pack.is_dir():
            for entry in sorted(os.scandir(pack), key=lambda e: e.name):
                yield Path(entry.path)


def revision(directory: Path) -> str | None:
    """``<commit>`` or ``<commit>-dirty`` (12 hex digits) of ``directory``'s work tree.

    None when ``directory`` is in no git work tree, HEAD names no commit yet
    (an unborn branch), or the repository cannot be read. Runs no program and
    raises nothing.
    """
    try:
        repo = find_repository(directory)
        if repo is None:
            return None
        commit = head_commit(repo)
    except (Unreadable, OSError, ValueError):
        return None
    if commit is None:
        return None
    try:
        clean = _clean(repo, commit, Path(os.path.realpath(directory)))
    except (Unreadable, OSError, ValueError, zlib.error, struct.error, IndexError):
        clean = False
    return commit[:12] + ("" if clean else "-dirty")


def head_commit(repo: Repository) -> str | None:
    """The full hex id HEAD resolves to; None for an unborn branch.

    Raises ``Unreadable`` for a malformed HEAD or ref."""
    name = "HEAD"
    for _ in range(10):  # symbolic refs, as git allows them, but not in a loop
        if name == "HEAD":
            text = _read_small(repo.git_dir / "HEAD").decode("ascii", "replace").strip()
        else:
            found = _read_ref(repo, name)
            if found is None:
                return None
            text = found
        if text.startswith("ref:"):
            name = text[4:].strip()
            if not _valid_ref(name):
                raise Unreadable(f"HEAD names an invalid ref {name!r}")
            continue
        if _HEX.fullmatch(text):
            return text
        raise Unreadable(f"{name} holds {text[:80]!r}, not an object id")
    raise Unreadable("symbolic refs nest too deep")


def _valid_ref(name: str) -> bool:
    """``refs/heads/main`` and the like: stays inside ``refs/``, as git-check-ref-format."""
    parts = name.split("/")
    return (
        len(parts) >= 2
        and parts[0] == "refs"
        and all(p and not p.startswith(".") and not p.endswith(".lock") for p in parts)
        and ".." not in name
        and not any(c in name for c in " ~^:?*[\\")
        and all(ord(c) >= 0x20 and ord(c) != 0x7F for c in name)
    )


def _read_ref(repo: Repository, name: str) -> str | None:
    home = repo.git_dir if name.startswith(_PER_WORKTREE) else repo.common_dir
    try:
        return _read_small(home / name).decode("ascii", "replace").strip()
    except FileNotFoundError:
        pass
    except Unreadable:
        if (home / name).is_dir():  # a folder refs/heads/x/ and no ref x
            return None
        raise
    try:
        packed = _read_small(repo.common_dir / "packed-refs", limit=64 << 20)
    except FileNotFoundError:
        return None
    wanted = name.encode()
    for line in packed.splitlines():
        if line.startswith((b"#", b"^")):
            continue
        oid, _, ref = line.partition(b" ")
        if ref.strip() == wanted:
            return oid.decode("ascii", "replace")
    return None


# --------------------------------------------------------------------------
# Files, read as data
# --------------------------------------------------------------------------


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file; never blocks on a FIFO or device."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_small(path: Path, limit: int = MAX_SMALL_FILE) -> bytes:
    try:
        fd = _open_regular(path)
    except IsADirectoryError:
        raise Unreadable(f"{path} is a directory") from None
    try:
        if os.fstat(fd).st_size > limit:
            raise Unreadable(f"{path} is larger than {limit} bytes")
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Objects: loose and packed
# --------------------------------------------------------------------------


class _Objects:
    def __init__(self, common_dir: Path, hash_len: int) -> None:
        self.root = common_dir / "objects"
        self.hash_len = hash_len
        self._packs: list[tuple[Path, bytes]] | None = None

    def read(self, oid: bytes, depth: int = 0) -> tuple[int, bytes]:
        """(type, content) of object ``oid`` (raw bytes); type 1 commit, 2 tree, 3 blob."""
        hexid = oid.hex()
        loose = self.root / hexid[:2] / hexid[2:]
        try:
            raw = zlib.decompress(_read_small(loose, limit=MAX_INDEX))
        except FileNotFoundError:
            return self._packed(oid, depth)
        header, _, body = raw.partition(b"\0")
        kind = header.split(b" ", 1)[0]
        types = {b"commit": 1, b"tree": 2, b"blob": 3, b"tag": 4}
        if kind not in types:
            raise Unreadable(f"object {hexid}: unknown type {kind!r}")
        return types[kind], body

    def _indexes(self) -> list[tuple[Path, bytes]]:
        if self._packs is None:
            self._packs = []
            pack_dir = self.root / "pack"
            names = sorted(os.listdir(pack_dir)) if pack_dir.is_dir() else []
            for name in names:
                if name.endswith(".idx"):
                    data = _read_small(pack_dir / name, limit=MAX_INDEX)
                    self._packs.append((pack_dir / (name[:-4] + ".pack"), data))
        return self._packs

    def _packed(self, oid: bytes, depth: int) -> tuple[int, bytes]:
        n = self.hash_len
        for pack, idx in self._indexes():
            if idx[:8] != b"\377tOc\0\0\0\2":
                raise Unreadable(f"{pack}: unsupported pack index version")
            fanout = struct.unpack_from(">256I", idx, 8)
            count = fanout[255]
            lo = fanout[oid[0] - 1] if oid[0] else 0
            hi = fanout[oid[0]]
            ids = 8 + 1024
            while lo < hi:  # binary search of the sorted ids
                mid = (lo + hi) // 2
                if idx[ids + mid * n : ids + (mid + 1) * n] < oid:
                    lo = mid + 1
                else:
                    hi = mid
            i = lo
            if i >= fanout[oid[0]] or idx[ids + i * n : ids + (i + 1) * n] != oid:
                continue
            offsets = ids + count * n + count * 4
            offset = struct.unpack_from(">I", idx, offsets + i * 4)[0]
            if offset & 0x80000000:
                large = offsets + count * 4 + (offset & 0x7FFFFFFF) * 8
                offset = struct.unpack_from(">Q", idx, large)[0]
            fd = _open_regular(pack)
            try:
                with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as data:
                    return self._unpack(data, offset, depth)
            finally:
                os.close(fd)
        raise Unreadable(f"object {oid.hex()} not found")

    def _unpack(self, data: mmap.mmap, offset: int, depth: int) -> tuple[int, bytes]:
        if depth > MAX_DELTA_DEPTH:
            raise Unreadable("delta chain too long")
        byte = data[offset]
        kind, size, shift, pos = (byte >> 4) & 7, byte & 15, 4, offset + 1
        while byte & 0x80:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
        base: tuple[int, bytes] | None = None
        if kind == 6:  # OFS_DELTA: the base is earlier in this pack
            back, pos = _varint(data, pos)
            base = self._unpack(data, offset - back, depth + 1)
        elif kind == 7:  # REF_DELTA: the base is named
            base = self.read(bytes(data[pos : pos + self.hash_len]), depth + 1)
            pos += self.hash_len
        elif kind not in (1, 2, 3, 4):
            raise Unreadable(f"pack object of unknown type {kind}")
        body = _inflate(data, pos, size)
        if base is None:
            return kind, body
        return base[0], _apply_delta(base[1], body)


def _inflate(data: mmap.mmap, pos: int, size: int) -> bytes:
    inflater = zlib.decompressobj()
    out = bytearray()
    while not inflater.eof and pos < len(data):
        chunk = data[pos : pos + 65536]
        pos += len(chunk)
        out += inflater.decompress(chunk, max(size - len(out), 0) + 1)
        if inflater.unconsumed_tail:
            raise Unreadable("pack object larger than its header says")
    if len(out) != size:
        raise Unreadable("pack object of the wrong size")
    return bytes(out)


def _apply_delta(base: bytes, delta: bytes) -> bytes:
    pos = 0

    def size() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = delta[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    if size() != len(base):
        raise Unreadable("delta against a base of the wrong size")
    target = size()
    out = bytearray()
    while pos < len(delta):
        op = delta[pos]
        pos += 1
        if op & 0x80:
            start = length = 0
            for i in range(4):
                if op & (1 << i):
                    start |= delta[pos] << (8 * i)
                    pos += 1
            for i in range(3):
                if op & (1 << (4 + i)):
                    length |= delta[pos] << (8 * i)
                    pos += 1
            out += base[start : start + (length or 0x10000)]
        elif op:
            out += delta[pos : pos + op]
            pos += op
        else:
            raise Unreadable("invalid delta instruction")
    if len(out) != target:
        raise Unreadable("delta result of the wrong size")
    return bytes(out)


# --------------------------------------------------------------------------
# The dirty flag
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    mode: int
    oid: bytes
    size: int
    mtime: tuple[int, int]
    stage: int
    unchecked: bool  # assume-valid or skip-worktree: git does not look at the file


def _index(repo: Repository, hash_len: int) -> dict[bytes, _Entry]:
    path = repo.git_dir / "index"
    try:
        data = _read_small(path, limit=MAX_INDEX)
    except FileNotFoundError:
        return {}
    signature, version, count = struct.unpack_from(">4sII", data, 0)
    if signature != b"DIRC" or version not in (2, 3, 4):
        raise Unreadable(f"{path}: unsupported index")
    pos, previous = 12, b""
    entries: dict[bytes, _Entry] = {}
    for _ in range(count):
        start = pos
        (_cs, _cn, ms, mn, _dev, _ino, mode, _uid, _gid, size) = struct.unpack_from(
            ">10I", data, pos
        )
        pos += 40
        oid = data[pos : pos + hash_len]
        pos += hash_len
        (flags,) = struct.unpack_from(">H", data, pos)
        pos += 2
        extended = 0
        if flags & 0x4000:
            (extended,) = struct.unpack_from(">H", data, pos)
            pos += 2
        if version == 4:
            strip, pos = _varint(data, pos)
            end = data.index(b"\0", pos)
            name = previous[: len(previous) - strip] + data[pos:end]
            pos = end + 1
        else:
            end = data.index(b"\0", pos)
            name = data[pos:end]
            pos = start + ((end - start + 8) // 8) * 8  # NUL padding to a multiple of 8
        previous = name
        if stat.S_ISDIR(mode):
            raise Unreadable(f"{path}: a sparse index")
        entries[name] = _Entry(
            mode, oid, size, (ms, mn), (flags >> 12) & 3,
            bool(flags & 0x8000) or bool(extended & 0x4000),
        )  # fmt: skip
    while pos + 8 <= len(data) - hash_len:  # extensions; "link" splits the index
        signature, length = struct.unpack_from(">4sI", data, pos)
        if signature == b"link" or signature == b"sdir":
            raise Unreadable(f"{path}: a split or sparse index")
        pos += 8 + length
    return entries


def _varint(data: bytes | mmap.mmap, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, pos


def _tree(objects: _Objects, commit: bytes, prefix: bytes) -> dict[bytes, tuple[int, bytes]]:
    """path -> (mode, id) of every file under ``prefix`` in ``commit``'s tree."""
    kind, body = objects.read(commit)
    if kind != 1 or not body.startswith(b"tree "):
        raise Unreadable(f"{commit.hex()} is not a commit")
    tree = bytes.fromhex(body[5 : body.index(b"\n")].decode("ascii"))
    # down to the prefix first, then everything below it
    base = b""
    for part in [p for p in prefix.split(b"/") if p]:
        found = _tree_entries(objects, tree).get(part)
        if found is None or not stat.S_ISDIR(found[0]):
            return {}
        tree = found[1]
        base += part + b"/"
    files: dict[bytes, tuple[int, bytes]] = {}
    pending = [(base, tree)]
    while pending:
        where, oid = pending.pop()
        for name, (mode, child) in _tree_entries(objects, oid).items():
            if stat.S_ISDIR(mode):
                pending.append((where + name + b"/", child))
            else:
                files[where + name] = (mode, child)
    return files


def _tree_entries(objects: _Objects, oid: bytes) -> dict[bytes, tuple[int, bytes]]:
    kind, body = objects.read(oid)
    if kind != 2:
        raise Unreadable(f"{oid.hex()} is not a tree")
    entries: dict[bytes, tuple[int, bytes]] = {}
    pos = 0
    while pos < len(body):
        space = body.index(b" ", pos)
        nul = body.index(b"\0", space)
        mode = int(body[pos:space], 8)
        entries[body[space + 1 : nul]] = (mode, body[nul + 1 : nul + 1 + objects.hash_len])
        pos = nul + 1 + objects.hash_len
    return entries


def _clean(repo: Repository, commit: str, directory: Path) -> bool:
    """Whether the files under ``directory`` are exactly ``commit``'s (see the module doc)."""
    hash_len = len(commit) // 2
    relative = directory.relative_to(repo.worktree)
    prefix = b"" if relative == Path(".") else os.fsencode(relative) + b"/"
    entries = {k: v for k, v in _index(repo, hash_len).items() if k.startswith(prefix)}
    if any(e.stage for e in entries.values()):
        return False  # a merge in progress
    committed = _tree(_Objects(repo.common_dir, hash_len), bytes.fromhex(commit), prefix)
    if {k: (e.mode, e.oid) for k, e in entries.items()} != committed:
        return False
    digest = hashlib.sha1 if hash_len == 20 else hashlib.sha256
    for name, entry in entries.items():
        if entry.unchecked or entry.mode == 0o160000:  # submodules are not our content
            continue
        if not _same_file(repo.worktree / os.fsdecode(name), entry, digest):
            return False
    return not _untracked_manifests(directory, repo.worktree, entries)


def _same_file(path: Path, entry: _Entry, digest: Callable[[], hashlib._Hash]) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        if entry.mode != 0o120000:
            return False
        content = os.fsencode(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        want = 0o100755 if st.st_mode & stat.S_IXUSR else 0o100644
        if entry.mode != want or st.st_size != entry.size:
            return False
        if (st.st_mtime_ns // 10**9, st.st_mtime_ns % 10**9) == entry.mtime:
            return True  # what git assumes too: same size and time, same content
        content = _read_small(path, limit=MAX_INDEX)
    else:
        return False
    h = digest()
    h.update(b"blob %d\0" % len(content))
    h.update(content)
    return h.digest() == entry.oid


def _untracked_manifests(directory: Path, worktree: Path, tracked: dict[bytes, _Entry]) -> bool:
    for folder, subdirs, files in os.walk(directory, followlinks=False):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in files:
            if is_manifest_file(name):
                path = os.fsencode(Path(folder, name).relative_to(worktree))
                if path not in tracked:
                    return True
    return False
