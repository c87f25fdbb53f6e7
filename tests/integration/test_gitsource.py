"""``reconciler run`` following a git repository (SPEC §6, issue 14) against the real libvirtd.

A bare repository on local disk, served through ``file://`` and over SSH on
loopback (Debian's ``sshd``, started here as ``sshd -D -f CONFIG`` on
127.0.0.1 with a throwaway host key and user key, killed in teardown);
commits made in a clone and signed by git with ``gpg.format=ssh``
(``ssh-keygen -Y sign``). The daemon is the one of test_daemon.py (its
``Env`` and ``Daemon`` helpers), configured with ``source.git`` and a 1 s
poll interval.

Measured: push -> VM running, median of 10 commits (printed; merged into
``$RECONCILER_BENCH_OUT`` as ``git_push_to_running_s``, for
docs/performance.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import test_daemon
from tests.integration.test_daemon import Daemon, Env, kvm, record_bench, wait_until

env = test_daemon.env  # the fixture: a test's config, state and libvirt objects, cleaned up

INTERVAL = "1s"
COMMITS = 10


# --- keys and a repository ---------------------------------------------------------


def keygen(path: Path, comment: str = "test") -> Path:
    """A throwaway ed25519 key pair: ``path`` and ``path.pub``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return path


def allowed_signers(path: Path, *keys: Path) -> Path:
    lines = [f'tester@example.com namespaces="git" {k.with_suffix(".pub").read_text().strip()}'
             for k in keys]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Repo:
    """A bare repository (``bare``) and a clone (``work``) that commits and pushes to it."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, root: Path) -> Repo:
        bare, work = root / "remote.git", root / "work"
        git("init", "--quiet", "--bare", "-b", "main", str(bare))
        git("init", "--quiet", "-b", "main", str(work))
        return cls(bare, work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, Any], *, key: Path | None, message: str = "change",
               remove: tuple[str, ...] = ()) -> str:  # fmt: skip
        """Write ``files`` (path -> manifest documents), commit (signed with ``key``)."""
        for name, docs in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("---\n".join(yaml.safe_dump(dict(d), sort_keys=False) for d in docs))
        for name in remove:
            (self.work / name).unlink()
        git("-C", str(self.work), "add", "-A")
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "-c",
                "commit.gpgsign=true"] if key else ["-c", "commit.gpgsign=false"]  # fmt: skip
        git("-C", str(self.work), "-c", "user.name=Tester", "-c", "user.email=tester@example.com",
            *sign, "commit", "--quiet", "--allow-empty", "-m", message)  # fmt: skip
        return self.head()

    def head(self) -> str:
        return git("-C", str(self.work), "rev-parse", "HEAD").strip()

    def push(self, *, force: bool = False) -> float:
        git("-C", str(self.work), "push", "--quiet", *(["--force"] if force else []),
            str(self.bare), "HEAD:main")  # fmt: skip
        return time.monotonic()


def git(*args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    done = subprocess.run(["git", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


# --- the daemon's view ---------------------------------------------------------------


def status(env: Env) -> dict[str, Any]:
    """status.json ({} before the first is written)."""
    try:
        data: dict[str, Any] = json.loads((env.state / "status.json").read_text())
    except FileNotFoundError:
        return {}
    return data


def running(env: Env, name: str) -> bool:
    dom = env.domain(name)
    return dom is not None and bool(dom.isActive())


def source_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"git": {"url": url, "interval": INTERVAL, **extra}}


def reload(env: Env, daemon: Daemon, **source: Any) -> int:
    """Rewrite the configuration's source.git and SIGHUP; returns a log mark."""
    mark = daemon.mark()
    env.write_config(source={"git": source})
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded", lambda e: e.get("event") == "config.reloaded", since=mark)
    return mark


def refused(daemon: Daemon, since: int, *, times: int = 2, text: str) -> list[dict[str, Any]]:
    """Wait until ``times`` refusals (source.refused / source.fetch_failed) naming ``text``
    were logged since ``since``: one line each, retried with a growing wait."""
    def hits() -> list[dict[str, Any]]:
        return [e for e in daemon.events(since)
                if e.get("event") in ("source.refused", "source.fetch_failed")
                and text in str(e.get("error"))]  # fmt: skip

    wait_until(f"{times} refusals naming {text!r}", lambda: len(hits()) >= times,
               timeout=30, daemon=daemon)  # fmt: skip
    found = hits()
    assert all("\n" not in str(e["error"]) for e in found)
    waits = [float(e["retry_in"]) for e in found]
    assert waits == sorted(waits) and waits[-1] > waits[0], f"no backoff: {waits}"
    return found


