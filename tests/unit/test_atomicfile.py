"""The one atomic writer: old or new file, whole; mode and owner kept; nothing left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler import atomicfile
from reconciler.atomicfile import write_atomically


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_file_is_private_unless_told(tmp_path: Path) -> None:
    write_atomically(tmp_path / "a.json", "{}")
    write_atomically(tmp_path / "b.prom", b"x 1\n", mode=0o644)
    assert (_mode(tmp_path / "a.json"), _mode(tmp_path / "b.prom")) == (0o600, 0o644)
    assert (tmp_path / "a.json").read_text() == "{}"
    assert (tmp_path / "b.prom").read_bytes() == b"x 1\n"


def test_an_existing_file_keeps_its_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    before = os.stat(path)
    write_atomically(path, "néw\n", mode=0o600)
    after = os.stat(path)
    assert path.read_text(encoding="utf-8") == "néw\n"
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    assert (_mode(path), after.st_uid, after.st_gid) == (0o640, before.st_uid, before.st_gid)


def test_nothing_is_left_beside_it(tmp_path: Path) -> None:
    for i in range(3):
        write_atomically(tmp_path / "status.json", str(i))
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    link = tmp_path / "inventory.json"
    link.symlink_to(target)
    write_atomically(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert target.read_text() == "keep" and _mode(link) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "inventory.json"
    path.write_text("old")

    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.json"]


def test_the_folder_is_synced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(atomicfile, "fsync_dir", synced.append)
    write_atomically(tmp_path / "a", "x")
    assert synced == [tmp_path]
    assert (tmp_path / "a").read_text() == "x"


def test_a_missing_folder_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "a", "x")
