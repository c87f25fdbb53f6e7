"""gitrev: the revision of a manifest directory, read without running git or its config.

Every expected value comes from git itself, run by the test with the
repository's hostile configuration disarmed (``safe_git``); the code under
test runs no program at all (``test_nothing_the_repository_names_runs``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler import gitrev, reconcile
from reconciler.errors import ConfigError
from reconciler.settings import Settings, check_manifest_dir

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}  # fmt: skip


def safe_git(cwd: Path, *args: str) -> str:
    """git with the repository's programs disarmed, for setting up and for the expected values."""
    done = subprocess.run(
        ["git", "-c", "core.fsmonitor=", "-c", "core.hooksPath=/nonexistent",
         "-c", "init.defaultBranch=main", "-C", str(cwd), *args],
        capture_output=True, text=True, env=ENV, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def expected(cwd: Path) -> str:
    head = safe_git(cwd, "rev-parse", "--short=12", "HEAD")
    dirty = safe_git(cwd, "status", "--porcelain", "--untracked-files=all", "--", ".")
    return head + ("-dirty" if dirty else "")


def repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    safe_git(root, "init", "-q")
    for name, text in (files or {"vm.yaml": "kind: VirtualMachine\n"}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    safe_git(root, "add", "-A")
    safe_git(root, "commit", "-qm", "first")
    return root


def test_outside_any_repository_there_is_no_revision(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    assert gitrev.revision(tmp_path / "m") is None


def test_clean_branch_head(tmp_path: Path) -> None:
    root = repo(tmp_path)
    assert gitrev.revision(root) == expected(root)
    assert not gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]


def test_changed_tracked_file_staged_change_and_untracked_manifest_are_dirty(
    tmp_path: Path,
) -> None:
    root = repo(tmp_path)
    (root / "vm.yaml").write_text("kind: Network\n")  # same size, other content
    assert gitrev.revision(root) == expected(root)
    assert gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]
    safe_git(root, "add", "vm.yaml")  # staged, not committed
    assert gitrev.revision(root) == expected(root)
    assert gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]
    safe_git(root, "commit", "-qm", "second")
    assert gitrev.revision(root) == expected(root)
    (root / "new.yaml").write_text("kind: Volume\n")
    assert gitrev.revision(root) == expected(root)
    assert gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]
    (root / "new.yaml").unlink()
    (root / "vm.yaml").unlink()
    assert gitrev.revision(root) == expected(root)
    assert gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]


def test_touched_but_unchanged_file_is_clean(tmp_path: Path) -> None:
    root = repo(tmp_path)
    os.utime(root / "vm.yaml", (1, 1))
    assert gitrev.revision(root) == expected(root)
    assert not gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]


def test_mode_change_is_dirty(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "vm.yaml").chmod(0o755)
    assert gitrev.revision(root) == expected(root)
    assert gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]


def test_subdirectory_of_a_work_tree_counts_only_its_own_files(tmp_path: Path) -> None:
    root = repo(tmp_path, {"manifests/vm.yaml": "kind: VirtualMachine\n", "README": "x\n"})
    (root / "README").write_text("changed elsewhere\n")
    assert gitrev.revision(root / "manifests") == expected(root / "manifests")
    assert not gitrev.revision(root / "manifests").endswith("-dirty")  # type: ignore[union-attr]
    (root / "manifests" / "vm.yaml").write_text("changed\n")
    assert gitrev.revision(root / "manifests") == expected(root / "manifests")


def test_packed_refs_packed_objects_and_deltas(tmp_path: Path) -> None:
    root = repo(tmp_path, {"vms/a.yaml": "kind: VirtualMachine\n" + "x: 1\n" * 200})
    for i in range(12):  # similar versions of one file: the pack stores deltas
        (root / "vms" / "a.yaml").write_text("kind: VirtualMachine\n" + f"x: {i}\n" * 200)
        (root / "vms" / f"b{i}.yaml").write_text(f"n: {i}\n")
        safe_git(root, "add", "-A")
        safe_git(root, "commit", "-qm", f"c{i}")
    safe_git(root, "gc", "-q", "--aggressive", "--prune=now")
    assert not list((root / ".git" / "refs" / "heads").iterdir())  # packed-refs only
    assert gitrev.revision(root) == expected(root)
    assert not gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]
    safe_git(root, "checkout", "-q", "HEAD~5")  # detached, an older tree from the pack
    assert gitrev.revision(root) == expected(root)
    assert not gitrev.revision(root).endswith("-dirty")  # type: ignore[union-attr]


def test_index_version_4(tmp_path: Path) -> None:
    root = repo(tmp_path, {f"d{i}/vm{i}.yaml": f"n: {i}\n" for i in range(5)})
    safe_git(root, "update-index", "--index-version", "4")
    assert gitrev.revision(root) == expected(root)
    (root / "d3" / "vm3.yaml").write_text("n: 33\n")
    assert gitrev.revision(root) == expected(root)


