"""The git source: the daemon follows a git repository itself (SPEC §6).

Configured by ``source.git`` (settings.py): a URL, a branch or tag (``ref``),
a sub-path, a poll interval, an SSH key and known-hosts file, and optionally
``verify.allowedSignersFile`` and ``allowForcePush``. Each ``GitSource.sync``:

1. fetches ``ref`` into a private bare repository, ``STATE/git`` (created
   here; its configuration is ours, never the remote's);
2. refuses the fetched commit when it is not a descendant of the one applied
   now (a force push; unless ``allowForcePush``), when verification is on and
   its SSH signature does not verify against the allowed signers (``git
   verify-commit`` with ``gpg.format=ssh``, i.e. ``ssh-keygen -Y verify``), or
   when ``path`` is not a folder in it;
3. materialises the commit's tree under ``path`` as an immutable snapshot,
   ``STATE/snapshots/<commit>/`` (files 0444, folders 0555, owned by the
   daemon's user: root), written under a hidden temporary name, fsynced and
   renamed into place whole; only regular files are written, byte for byte as
   committed (no filters, no attributes), and a commit with a symlink or a
   submodule under ``path`` is refused (what it points to would be missing);
4. switches ``STATE/snapshots/current`` to it by renaming a new symlink over
   the old one, so a reader finds the old snapshot or the new one, never a
   half-written tree; then removes old snapshots, keeping ``keepSnapshots``.

Anything that goes wrong (an unreachable repository, a wrong ref, a bad key,
an unsigned or wrongly signed commit, a force push, a missing sub-path) ends
the sync with one line in ``SyncResult.error``; nothing is switched or
removed, and the commit applied before stays applied. ``Poller`` calls
``sync`` every ``interval``, and after a failure backs off (doubling, capped).

git runs as the CLI (docs/decisions.md says why) with nothing of the
repository's or the machine's configuration: ``GIT_CONFIG_NOSYSTEM``, an
empty ``HOME`` of our own under the state directory, no global file, hooks
pointed at ``/dev/null``, no fsmonitor, only the file, ssh and https
transports, no submodules, no automatic gc, and ssh with ``-F /dev/null``,
``BatchMode`` and strict host key checking against ``knownHostsFile``.

Metrics (and anything else that wants to know) can follow every sync:
``GitSource.observers`` is a list of callables, each called with the
``SyncResult`` after every ``sync``; ``fetch_failed`` says the fetch itself
failed (a git-fetch-failures counter), ``revision`` is the commit applied now
(an applied-revision metric), ``refused`` a commit refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import statedir
from reconciler.atomicfile import fsync_dir
from reconciler.backoff import RETRY, Backoff

# the folders in the state directory: statedir.GIT_REPOSITORY, GIT_HOME, GIT_SNAPSHOTS
CURRENT = "current"  # STATE/snapshots/current -> <name>
FETCHED_REF = "refs/reconciler/fetched"
APPLIED_REF = "refs/reconciler/applied"
GIT_TIMEOUT = 120.0  # seconds for one git command (a fetch over a slow link)
RETRY_MAX = RETRY.cap  # the longest wait between two polls after failures (5 minutes)
MAX_FILE = 64 << 20  # a single manifest larger than this is not materialised
_HEX = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_SNAPSHOT = re.compile(r"^([0-9a-f]{40}(?:[0-9a-f]{24})?)(?:\.([0-9a-f]{8}))?$")
_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]+(?<![/.])$")
_SAFE_OPTIONS = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.attributesFile=/dev/null",
    "-c", "core.askPass=/bin/false",
    "-c", "credential.helper=",
    "-c", "protocol.allow=never",
    "-c", "protocol.file.allow=always",
    "-c", "protocol.ssh.allow=always",
    "-c", "protocol.https.allow=always",
    "-c", "submodule.recurse=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "transfer.fsckObjects=true",
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
)  # fmt: skip


class SourceError(Exception):
    """One line: why the fetched commit is not applied."""


# --------------------------------------------------------------------------
# Configuration (settings.py reads ``source`` through ``git_source_from_config``)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GitSourceConfig:
    """``source.git`` of the configuration; ``interval`` in seconds."""

    url: str
    ref: str = "main"
    path: str = ""  # inside the repository, no leading or trailing "/"; "": its root
    interval: float = 60.0
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    allowed_signers_file: Path | None = None  # verify.allowedSignersFile: verification on
    allow_force_push: bool = False
    keep_snapshots: int = 5


def git_source_from_config(value: object) -> GitSourceConfig | None:
    """``source`` of the configuration file (checked against config.schema.json), or of
    an override, -> the git source, or None (``source: {}``: the plain manifestDir).
    Raises ValueError naming what is wrong."""
    from reconciler.units import parse_duration, too_long

    if isinstance(value, GitSourceConfig) or value is None:
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping such as {{git: {{url: ...}}}}, got {value!r}")
    git = value.get("git")
    if git is None:
        return None
    if not isinstance(git, Mapping):
        raise ValueError(f"git: expected a mapping with url, ref, path ..., got {git!r}")
    url = git.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("git.url: a repository URL is required (e.g. ssh://git@host/repo.git)")
    if url.startswith("-") or "::" in url.split("/", 1)[0]:
        raise ValueError(f"git.url: {url!r} is not a repository URL")
    ref = git.get("ref", "main")
    if not isinstance(ref, str) or not _REF.match(ref):
        raise ValueError(f"git.ref: {ref!r} is not a branch or tag name")
    path = normalise_path(git.get("path", "/"))
    interval_value = git.get("interval", "1m")
    try:
        interval = (
            float(interval_value)
            if isinstance(interval_value, int | float) and not isinstance(interval_value, bool)
            else parse_duration(str(interval_value).strip())
        )
    except ValueError:
        raise ValueError(f"git.interval: {interval_value!r} is not a duration (e.g. 1m)") from None
    if not interval > 0:
        raise ValueError(f"git.interval: {interval_value!r} must be more than zero")
    if (why := too_long(interval)) is not None:
        raise ValueError(f"git.interval: {interval_value!r} {why}")
    verify = git.get("verify") or {}
    if not isinstance(verify, Mapping):
        raise ValueError(f"git.verify: expected {{allowedSignersFile: PATH}}, got {verify!r}")
    keep = git.get("keepSnapshots", 5)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"git.keepSnapshots: {keep!r} is not a number of 1 or more")
    force = git.get("allowForcePush", False)
    if not isinstance(force, bool):
        raise ValueError(f"git.allowForcePush: {force!r} is not true or false")
    return GitSourceConfig(
        url=url.strip(),
        ref=ref,
        path=path,
        interval=interval,
        ssh_key_file=_file(git.get("sshKeyFile"), "git.sshKeyFile"),
        known_hosts_file=_file(git.get("knownHostsFile"), "git.knownHostsFile"),
        allowed_signers_file=_file(verify.get("allowedSignersFile"),
                                   "git.verify.allowedSignersFile"),
        allow_force_push=force,
        keep_snapshots=keep,
    )  # fmt: skip


def normalise_path(value: object) -> str:
    """A sub-path of the repository -> ``a/b`` (``""`` for its root); ValueError for one
    that leaves it (``..``) or is not text."""
    if not isinstance(value, str):
        raise ValueError(f"git.path: expected a path inside the repository, got {value!r}")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"git.path: {value!r} leaves the repository ('..')")
    return "/".join(parts)


def _file(value: object, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not os.path.isabs(value):
        raise ValueError(f"{name}: {value!r} is not an absolute path")
    return Path(value)


# --------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------


def snapshot_name(commit: str, path: str = "") -> str:
    """The folder name of ``commit``'s snapshot: the commit id, with a short hash of the
    sub-path when there is one (a change of ``path`` must not reuse a snapshot)."""
    if not _HEX.fullmatch(commit):
        raise ValueError(f"not a commit id: {commit!r}")
    if not path:
        return commit
    return f"{commit}.{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def commit_of_snapshot(name: str) -> str | None:
    """The commit a snapshot folder name stands for, or None for any other name."""
    match = _SNAPSHOT.match(name)
    return match.group(1) if match else None


def refusal_for_move(
    applied: str | None, fetched: str, *, descendant: bool, allow_force_push: bool
) -> str | None:
    """Why moving from the ``applied`` commit to ``fetched`` is refused, or None.

    ``descendant``: whether ``fetched`` has ``applied`` among its ancestors (or is it).
    Nothing applied yet, the same commit, or a descendant: allowed; anything else is a
    history rewrite (a force push, a branch moved back), allowed only when configured.
    """
    if applied is None or applied == fetched or descendant or allow_force_push:
        return None
    return (
        f"commit {fetched[:12]} is not a descendant of the applied {applied[:12]} "
        "(history rewritten or moved back; set allowForcePush: true to accept it)"
    )


def next_poll_delay(interval: float, failures: int) -> float:
    """Seconds until the next poll: ``interval``, doubled per failure in a row, capped at
    ``RETRY_MAX`` (or ``interval`` itself when that is longer)."""
    if failures <= 0:
        return interval
    cap = max(RETRY_MAX, interval)
    return Backoff(first=min(2 * interval, cap), cap=cap).delay(failures)


def _one_line(text: str, limit: int = 300) -> str:
    """The line of git's (or ssh's) message that says what failed: the last one that is
    not git's boilerplate (ssh puts its verdict last, after any banner)."""
    lines = [line.strip().removeprefix("fatal: ").removeprefix("error: ").rstrip(".")
             for line in text.splitlines()]  # fmt: skip
    kept = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    return (kept[-1] if kept else "(no message)")[:limit]