def assert_kept(env: Env, revision: str, error: str, *, vm: str) -> None:
    """The refusal is in status.json, the good revision stays applied, nothing pruned."""
    def shown() -> bool:
        report = status(env)
        return error in str(report.get("source_error"))

    wait_until(f"status.json shows {error!r}", shown, timeout=10)
    report = status(env)
    assert report["revision"] == revision
    assert "\n" not in report["source_error"]
    assert running(env, vm)
    current = os.readlink(env.state / "snapshots" / "current")
    assert current.split(".")[0] == revision and (env.state / "snapshots" / current).is_dir()
    shown_text = env.cli("status", "--state-dir", str(env.state)).stdout
    assert f"git source: {report['source_error']}" in shown_text, shown_text


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.create(tmp_path / "git")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "keys"
    d.mkdir()
    return {"good": keygen(d / "good"), "stranger": keygen(d / "stranger")}


# --- 1. commits are applied; how fast --------------------------------------------------


def test_pushed_commits_run_within_the_interval(env: Env, repo: Repo, keys: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    signers = allowed_signers(env.root / "allowed_signers", keys["good"])
    env.write_config(source=source_config(repo.url, path="/hosts/all",
                                          verify={"allowedSignersFile": str(signers)}))  # fmt: skip
    first = env.n("g0")
    repo.commit({"hosts/all/g0.yaml": [kvm(first)], "README.md": []}, key=keys["good"])
    repo.push()
    daemon = env.start()
    wait_until(f"{first} running", lambda: running(env, first), daemon=daemon)
    latencies: list[float] = []
    for i in range(1, COMMITS + 1):
        name = env.n(f"g{i}")
        commit = repo.commit({f"hosts/all/g{i}.yaml": [kvm(name)]}, key=keys["good"])
        pushed = repo.push()
        done = wait_until(f"{name} running", lambda n=name: running(env, n),
                          daemon=daemon)  # fmt: skip
        latencies.append(done - pushed)
        # the commit id is the revision: in the log, the status file and the inventory
        daemon.wait_for("its pass", lambda e, c=commit: e.get("event") == "reconcile.done"
                        and e.get("revision") == c)  # fmt: skip
    median = statistics.median(latencies)
    with capsys.disabled():
        print(f"\ngit source: push -> running, {COMMITS} commits, interval {INTERVAL}: "
              f"median {median:.2f}s, max {max(latencies):.2f}s")  # fmt: skip
    record_bench("git_push_to_running_s", {"interval": INTERVAL, "median": round(median, 2),
                                            "max": round(max(latencies), 2)})  # fmt: skip
    assert median <= 1.0 + 2.0, latencies
    head = repo.head()
    assert status(env)["revision"] == head
    record = env.inventory()[f"VirtualMachine/{env.n(f'g{COMMITS}')}"]
    assert record["revision"] == head
    # immutable, read-only snapshots; the last keepSnapshots (5) kept, the current one among them
    snapshots = env.state / "snapshots"
    current = snapshots / os.readlink(snapshots / "current")
    assert current.name.startswith(head + ".")  # the sub-path's hash follows the commit
    kept = [p for p in snapshots.iterdir() if not p.name.startswith((".", "current"))]
    assert len(kept) == 5, kept
    assert sorted(p.name for p in current.iterdir()) == sorted(
        f"g{i}.yaml" for i in range(COMMITS + 1)
    )
    assert all(p.stat().st_mode & 0o222 == 0 for p in [current, *current.iterdir()])
    assert daemon.stop() == 0


# --- 2. verification and history --------------------------------------------------------


def test_only_signed_descendants_are_applied(env: Env, repo: Repo, keys: dict[str, Path]) -> None:
    signers = allowed_signers(env.root / "allowed_signers", keys["good"])
    env.write_config(source=source_config(repo.url, verify={"allowedSignersFile": str(signers)}))
    a, b, c, d = env.n("a"), env.n("b"), env.n("c"), env.n("d")
    base = repo.commit({"a.yaml": [kvm(a)]}, key=keys["good"])
    repo.push()
    daemon = env.start()
    wait_until(f"{a} running", lambda: running(env, a), daemon=daemon)

    # unsigned: refused, retried with backoff, never applied
    mark = daemon.mark()
    unsigned = repo.commit({"b.yaml": [kvm(b)]}, key=None)
    repo.push()
    found = refused(daemon, mark, text="is not signed")
    assert found[0]["commit"] == unsigned and found[0]["revision"] == base
    assert_kept(env, base, f"commit {unsigned[:12]} is not signed", vm=a)

    # signed by a key that is not allowed: refused
    git("-C", str(repo.work), "reset", "--quiet", "--hard", base)
    mark = daemon.mark()
    stranger = repo.commit({"b.yaml": [kvm(b)]}, key=keys["stranger"])
    repo.push(force=True)
    refused(daemon, mark, text=f"signature of commit {stranger[:12]} does not verify")
    assert_kept(env, base, "does not verify", vm=a)
    assert env.domain(b) is None, "an unsigned or wrongly signed commit was applied"

    # a good commit on top of the applied one is applied (after the backoff)
    git("-C", str(repo.work), "reset", "--quiet", "--hard", base)
    good = repo.commit({"c.yaml": [kvm(c)]}, key=keys["good"])
    repo.push(force=True)
    wait_until(f"{c} running", lambda: running(env, c), timeout=40, daemon=daemon)
    wait_until("its revision, the error cleared", lambda: status(env).get("revision") == good
               and status(env).get("source_error") is None)  # fmt: skip

    # a force push to a signed commit that is not a descendant: refused
    git("-C", str(repo.work), "reset", "--quiet", "--hard", base)
    mark = daemon.mark()
    rewritten = repo.commit({"d.yaml": [kvm(d)]}, key=keys["good"])
    repo.push(force=True)
    refused(daemon, mark, text=f"commit {rewritten[:12]} is not a descendant of the applied")
    assert_kept(env, good, "allowForcePush", vm=c)
    assert env.domain(d) is None
    assert running(env, a)

    # allowed when configured
    reload(env, daemon, url=repo.url, interval=INTERVAL, allowForcePush=True,
           verify={"allowedSignersFile": str(signers)})  # fmt: skip
    wait_until(f"{d} running", lambda: running(env, d), daemon=daemon)
    wait_until("its revision", lambda: status(env).get("revision") == rewritten)
    assert env.domain(c) is None  # its manifest is not in the rewritten history: pruned
    assert daemon.stop() == 0


# --- 3. bad input: each one line, the last good revision kept --------------------------


def test_bad_sources_keep_the_last_good_revision(env: Env, repo: Repo) -> None:
    a = env.n("a")
    repo.commit({"vms/a.yaml": [kvm(a)]}, key=None)
    repo.push()
    good = repo.head()
    env.write_config(source=source_config(repo.url, path="vms"))
    daemon = env.start()
    wait_until(f"{a} running", lambda: running(env, a), daemon=daemon)
    wait_until("revision", lambda: status(env).get("revision") == good)
    cases = [
        ({"url": f"file://{env.root}/nowhere.git"}, "does not appear to be a git repository"),
        ({"url": repo.url, "ref": "no-such-branch"}, "couldn't find remote ref no-such-branch"),
        ({"url": repo.url, "path": "no/such/folder"}, "path 'no/such/folder' does not exist"),
    ]
    for source, error in cases:
        mark = reload(env, daemon, interval=INTERVAL, **source)
        refused(daemon, mark, text=error)
        assert_kept(env, good, error, vm=a)
    # and back: the error clears, nothing was lost
    reload(env, daemon, url=repo.url, path="vms", interval=INTERVAL)
    wait_until("source_error cleared", lambda: status(env).get("source_error") is None,
               timeout=30)  # fmt: skip
    assert status(env)["revision"] == good and running(env, a)
    assert daemon.stop() == 0


def test_nothing_is_reconciled_before_a_first_good_commit(env: Env, repo: Repo,
                                                          keys: dict[str, Path]) -> None:  # fmt: skip
    signers = allowed_signers(env.root / "allowed_signers", keys["good"])
    env.write_config(source=source_config(repo.url, verify={"allowedSignersFile": str(signers)}))
    a = env.n("a")
    unsigned = repo.commit({"a.yaml": [kvm(a)]}, key=None)
    repo.push()
    daemon = env.start()
    refused(daemon, 0, text=f"commit {unsigned[:12]} is not signed")
    report = status(env)
    assert report["revision"] is None and "no commit of" in str(report["last_error"])
    assert env.domain(a) is None
    assert not (env.state / "snapshots" / "current").exists()
    assert daemon.stop() == 0


# --- 4. over SSH on loopback --------------------------------------------------------------


@dataclass
class Sshd:
    port: int
    host_key: Path
    user_key: Path
    proc: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    binary = Path("/usr/sbin/sshd")
    if not binary.exists():
        pytest.skip("openssh-server is not installed (scripts/setup-host.sh installs it)")
    d = tmp_path / "sshd"
    d.mkdir()
    host_key, user_key = keygen(d / "host_key"), keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_key.with_suffix(".pub").read_text())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    port = _free_port()
    config = d / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "AuthenticationMethods publickey", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding no", "X11Forwarding no",
        "AllowUsers root", "LogLevel ERROR", "",
    ]))  # fmt: skip
    proc = subprocess.Popen([str(binary), "-D", "-e", "-f", str(config)],
                            stdin=subprocess.DEVNULL, stderr=(d / "sshd.log").open("wb"))  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen"
            time.sleep(0.05)
        yield Sshd(port, host_key, user_key, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_over_ssh_on_loopback(env: Env, repo: Repo, sshd: Sshd, keys: dict[str, Path]) -> None:
    known = env.root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key.with_suffix('.pub').read_text()}")
    signers = allowed_signers(env.root / "allowed_signers", keys["good"])
    url = f"ssh://root@127.0.0.1:{sshd.port}{repo.bare}"
    ssh = {"url": url, "interval": INTERVAL, "sshKeyFile": str(sshd.user_key),
           "knownHostsFile": str(known), "verify": {"allowedSignersFile": str(signers)}}  # fmt: skip
    env.write_config(source={"git": ssh})
    a, b = env.n("a"), env.n("b")
    repo.commit({"a.yaml": [kvm(a)]}, key=keys["good"])
    repo.push()
    good = repo.head()
    daemon = env.start()
    wait_until(f"{a} running", lambda: running(env, a), daemon=daemon)
    wait_until("its revision", lambda: status(env).get("revision") == good)

    # a key the server does not accept
    mark = reload(env, daemon, **{**ssh, "sshKeyFile": str(keys["stranger"])})
    refused(daemon, mark, text="Permission denied (publickey)")
    assert_kept(env, good, "Permission denied", vm=a)

    # a server whose host key is not the known one
    other = env.root / "other_known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} {keys['stranger'].with_suffix('.pub').read_text()}")
    mark = reload(env, daemon, **{**ssh, "knownHostsFile": str(other)})
    refused(daemon, mark, text="Host key verification failed")
    assert_kept(env, good, "Host key verification failed", vm=a)

    # an unsigned commit over ssh is refused like any other; a signed one is applied
    reload(env, daemon, **ssh)
    unsigned = repo.commit({"b.yaml": [kvm(b)]}, key=None)
    mark = daemon.mark()
    repo.push()
    refused(daemon, mark, text=f"commit {unsigned[:12]} is not signed")
    assert env.domain(b) is None
    signed = repo.commit({}, key=keys["good"], message="signed on top")
    repo.push()
    wait_until(f"{b} running", lambda: running(env, b), timeout=40, daemon=daemon)
    wait_until("its revision", lambda: status(env).get("revision") == signed)
    assert daemon.stop() == 0


