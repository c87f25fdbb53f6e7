"""The state directory: created 0700 when missing, else usable, else one error naming it."""

from __future__ import annotations

import ast
import errno
import os
import re
import stat
from pathlib import Path

import pytest

from reconciler import inventory, statedir, status
from reconciler.errors import StateDirError
from reconciler.lock import StateLock
from tests.unit.test_status import SAMPLE


def test_a_missing_state_directory_is_created_mode_0700(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    statedir.prepare(state, write=True)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert inventory.load(state) == inventory.Inventory()


@pytest.mark.parametrize("write", [False, True])
def test_a_file_in_the_way_is_an_error_naming_it(tmp_path: Path, write: bool) -> None:
    state = tmp_path / "state"
    state.write_text("")
    with pytest.raises(StateDirError, match=f"^{state}: the state directory is not a folder"):
        statedir.prepare(state, write=write)
    below = state / "below"
    with pytest.raises(StateDirError, match=f"^{below}: cannot create the state directory: Not"):
        statedir.prepare(below, write=write)


def test_an_inventory_that_cannot_be_read_is_never_empty(tmp_path: Path) -> None:
    """Before: a missing or blocked folder read as an empty inventory, so every owned
    object looked foreign."""
    for state in (tmp_path / "file", Path("/proc/no-such-reconciler-state")):
        if state.name == "file":
            state.write_text("")
        with pytest.raises(StateDirError, match=f"^{state}"):
            inventory.load(state)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "inventory.json").mkdir()
    with pytest.raises(StateDirError, match=r"inventory\.json: cannot read the inventory: "):
        inventory.load(tmp_path / "dir")


def test_state_directory_under_proc_cannot_be_created(tmp_path: Path) -> None:
    state = Path("/proc/no-such-reconciler-state/state")
    with pytest.raises(StateDirError) as info:
        StateLock(state).acquire()
    assert str(info.value).startswith(f"{state}: cannot create the state directory: ")
    assert "\n" not in str(info.value)


def test_errors_name_the_path_reason_and_remedy() -> None:
    message = str(statedir.error(Path("/s/inventory.json"), "write the inventory",
                                 OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))  # fmt: skip
    assert message == (
        "/s/inventory.json: cannot write the inventory: No space left on device; "
        "free space on its file system"
    )


def test_status_of_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirError, match=r"status\.json: cannot read the status file: Not a"):
        status.read_status(tmp_path / "state")
    assert status.read_status(tmp_path / "missing") is None  # no daemon has run


# --- the layout --------------------------------------------------------------------


def test_the_layout_names_are_the_on_disk_names() -> None:
    # what an existing state directory holds: renaming one loses the inventory
    assert (statedir.INVENTORY, statedir.STATUS, statedir.LOCK) == (
        "inventory.json", "status.json", "lock")  # fmt: skip
    assert (statedir.VERIFIED_PLANS, statedir.PARSE_CACHE) == ("verified.json", "parsed.json")
    assert (statedir.GIT_REPOSITORY, statedir.GIT_HOME, statedir.GIT_SNAPSHOTS) == (
        "git", "git-home", "snapshots")  # fmt: skip
    assert len(set(statedir.LAYOUT)) == len(statedir.LAYOUT)


def test_a_name_outside_the_layout_is_refused(tmp_path: Path) -> None:
    assert statedir.path(tmp_path, statedir.STATUS) == tmp_path / "status.json"
    with pytest.raises(ValueError, match="not part of the state directory's layout"):
        statedir.path(tmp_path, "notes.txt")


def test_the_owners_use_the_layout(tmp_path: Path) -> None:
    inventory.save(tmp_path, inventory.Inventory({"Network/n": {"uuid": "u"}}))
    status.write_status(tmp_path, SAMPLE)
    with StateLock(tmp_path, wait=0):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [statedir.INVENTORY, statedir.STATUS, statedir.LOCK])  # fmt: skip


def _string_constants(path: Path) -> list[str]:
    """String literals in code (docstrings left out), f-string parts included."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip


def test_no_other_module_spells_a_state_file_name() -> None:
    # names distinctive enough to find as text ("git", "lock" are words too)
    # (instance-id is also a cloud-init meta-data key: cloudinit.py spells that one)
    names = [n for n in statedir.LAYOUT if ("." in n or "-" in n) and n != statedir.INSTANCE_ID]
    root = Path(statedir.__file__).parent
    spelled = [
        (path.name, name)
        for path in sorted(root.rglob("*.py"))
        if path.name != "statedir.py"
        for text in _string_constants(path)
        for name in names
        if re.search(rf"(^|[/\s]){re.escape(name)}($|[\s)'\"])", text)
    ]
    assert spelled == []