_BOILERPLATE = (
    "Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists",
)


# --------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one ``GitSource.sync`` did."""

    revision: str | None  # the commit applied now (the ``current`` snapshot); None: none yet
    directory: Path | None  # its snapshot folder
    changed: bool = False  # this sync switched to a new commit
    fetched: str | None = None  # the commit ``ref`` pointed to, when the fetch worked
    error: str | None = None  # one line: why ``fetched`` is not applied, or the fetch failed
    fetch_failed: bool = False  # the fetch itself failed (unreachable, wrong ref, bad key)
    refused: str | None = None  # the commit refused (unsigned, force-pushed, no such path)


@dataclass
class GitSource:
    config: GitSourceConfig
    state_dir: Path
    observers: list[Callable[[SyncResult], None]] = field(default_factory=list)
    # checked while git runs: the daemon's SIGTERM ends a slow fetch at once
    should_stop: Callable[[], bool] = field(default=lambda: False)

    @property
    def git_dir(self) -> Path:
        return statedir.path(self.state_dir, statedir.GIT_REPOSITORY)

    @property
    def snapshots(self) -> Path:
        return statedir.path(self.state_dir, statedir.GIT_SNAPSHOTS)

    @property
    def _home(self) -> Path:
        return statedir.path(self.state_dir, statedir.GIT_HOME)

    def current(self) -> tuple[str, Path] | None:
        """The commit applied now and its snapshot folder (resolved), if any."""
        link = self.snapshots / CURRENT
        try:
            target = os.readlink(link)
        except OSError:
            return None
        commit = commit_of_snapshot(target)
        directory = self.snapshots / target
        if commit is None or "/" in target or not directory.is_dir():
            return None
        return commit, directory

    def sync(self, *, switch: bool = True) -> SyncResult:
        """Fetch, check, materialise and (``switch``) switch to the ref's commit. Never
        raises for bad input: ``SyncResult.error`` says why nothing changed."""
        try:
            result = self._sync(switch)
        except SourceError as exc:
            result = self._failed(str(exc), fetch_failed=False)
        except OSError as exc:  # a full or read-only state directory, a file in the way
            where = exc.filename or self.state_dir
            result = self._failed(f"cannot write the snapshot: {where}: {exc.strerror or exc}",
                                  fetch_failed=False)  # fmt: skip
        for observer in self.observers:
            observer(result)
        return result

    def _failed(self, error: str, *, fetch_failed: bool, fetched: str | None = None,
                refused: str | None = None) -> SyncResult:  # fmt: skip
        now = self.current()
        return SyncResult(
            revision=now[0] if now else None,
            directory=now[1] if now else None,
            fetched=fetched,
            error=error,
            fetch_failed=fetch_failed,
            refused=refused,
        )

    def _sync(self, switch: bool) -> SyncResult:
        self._prepare()
        cfg = self.config
        fetch = self._git("fetch", "--no-tags", "--no-write-fetch-head",
                          "--no-recurse-submodules", "--quiet", "--", cfg.url,
                          f"+{cfg.ref}:{FETCHED_REF}", check=False)  # fmt: skip
        if fetch.returncode != 0:
            return self._failed(
                f"git fetch of {cfg.ref!r} from {cfg.url} failed: {_one_line(fetch.stderr)}",
                fetch_failed=True,
            )
        fetched = self._git("rev-parse", "--verify", "--quiet", f"{FETCHED_REF}^{{commit}}",
                            check=False).stdout.strip()  # fmt: skip
        if not _HEX.fullmatch(fetched):
            return self._failed(f"{cfg.ref!r} of {cfg.url} is not a commit", fetch_failed=False)
        now = self.current()
        applied = now[0] if now else None
        name = snapshot_name(fetched, cfg.path)
        if now is not None and now[1].name == name:
            return SyncResult(revision=applied, directory=now[1], fetched=fetched)
        try:
            self._check(applied, fetched)
            directory = self._materialise(fetched, name)
        except SourceError as exc:
            return self._failed(str(exc), fetch_failed=False, fetched=fetched, refused=fetched)
        if not switch:
            return SyncResult(revision=fetched, directory=directory, fetched=fetched)
        self._switch(name)
        self._git("update-ref", APPLIED_REF, fetched)
        self._prune()
        return SyncResult(revision=fetched, directory=directory, changed=True, fetched=fetched)

    # -- checks -----------------------------------------------------------------------

    def _check(self, applied: str | None, fetched: str) -> None:
        cfg = self.config
        descendant = False
        if applied is not None and applied != fetched and not cfg.allow_force_push:
            descendant = self._git("merge-base", "--is-ancestor", applied, fetched,
                                   check=False).returncode == 0  # fmt: skip
        refusal = refusal_for_move(applied, fetched, descendant=descendant,
                                   allow_force_push=cfg.allow_force_push)  # fmt: skip
        if refusal is not None:
            raise SourceError(f"refused: {refusal}")
        if cfg.allowed_signers_file is not None:
            self._verify(fetched, cfg.allowed_signers_file)
        where = f"{fetched}:{cfg.path}" if cfg.path else f"{fetched}^{{tree}}"
        kind = self._git("cat-file", "-t", where, check=False)
        if kind.returncode != 0 or kind.stdout.strip() != "tree":
            what = "does not exist" if kind.returncode != 0 else "is not a folder"
            raise SourceError(f"refused: path {cfg.path!r} {what} in commit {fetched[:12]}")

    def _verify(self, commit: str, signers: Path) -> None:
        if not signers.is_file():
            raise SourceError(f"refused: allowedSignersFile {signers} is not a readable file")
        raw = self._git("cat-file", "commit", commit).stdout
        header = raw.split("\n\n", 1)[0]
        if not any(line.startswith("gpgsig") for line in header.splitlines()):
            raise SourceError(f"refused: commit {commit[:12]} is not signed")
        check = self._git("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}",
                          "-c", "gpg.ssh.program=ssh-keygen", "verify-commit", commit,
                          check=False)  # fmt: skip
        if check.returncode != 0:
            raise SourceError(
                f"refused: the signature of commit {commit[:12]} does not verify against "
                f"{signers}: {_one_line(check.stderr) if check.stderr.strip() else 'bad signature'}"
            )

    # -- files ------------------------------------------------------------------------

    def _prepare(self) -> None:
        for directory in (self.state_dir, self.snapshots, self._home):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (self.git_dir / "HEAD").is_file():
            self._git_plain("init", "--quiet", "--bare", str(self.git_dir))
        for leftover in self.snapshots.glob(".tmp-*"):  # a sync killed half-way
            _remove_tree(leftover)

    def _materialise(self, commit: str, name: str) -> Path:
        """The snapshot folder of ``commit`` (made now, or kept from before)."""
        final = self.snapshots / name
        if final.is_dir():
            return final
        tree = f"{commit}:{self.config.path}" if self.config.path else f"{commit}^{{tree}}"
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", tree).stdout
        entries: list[tuple[str, str, str]] = []  # mode, object, path
        for record in listing.split("\0"):
            if not record:
                continue
            meta, _, path = record.partition("\t")
            mode, kind, oid = meta.split(" ")
            if kind == "blob" and mode in ("100644", "100755"):
                entries.append((mode, oid, path))
            elif mode in ("120000", "160000"):
                # not materialised; a manifest behind it would be missing from the
                # snapshot, and what it declared pruned: the commit is refused instead
                what = "a symlink" if mode == "120000" else "a submodule"
                raise SourceError(f"refused: commit {commit[:12]}: {path} is {what}; a git "
                                  "source takes regular files only (commit the file itself)")
        tmp = self.snapshots / f".tmp-{name}-{os.getpid()}"
        _remove_tree(tmp)
        tmp.mkdir(mode=0o700)
        try:
            self._write_blobs(tmp, entries)
            for directory, _dirs, files in os.walk(tmp, topdown=False):
                for filename in files:
                    os.chmod(os.path.join(directory, filename), 0o444)
                fsync_dir(Path(directory))
                os.chmod(directory, 0o555)
            os.utime(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # else: another sync (plan --git) made it first
                    raise
                _remove_tree(tmp)
            fsync_dir(self.snapshots)
        except BaseException:
            _remove_tree(tmp)
            raise
        return final

    def _write_blobs(self, root: Path, entries: list[tuple[str, str, str]]) -> None:
        if not entries:
            return
        proc = subprocess.Popen(
            ["git", *_SAFE_OPTIONS, "--git-dir", str(self.git_dir), "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self._env(), cwd=self.git_dir,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write("".join(f"{oid}\n" for _, oid, _ in entries).encode())
            proc.stdin.close()
            for mode, oid, path in entries:
                header = proc.stdout.readline().decode().split()
                if len(header) != 3 or header[0] != oid or header[1] != "blob":
                    raise SourceError(f"cannot read {path} of the commit: {' '.join(header)}")
                size = int(header[2])
                if size > MAX_FILE:
                    raise SourceError(f"refused: {path} is larger than {MAX_FILE >> 20} MiB")
                data = proc.stdout.read(size)
                proc.stdout.read(1)  # the newline after each object
                target = root.joinpath(*path.split("/"))
                if any(p in ("", ".", "..") for p in path.split("/")):
                    raise SourceError(f"refused: unsafe path {path!r} in the commit")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o755 if mode == "100755" else 0o644)  # fmt: skip
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            proc.stdout.close()
            proc.wait(GIT_TIMEOUT)

    def _switch(self, name: str) -> None:
        """Point ``current`` at ``name``: a new symlink renamed over the old one."""
        link = self.snapshots / CURRENT
        new = self.snapshots / f".tmp-{CURRENT}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            new.unlink()
        os.symlink(name, new)
        os.replace(new, link)
        fsync_dir(self.snapshots)
        os.utime(self.snapshots / name)  # its place in the keep-the-last-N order

    def _prune(self) -> None:
        """Keep the ``keep_snapshots`` most recently applied snapshots (current always)."""
        now = self.current()
        found: list[tuple[float, Path]] = []
        for entry in self.snapshots.iterdir():
            if commit_of_snapshot(entry.name) is None or entry.is_symlink():
                continue
            if now is not None and entry.name == now[1].name:
                continue
            with contextlib.suppress(OSError):
                found.append((entry.stat().st_mtime, entry))
        found.sort(reverse=True)
        for _, old in found[max(0, self.config.keep_snapshots - 1) :]:
            _remove_tree(old)

    # -- running git ---------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        cfg = self.config
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=15",
               "-o", "UserKnownHostsFile=" + str(cfg.known_hosts_file or "/dev/null")]  # fmt: skip
        if cfg.ssh_key_file is not None:
            ssh += ["-o", "IdentitiesOnly=yes", "-i", str(cfg.ssh_key_file)]
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self._home),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_SSH_COMMAND": shlex.join(ssh),
            "GIT_SSH_VARIANT": "ssh",
        }

    def _git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(["git", *_SAFE_OPTIONS, "--git-dir", str(self.git_dir), *args], check)

    def _git_plain(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(["git", *_SAFE_OPTIONS, *args], True)

    def _run(self, command: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        """Run git; killed (with its ssh) after ``GIT_TIMEOUT`` or when ``should_stop``."""
        what = "git " + next(
            (a for a in command[1 + len(_SAFE_OPTIONS) :] if a[0].isalpha() and "=" not in a),
            "",
        )
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace",
                                    env=self._env(), cwd=self.state_dir,
                                    start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise SourceError(f"cannot run git: {exc}") from None
        deadline = time.monotonic() + GIT_TIMEOUT
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                stop = self.should_stop()
                if stop or time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    why = "the daemon is stopping" if stop else f"over {GIT_TIMEOUT:g}s"
                    raise SourceError(f"{what} stopped: {why}") from None
        done = subprocess.CompletedProcess(command, proc.returncode, out, err)
        if check and done.returncode != 0:
            raise SourceError(f"{what} failed: {_one_line(done.stderr)}")
        return done


def _remove_tree(path: Path) -> None:
    """Remove a snapshot (its folders are read-only: made writable first)."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# When to sync
# --------------------------------------------------------------------------


@dataclass
class Poller:
    """Calls ``source.sync`` every ``interval``; after a failure, with backoff.

    Logs one line per outcome that differs from the last one (a new commit
    applied, a new error), and each failed attempt at warning level with the
    wait until the next; ``error`` keeps the last one-line error (None once a
    sync succeeds), for the status file.
    """

    source: GitSource
    log: Any
    failures: int = 0
    next_poll: float = 0.0  # monotonic
    error: str | None = None

    def seconds_until_due(self) -> float:
        return max(0.0, self.next_poll - time.monotonic())

    def poll_if_due(self) -> SyncResult | None:
        if time.monotonic() < self.next_poll:
            return None
        started = time.monotonic()
        result = self.source.sync()
        cfg = self.source.config
        if result.error is None:
            self.failures = 0
        else:
            # backoff is for the same failure repeating; a new one starts again from short
            self.failures = self.failures + 1 if result.error == self.error else 1
        self.error = result.error
        delay = next_poll_delay(cfg.interval, self.failures)
        self.next_poll = time.monotonic() + delay
        if result.error is not None:
            self.log.error(
                "source.fetch_failed" if result.fetch_failed else "source.refused",
                error=result.error, url=cfg.url, ref=cfg.ref, commit=result.refused,
                revision=result.revision, retry_in=round(delay, 1),
            )  # fmt: skip
        elif result.changed:
            self.log.info("source.switched", url=cfg.url, ref=cfg.ref, revision=result.revision,
                          duration=round(time.monotonic() - started, 3))  # fmt: skip
        return result
