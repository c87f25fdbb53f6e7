"""A new volume from a URL is claimed (inventory write-ahead) only once its image is
fetched: a download takes minutes, and an apply killed during it left a claim on a
volume that was never made. Once its manifest was removed, a volume of that name
made by hand was then pruned (reclaimPolicy: delete) as ours, with its data."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from reconciler import inventory as inventory_file
from reconciler.errors import ReconcilerError
from reconciler.executor import Executor
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import Plan
from reconciler.snapshot import Observed
from tests.unit.conftest import WriteFiles
from tests.unit.http_support import Served, serving
from tests.unit.test_planner import action, edit, load, plan_for


class _CreateOnly:
    """A hypervisor whose create_volume notes whether the claim was on disk by then."""

    remote = False

    def __init__(self, state: Path) -> None:
        self.state = state
        self.claimed_at_create: list[bool] = []

    def create_volume(self, pool: str, xml: str) -> None:
        self.claimed_at_create.append("Volume/root" in inventory_file.load(self.state).objects)
        raise ReconcilerError("stop here")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"libvirt touched: {name}")


def test_a_url_volume_is_claimed_after_its_fetch_and_before_libvirt(
    write: WriteFiles, tmp_path: Path
) -> None:
    image = b"\x0b" * (3 * 1024 * 1024)
    state = tmp_path / "state"
    during: list[bool] = []

    def should_stop() -> bool:  # called as the download proceeds: what a kill would leave
        during.append("Volume/root" in inventory_file.load(state).objects)
        return False

    with serving(Served(files={"/a.img": image})) as served:
        result = edit(load(write), "root", source_url=served.url("/a.img"),
                      source_sha256=hashlib.sha256(image).hexdigest(), format="raw",
                      capacity=8 * 1024 * 1024)  # fmt: skip
        root = action(plan_for(result, Observed()), Kind.VOLUME, "root")
        hv = _CreateOnly(state)
        executor = Executor(hv, Inventory(), state, should_stop=should_stop)  # type: ignore[arg-type]
        [outcome] = executor.apply(Plan((root,)))
    assert outcome.outcome == "failed" and "stop here" in outcome.error
    assert during and not any(during)  # never claimed while downloading
    assert hv.claimed_at_create == [True]  # claimed before libvirt made anything
