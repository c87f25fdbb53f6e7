"""`reconciler validate` as a user runs it: a subprocess, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import WriteFiles

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_examples_validate_offline() -> None:
    result = run("validate", "--offline", "manifests/examples")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manifests/examples: 7 manifests in 4 files, all valid"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"a.yaml": "kind: [\n"}, "m/a.yaml:2:1: not valid YAML"),
        ({"a.yaml": b"\x00\x01binary"}, "m/a.yaml: binary file, not YAML text"),
        ({"a.yaml": "apiVersion: reconciler/v1\nkind: Nope\n"}, "m/a.yaml:2:7: kind: 'Nope'"),
    ],
)
def test_bad_input_is_one_line_and_no_traceback(
    write: WriteFiles, files: dict[str, str | bytes], expected: str
) -> None:
    root = write(**files)
    result = run("validate", "--offline", "m", cwd=root.parent)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(expected)
    assert lines[-1] == "1 problem in 1 file"


def test_missing_and_empty_directories(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name, message in [
        ("nowhere", "nowhere: directory does not exist"),
        ("empty", "empty: no manifests found"),
    ]:
        result = run("validate", "--offline", name, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith(message)
        assert "Traceback" not in result.stderr


def test_json_output_shape(write: WriteFiles) -> None:
    root = write(**{"a.yaml": "apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: n}\n"})
    result = run("validate", "--offline", "--output", "json", "m", cwd=root.parent)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"] == [
        {
            "file": "m/a.yaml",
            "line": 1,
            "column": 1,
            "field": "spec",
            "message": "required field is missing",
            "hint": None,
            "text": "m/a.yaml:1:1: spec: required field is missing",
        }
    ]


def test_a_size_libvirt_cannot_hold_is_refused_at_its_line(write: WriteFiles) -> None:
    """libvirt parses capacity and memory into a signed 64-bit count of bytes: beyond it,
    "malformed capacity element" at apply. validate refuses it, naming the field."""
    root = write(**{
        "vol.yaml": "apiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: v}\n"
                    "spec:\n  pool: p\n  capacity: 99999999999999999999TiB\n",
        "vm.yaml": "apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: w}\n"
                   "spec:\n  memory: 1GiB\n  maxMemory: 8388608TiB\n",
        "ok.yaml": "apiVersion: reconciler/v1\nkind: Volume\nmetadata: {name: ok}\n"
                   "spec:\n  pool: p\n  capacity: 8388607TiB\n---\n"
                   "apiVersion: reconciler/v1\nkind: StoragePool\nmetadata: {name: p}\n"
                   "spec:\n  path: /srv/p\n",
    })  # fmt: skip
    result = run("validate", "--offline", "m", cwd=root.parent)
    assert result.returncode == 1
    # the message names sizes one can write (the schema has no EiB or PiB)
    limit = "is more than libvirt can hold (at most 9223372036854774784B; 8388607TiB fits)"
    assert result.stderr.splitlines() == [
        f"m/vm.yaml:6:14: spec.maxMemory: 8388608TiB {limit}; give a smaller size",
        f"m/vol.yaml:6:13: spec.capacity: 99999999999999999999TiB {limit}; give a smaller size",
        "2 problems in 2 files",
    ]


def test_a_manifest_path_xml_cannot_hold_is_refused_by_validate(tmp_path: Path) -> None:
    """The ownership record in libvirt names the manifest by its path: a folder whose
    name holds a control character could not be recorded, and plan said so while
    validate called everything valid."""
    folder = tmp_path / "m" / "a\x01b"
    folder.mkdir(parents=True)
    (folder / "net.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: n}\n"
        "spec: {mode: isolated, ipv4: {address: 10.254.250.1, prefix: 24}}\n")  # fmt: skip
    result = run("validate", "--offline", "m", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stderr.splitlines() == [
        "m/a\\x01b/net.yaml: the manifest's path holds '\\x01', a character XML cannot hold, "
        "and libvirt's ownership record names the manifest by its path; rename the folder or "
        "file",
        "1 problem in 1 file",
    ]


def test_a_shutdown_timeout_beyond_24h_is_refused_by_validate(write: WriteFiles) -> None:
    """99999999999999999999h was accepted: plan printed an absurd figure and delete
    waited forever."""
    root = write(**{
        "vm.yaml": "apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: w}\n"
                   "spec:\n  memory: 1GiB\n  shutdownTimeout: 99999999999999999999h\n",
        "ok.yaml": "apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: x}\n"
                   "spec:\n  memory: 1GiB\n  shutdownTimeout: 23h60m\n",
    })  # fmt: skip
    result = run("validate", "--offline", "m", cwd=root.parent)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "m/vm.yaml:6:20: spec.shutdownTimeout: 99999999999999999999h is longer than 24h, "
        "the longest the reconciler waits; give 24h or less (the VM is then forced off)",
        "1 problem in 1 file",
    ]
