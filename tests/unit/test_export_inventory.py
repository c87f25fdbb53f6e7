"""``reconciler export`` reads the state directory's inventory (read only): a VM the
tool manages keeps its shutdownTimeout, a volume its reclaimPolicy. Export never
creates the state directory and works without one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.snapshot import Observed
from tests.unit.test_export import observed, one


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[Inventory]:
    """Stand-ins for the connection and ``observe``: the inventory export passed in."""
    import reconciler.hypervisor
    import reconciler.observe

    inventories: list[Inventory] = []

    @contextmanager
    def connection(uri: str) -> Iterator[object]:
        yield object()

    def fake_observe(hv: object, inventory: Inventory, *a: Any, **k: Any) -> Observed:
        inventories.append(inventory)
        return observed(inventory=inventory)

    monkeypatch.setattr(reconciler.hypervisor.Hypervisor, "open", staticmethod(connection))
    monkeypatch.setattr(reconciler.observe, "observe", fake_observe)
    return inventories


def write_inventory(state: Path, objects: dict[str, Any]) -> None:
    state.mkdir(mode=0o700)
    (state / "inventory.json").write_text(json.dumps({"version": 1, "objects": objects}))


def run_export(state: Path, *names: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    from reconciler.cli import main

    assert main(["export", "--state-dir", str(state), *names]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    return {d["metadata"]["name"]: d["spec"] for d in docs}


def test_export_uses_the_inventory_of_the_state_directory(
    tmp_path: Path, seen: list[Inventory], capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    write_inventory(state, {
        "VirtualMachine/web-1": {"manifest": "vms/web-1.yaml", "shutdownTimeout": 60.0},
        "Volume/web-root": {"pool": "images", "reclaimPolicy": "delete"},
    })  # fmt: skip
    before = sorted(p.name for p in state.iterdir())
    specs = run_export(state, "web-1", "Volume/images/web-root", capsys=capsys)
    assert specs["web-1"]["shutdownTimeout"] == "60s"
    assert specs["web-root"]["reclaimPolicy"] == "delete"
    assert sorted(p.name for p in state.iterdir()) == before  # nothing written there


def test_export_needs_no_state_directory_and_makes_none(
    tmp_path: Path, seen: list[Inventory], capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "none"
    specs = run_export(state, "web-1", capsys=capsys)
    assert "shutdownTimeout" not in specs["web-1"]
    assert seen == [Inventory()] and not state.exists()


def test_a_volume_keeps_the_reclaim_policy_of_its_inventory_record() -> None:
    delete = {"Volume/web-root": {"pool": "images", "reclaimPolicy": "delete"}}
    item = one(Kind.VOLUME, "web-root", observed(inventory=Inventory(delete)))
    assert item.document is not None and item.document["spec"]["reclaimPolicy"] == "delete"
    assert item.notes == ()
    # a record of a volume of that name in another pool is not this volume's
    other = {"Volume/web-root": {"pool": "other", "reclaimPolicy": "delete"}}
    item = one(Kind.VOLUME, "web-root", observed(inventory=Inventory(other)))
    assert item.document is not None and item.document["spec"]["reclaimPolicy"] == "retain"
