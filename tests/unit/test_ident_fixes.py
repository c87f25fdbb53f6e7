"""Disk identity and wording fixes (issue 10 testers): hints, plan lines, header checks."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.errors import SourcePosition
from reconciler.model import build_manifest


def _vm(disks: list[dict[str, Any]]) -> Any:
    document = {"apiVersion": "reconciler/v1", "kind": "VirtualMachine",
                "metadata": {"name": "d"},
                "spec": {"vcpus": 1, "memory": "512MiB", "disks": disks}}
    return build_manifest(document, SourcePosition("d.yaml"))


def test_a_pinned_target_that_does_not_fit_the_bus_says_target_can_be_removed() -> None:
    with pytest.raises(Exception) as caught:
        _vm([{"volume": "v1", "pool": "p", "bus": "sata", "target": "vda"}])
    text = " ".join(f"{p.message}; {p.hint}" for p in caught.value.problems)
    assert "target vda does not fit bus sata" in text
    assert "or remove target: to let reconciler choose" in text


@pytest.mark.parametrize(("head", "expected"), [
    (b"QFI\xfb" + bytes(68), "qcow2"),
    (b"KDMV" + bytes(68), "vmdk"),
    (b"vhdxfile" + bytes(64), "vhdx"),
    (bytes(64) + b"\x7f\x10\xda\xbe" + bytes(4), "vdi"),
    (bytes(72), "raw"),
    (b"", "raw"),
])
def test_the_header_announces_the_format(head: bytes, expected: str) -> None:
    from reconciler.images import sniff_format

    assert sniff_format(head) == expected


def test_read_format_reads_a_file_and_passes_over_what_is_not_one(tmp_path: Any) -> None:
    from reconciler.images import read_format

    image = tmp_path / "q.img"
    image.write_bytes(b"QFI\xfb" + bytes(200))
    assert read_format(str(image)) == "qcow2"
    assert read_format(str(tmp_path)) is None
    assert read_format(str(tmp_path / "gone")) is None


def test_real_paths_resolve_the_files_a_plan_compares(tmp_path: Any) -> None:
    from reconciler.hostpaths import PathPolicy
    from reconciler.manifests import load_text
    from reconciler.reconcile import real_paths

    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "v1").write_bytes(b"")
    (tmp_path / "plink").symlink_to(pool)
    text = ("apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: d}\n"
            f"spec: {{vcpus: 1, memory: 512MiB, disks: [{{file: {tmp_path}/plink//v1}}]}}\n")
    errors: list[object] = []
    manifests = tuple(load_text(text, "m.yaml", errors))  # type: ignore[arg-type]
    assert not errors
    found = real_paths(manifests, None, PathPolicy(None, None))
    assert found == {f"{tmp_path}/plink/v1": str(pool / "v1")}
    assert real_paths(manifests, None, PathPolicy(None, None, remote=True)) == {}