# --- 5. one-shot plan and apply from the git source --------------------------------------


def test_plan_and_apply_with_git(env: Env, repo: Repo, keys: dict[str, Path]) -> None:
    signers = allowed_signers(env.root / "allowed_signers", keys["good"])
    env.write_config(source=source_config(repo.url, verify={"allowedSignersFile": str(signers)}))
    a = env.n("a")
    common = ("--state-dir", str(env.state), "--connect", env.uri)
    unsigned = repo.commit({"a.yaml": [kvm(a)]}, key=None)
    repo.push()
    refused_plan = env.cli("plan", "--git", *common)
    assert refused_plan.returncode == 1
    assert f"git source: refused: commit {unsigned[:12]} is not signed" in refused_plan.stderr
    signed = repo.commit({}, key=keys["good"], message="signed")
    repo.push()
    planned = env.cli("plan", "--git", *common)
    assert planned.returncode == 2, planned.stderr  # changes, and nothing switched to
    assert not (env.state / "snapshots" / "current").exists()
    applied = env.cli("apply", "--git", "--yes", *common)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert running(env, a)
    assert env.inventory()[f"VirtualMachine/{a}"]["revision"] == signed
    assert os.readlink(env.state / "snapshots" / "current") == signed
    assert env.cli("plan", "--git", *common).returncode == 0
    both = env.cli("plan", "--git", str(env.manifests), *common)
    assert both.returncode == 1 and "--git takes no folder" in both.stderr


# --- 6. stopping while a fetch hangs ------------------------------------------------------


def test_sigterm_ends_a_hanging_fetch(env: Env, tmp_path: Path) -> None:
    """A server that accepts the connection and never answers: SIGTERM still stops the
    daemon at once (git and its ssh are killed), and nothing was ever applied."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        known = tmp_path / "known_hosts"
        known.write_text("")
        env.write_config(source={"git": {"url": f"ssh://git@127.0.0.1:{port}/repo.git",
                                         "knownHostsFile": str(known), "interval": INTERVAL}})  # fmt: skip
        daemon = env.start()
        wait_until("the daemon waiting for the silent server", lambda: any(
            "ssh" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            for p in _children(daemon.pid)), daemon=daemon)  # fmt: skip
        started = time.monotonic()
        assert daemon.stop(timeout=10) == 0
        assert time.monotonic() - started < 5
    assert not (env.state / "snapshots" / "current").exists()


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (git runs ssh in its own session)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found
