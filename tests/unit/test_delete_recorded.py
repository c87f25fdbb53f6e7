"""``reconciler delete`` looks in the manifest file an object's inventory record names
(issue 13: with no manifest directory to check, a still-declared VM was deleted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.cli import _refuse_declared, recorded_manifests
from reconciler.errors import ReconcilerError

VM = """apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {{name: {name}{hosts}}}
spec: {{memory: 64MiB, vcpus: 1}}
"""


def write(path: Path, name: str, hosts: str = "") -> str:
    path.write_text(VM.format(name=name, hosts=hosts))
    return str(path)


def test_a_recorded_manifest_that_still_declares_the_object_refuses_its_delete(
    tmp_path: Path,
) -> None:
    web = write(tmp_path / "web.yaml", "web")
    owned = {"VirtualMachine/web": {"manifest": web}}
    with pytest.raises(ReconcilerError) as refused:
        _refuse_declared(["VirtualMachine/web"], tmp_path / "missing", "h", owned, tmp_path)
    assert str(refused.value) == (
        f"delete: VirtualMachine/web (declared at {web}:1:1, the manifest its inventory "
        "record names): the next apply would create it again; remove the manifest first "
        "(then apply deletes it, or run delete again)"
    )


def test_a_recorded_manifest_gone_changed_or_for_another_host_does_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["VirtualMachine/a", "VirtualMachine/b", "VirtualMachine/c", "VirtualMachine/d"]
    owned = {
        "VirtualMachine/a": {"manifest": str(tmp_path / "gone.yaml")},
        "VirtualMachine/b": {"manifest": write(tmp_path / "b.yaml", "other")},
        "VirtualMachine/c": {"manifest": write(tmp_path / "c.yaml", "c", ", hosts: [elsewhere]")},
        "VirtualMachine/d": {"manifest": "<stdin>"},
    }
    assert recorded_manifests(keys, owned, "h") == ({}, [])
    (tmp_path / "bad.yaml").write_text("kind: [")
    owned["VirtualMachine/a"] = {"manifest": str(tmp_path / "bad.yaml")}
    _refuse_declared(keys, tmp_path / "missing", "h", owned, None)
    assert f"{tmp_path / 'bad.yaml'} did not load" in capsys.readouterr().err


def test_files_under_the_manifest_directory_or_the_git_snapshots_are_not_read_again(
    tmp_path: Path,
) -> None:
    snapshots = tmp_path / "state" / "snapshots" / "abc"
    snapshots.mkdir(parents=True)
    old = write(snapshots / "web.yaml", "web")  # an old commit's file
    owned = {"VirtualMachine/web": {"manifest": old}}
    assert recorded_manifests(["VirtualMachine/web"], owned, "h",
                              skip=[tmp_path / "state" / "snapshots"]) == ({}, [])  # fmt: skip
    assert recorded_manifests(["VirtualMachine/web"], owned, "h")[0] == {
        "VirtualMachine/web": f"{old}:1:1"}
