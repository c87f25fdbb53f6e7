"""gitsource.py's pure parts: source.git in the configuration, the descendant decision,
snapshot names, the poll backoff, git's messages on one line; and one local sync."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from reconciler import settings as settings_module
from reconciler.errors import ConfigError
from reconciler.gitsource import (
    RETRY_MAX,
    GitSource,
    GitSourceConfig,
    _one_line,
    commit_of_snapshot,
    git_source_from_config,
    next_poll_delay,
    refusal_for_move,
    snapshot_name,
)
from reconciler.settings import load_settings

A = "a" * 40
B = "b" * 40


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")


def load(tmp_path: Path, text: str) -> GitSourceConfig | None:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_settings(config_path=path, environ={}).git_source


# --- configuration ---------------------------------------------------------------------


def test_no_source_by_default(tmp_path: Path) -> None:
    assert load_settings(environ={}).git_source is None
    assert load(tmp_path, "source: {}\n") is None


def test_git_source_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "source:\n  git: {url: 'ssh://git@example.com/fleet.git'}\n")
    assert cfg == GitSourceConfig(url="ssh://git@example.com/fleet.git", ref="main", path="",
                                  interval=60.0)  # fmt: skip
    assert cfg.allowed_signers_file is None and not cfg.allow_force_push
    assert cfg.keep_snapshots == 5


def test_git_source_every_field(tmp_path: Path) -> None:
    cfg = load(tmp_path, """
        source:
          git:
            url: file:///srv/fleet.git
            ref: v1.2
            path: /hosts/kvm-1/
            interval: 15s
            sshKeyFile: /etc/reconciler/deploy_key
            knownHostsFile: /etc/reconciler/known_hosts
            allowForcePush: true
            keepSnapshots: 3
            verify: {allowedSignersFile: /etc/reconciler/allowed_signers}
        """)  # fmt: skip
    assert cfg == GitSourceConfig(
        url="file:///srv/fleet.git", ref="v1.2", path="hosts/kvm-1", interval=15.0,
        ssh_key_file=Path("/etc/reconciler/deploy_key"),
        known_hosts_file=Path("/etc/reconciler/known_hosts"),
        allowed_signers_file=Path("/etc/reconciler/allowed_signers"),
        allow_force_push=True, keep_snapshots=3,
    )  # fmt: skip


@pytest.mark.parametrize(("text", "message"), [
    ("source:\n  git: {}\n", "url"),
    ("source:\n  git: {url: x, branch: main}\n", "branch"),
    ("source:\n  git: {url: x, interval: soon}\n", "interval"),
    ("source:\n  git: {url: x, sshKeyFile: key}\n", "sshKeyFile"),
    ("source:\n  git: {url: x, verify: {}}\n", "allowedSignersFile"),
    ("source:\n  git: {url: x, keepSnapshots: 0}\n", "keepSnapshots"),
    ("source:\n  git: {url: x, ref: '--upload-pack=evil'}\n", "git.ref"),
    ("source:\n  git: {url: x, ref: 'a..b'}\n", "git.ref"),
    ("source:\n  git: {url: '--upload-pack=evil'}\n", "git.url"),
    ("source:\n  git: {url: 'ext::sh -c evil'}\n", "git.url"),
    ("source:\n  git: {url: x, path: ../../etc}\n", "leaves the repository"),
    ("source:\n  git: {url: x, interval: 0}\n", "more than zero"),
    ("source:\n  git: {url: x, interval: 99999999999999999999h}\n", "longer than 24h"),
])  # fmt: skip
def test_bad_git_source_is_one_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path, environ={})
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_source_is_not_settable_from_the_environment() -> None:
    assert not any("SOURCE" in v for v in settings_module.ENVIRONMENT_VARIABLES)


def test_override_takes_a_config_value() -> None:
    cfg = GitSourceConfig(url="file:///srv/x.git")
    assert git_source_from_config(cfg) is cfg
    assert git_source_from_config(None) is None


# --- decisions -------------------------------------------------------------------------


def test_descendant_decision() -> None:
    assert refusal_for_move(None, B, descendant=False, allow_force_push=False) is None
    assert refusal_for_move(A, A, descendant=False, allow_force_push=False) is None
    assert refusal_for_move(A, B, descendant=True, allow_force_push=False) is None
    assert refusal_for_move(A, B, descendant=False, allow_force_push=True) is None
    reason = refusal_for_move(A, B, descendant=False, allow_force_push=False)
    assert reason is not None and "\n" not in reason
    assert f"{B[:12]} is not a descendant of the applied {A[:12]}" in reason
    assert "allowForcePush" in reason


def test_snapshot_names() -> None:
    assert snapshot_name(A) == A
    named = snapshot_name(A, "hosts/kvm-1")
    assert named.startswith(A + ".") and len(named) == 49
    assert named != snapshot_name(A, "hosts/kvm-2")
    assert commit_of_snapshot(A) == A and commit_of_snapshot(named) == A
    assert commit_of_snapshot("c" * 64) == "c" * 64  # SHA-256 repositories
    for other in ("current", ".tmp-" + A, A[:39], A + ".xyz", "../" + A):
        assert commit_of_snapshot(other) is None
    with pytest.raises(ValueError):
        snapshot_name("../etc")


def test_poll_backoff() -> None:
    assert next_poll_delay(1.0, 0) == 1.0
    assert [next_poll_delay(1.0, n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert next_poll_delay(60.0, 20) == RETRY_MAX
    assert next_poll_delay(3600.0, 5) == 3600.0  # never shorter than the interval


def test_git_messages_on_one_line() -> None:
    assert _one_line("fatal: couldn't find remote ref nope\n") == "couldn't find remote ref nope"
    ssh = ("Host key verification failed.\nfatal: Could not read from remote repository.\n\n"
           "Please make sure you have the correct access rights\nand the repository exists.\n")  # fmt: skip
    assert _one_line(ssh) == "Host key verification failed"
    assert _one_line("") == "(no message)"


# --- one sync over file:// (git only, no libvirt) ---------------------------------------


def _git(*args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(["git", *args], capture_output=True, text=True, env=env, check=True,
                          stdin=subprocess.DEVNULL).stdout.strip()  # fmt: skip


def _commit(work: Path, message: str) -> str:
    _git("-C", str(work), "add", "-A")
    _git("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com",
         "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", message)  # fmt: skip
    _git("-C", str(work), "push", "-q", "origin", "HEAD:main", "--force")
    return _git("-C", str(work), "rev-parse", "HEAD")


def test_sync_snapshots_switches_refuses_and_prunes(tmp_path: Path) -> None:
    bare, work = tmp_path / "r.git", tmp_path / "w"
    _git("init", "-q", "--bare", "-b", "main", str(bare))
    _git("init", "-q", "-b", "main", str(work))
    _git("-C", str(work), "remote", "add", "origin", str(bare))
    (work / "m").mkdir()
    (work / "m" / "a.yaml").write_text("a: 1\n")
    os.symlink("/etc/passwd", work / "m" / "link.yaml")
    linked = _commit(work, "a symlink")
    source = GitSource(GitSourceConfig(url=f"file://{bare}", path="m", keep_snapshots=2),
                       tmp_path / "state")  # fmt: skip
    seen = []
    source.observers.append(seen.append)
    # a symlink is never materialised, and a manifest behind it would be pruned: refused
    refused = source.sync()
    assert refused.refused == linked and not refused.changed
    assert "m/link.yaml is a symlink" in str(refused.error) or "link.yaml is a symlink" in str(
        refused.error), refused.error
    os.unlink(work / "m" / "link.yaml")
    first = _commit(work, "one")
    result = source.sync()
    assert result.changed and result.revision == first and result.error is None
    assert result.directory is not None
    assert sorted(p.name for p in result.directory.iterdir()) == ["a.yaml"]
    assert (result.directory / "a.yaml").stat().st_mode & 0o777 == 0o444
    assert result.directory.stat().st_mode & 0o777 == 0o555
    assert source.current() == (first, result.directory)
    assert not source.sync().changed  # the same commit again: nothing to do
    # three more commits: two snapshots kept, the current one among them
    for n in range(3):
        (work / "m" / f"n{n}.yaml").write_text(f"n: {n}\n")
        last = _commit(work, f"n{n}")
        assert source.sync().revision == last
    snapshots = sorted(p.name for p in (tmp_path / "state" / "snapshots").iterdir())
    assert len(snapshots) == 3 and "current" in snapshots
    # history rewritten: refused, nothing switched or removed
    _git("-C", str(work), "reset", "-q", "--hard", first)
    (work / "m" / "other.yaml").write_text("o: 1\n")
    rewritten = _commit(work, "rewritten")
    refused = source.sync()
    assert refused.refused == rewritten and refused.revision == last and not refused.changed
    assert "not a descendant" in str(refused.error)
    assert sorted(p.name for p in (tmp_path / "state" / "snapshots").iterdir()) == snapshots
    assert [r.error is None for r in seen] == [False, True, True, True, True, True, False]


def test_a_state_directory_in_the_way_is_one_line_not_an_exception(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "snapshots").write_text("a file where the snapshots go\n")
    result = GitSource(GitSourceConfig(url=f"file://{tmp_path}/none.git"), state).sync()
    assert result.error is not None and "\n" not in result.error
    assert str(state / "snapshots") in result.error and result.revision is None


def test_a_sync_that_dies_half_way_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare, work = tmp_path / "r.git", tmp_path / "w"
    _git("init", "-q", "--bare", "-b", "main", str(bare))
    _git("init", "-q", "-b", "main", str(work))
    _git("-C", str(work), "remote", "add", "origin", str(bare))
    (work / "a.yaml").write_text("a: 1\n")
    first = _commit(work, "one")
    source = GitSource(GitSourceConfig(url=f"file://{bare}"), tmp_path / "state")
    assert source.sync().revision == first
    for n in range(3):
        (work / f"n{n}.yaml").write_text(f"n: {n}\n")
    second = _commit(work, "two")

    def die(root: Path, entries: list[tuple[str, str, str]]) -> None:
        (root / "n0.yaml").write_text("half")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(GitSource, "_write_blobs", lambda self, root, entries: die(root, entries))
    with pytest.raises(KeyboardInterrupt):
        source.sync()
    snapshots = tmp_path / "state" / "snapshots"
    assert source.current() is not None and source.current()[0] == first  # type: ignore[index]
    assert not (snapshots / second).exists()
    monkeypatch.undo()
    result = source.sync()
    assert result.revision == second and result.directory is not None
    assert sorted(p.name for p in result.directory.iterdir()) == [
        "a.yaml", "n0.yaml", "n1.yaml", "n2.yaml"
    ]
    assert (result.directory / "n0.yaml").read_text() == "n: 0\n"
    assert not [p for p in snapshots.iterdir() if p.name.startswith(".tmp-")]
