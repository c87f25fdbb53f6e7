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