def test_linked_work_tree_with_a_git_file(tmp_path: Path) -> None:
    root = repo(tmp_path)
    (root / "vm.yaml").write_text("kind: Network\n")
    safe_git(root, "commit", "-qam", "second")
    linked = tmp_path / "linked"
    safe_git(root, "worktree", "add", "-q", "--detach", str(linked), "HEAD~1")
    assert (linked / ".git").is_file()
    assert gitrev.revision(linked) == expected(linked)
    assert gitrev.revision(linked) != gitrev.revision(root)
    safe_git(linked, "checkout", "-q", "-b", "other")  # a branch: refs in the common dir
    assert gitrev.revision(linked) == expected(linked)


def test_unborn_branch_and_broken_head_give_none(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    safe_git(root, "init", "-q")
    assert gitrev.revision(root) is None
    (root / ".git" / "HEAD").write_text("ref: ../../../etc/passwd\n")
    assert gitrev.revision(root) is None


def test_a_fifo_in_place_of_head_does_not_block(tmp_path: Path) -> None:
    root = repo(tmp_path)
    head = root / ".git" / "refs" / "heads" / "main"
    head.unlink()
    os.mkfifo(head)
    assert gitrev.revision(root) is None


def test_nothing_the_repository_names_runs(tmp_path: Path) -> None:
    """core.fsmonitor, hooks and filters from .git/config would run as root under git."""
    root = repo(tmp_path)
    marker = tmp_path / "ran-as-root"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    with (root / ".git" / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {script}\n\thooksPath = {tmp_path}/hooks\n"
            f'[filter "x"]\n\tclean = {script}\n\tsmudge = {script}\n'
        )
    (tmp_path / "hooks").mkdir()
    for hook in ("post-index-change", "pre-commit", "post-checkout"):
        (tmp_path / "hooks" / hook).symlink_to(script)
    (root / ".gitattributes").write_text("*.yaml filter=x\n")
    (root / "vm.yaml").write_text("kind: Network\n")
    revision = reconcile.source_revision(root)
    assert not marker.exists()
    assert revision == expected(root)  # expected() itself disarms fsmonitor and hooks
    # the unsafe git of the past would have run it: proof that the set-up is armed
    subprocess.run(["git", "-C", str(root), "status", "--porcelain"], env=ENV,
                   capture_output=True, check=False)  # fmt: skip
    assert marker.exists()


# --------------------------------------------------------------------------
# The permission check covers what is read, before it is read
# --------------------------------------------------------------------------


def test_world_writable_git_dir_is_refused_before_it_is_read(tmp_path: Path) -> None:
    root = repo(tmp_path)
    check_manifest_dir(root, Settings())
    (root / ".git").chmod(0o777)
    with pytest.raises(ConfigError) as info:
        check_manifest_dir(root, Settings())
    message = str(info.value)
    assert "\n" not in message
    assert f"{root / '.git'} is writable by others (mode 0777)" in message


@pytest.mark.parametrize(
    "part", ["HEAD", "index", "config", "packed-refs", "refs", "refs/heads", "objects",
             "objects/pack"],
)  # fmt: skip
def test_each_part_of_git_that_is_read_is_checked(tmp_path: Path, part: str) -> None:
    root = repo(tmp_path)
    safe_git(root, "pack-refs", "--all")
    safe_git(root, "gc", "-q")
    path = root / ".git" / part
    path.chmod(0o777 if path.is_dir() else 0o666)
    with pytest.raises(ConfigError, match=f"{path} is writable by others"):
        check_manifest_dir(root, Settings())


def test_git_dir_of_a_linked_work_tree_is_checked(tmp_path: Path) -> None:
    root = repo(tmp_path)
    linked = tmp_path / "linked"
    safe_git(root, "worktree", "add", "-q", "--detach", str(linked))
    check_manifest_dir(linked, Settings())
    git_dir = root / ".git" / "worktrees" / "linked"
    git_dir.chmod(0o777)
    with pytest.raises(ConfigError, match=f"{git_dir} is writable by others"):
        check_manifest_dir(linked, Settings())
    git_dir.chmod(0o755)
    (root / ".git" / "refs").chmod(0o777)  # the common dir's refs
    with pytest.raises(ConfigError, match=f"{root / '.git' / 'refs'} is writable by others"):
        check_manifest_dir(linked, Settings())


def test_git_in_a_parent_of_the_manifest_directory_is_checked(tmp_path: Path) -> None:
    root = repo(tmp_path, {"manifests/vm.yaml": "kind: VirtualMachine\n"})
    (root / ".git" / "HEAD").chmod(0o666)
    with pytest.raises(ConfigError, match=r"\.git/HEAD is writable by others"):
        check_manifest_dir(root / "manifests", Settings())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_git_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = repo(tmp_path)
    os.chown(root / ".git" / "config", 65534, 65534)
    with pytest.raises(ConfigError, match=r"\.git/config is owned by .*65534"):
        check_manifest_dir(root, Settings())
