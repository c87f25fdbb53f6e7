"""Issue 11 item 1: a volume with a ``source`` is done only when its content is.

The planner, pure: an owned volume whose inventory entry still says ``contentPending``
(the copy was interrupted, or failed) is never in sync; a source known to be larger
than the volume is an error at plan time. The executor clears the mark only after a
copy it has verified, and saves the inventory at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reconciler import inventory as inventory_file
from reconciler.executor import Executor
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import Action, ImportVolume, Op, Plan
from reconciler.snapshot import Observed, VolumeRecord
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import action, converged, edit, load, plan_for

SOURCE = "/var/tmp/base.img"


def _with_source(write: WriteFiles) -> Any:
    return edit(load(write), "root", source=SOURCE)


def _pending(observed: Observed, key: str = "Volume/root") -> Observed:
    objects = dict(observed.inventory.objects)
    objects[key] = {**objects[key], inventory_file.CONTENT_PENDING: {"source": SOURCE}}
    return dataclasses.replace(observed, inventory=Inventory(objects))


def test_a_new_volume_with_a_source_is_recorded_as_pending_before_the_copy(
    write: WriteFiles,
) -> None:
    result = _with_source(write)
    plan = plan_for(result, Observed())
    root = action(plan, Kind.VOLUME, "root")
    assert root.op is Op.CREATE
    assert [s.verb for s in root.steps] == ["create-volume", "import-volume"]
    # the executor writes owner records before any step: the mark is on disk first
    assert root.owner_record[inventory_file.CONTENT_PENDING] == {"source": SOURCE}


def test_a_volume_whose_copy_never_finished_is_not_in_sync(write: WriteFiles) -> None:
    result = _with_source(write)
    observed = _pending(converged(result, running=False))
    root = action(plan_for(result, observed), Kind.VOLUME, "root")
    assert root.op is Op.UPDATE_LIVE, root
    assert [s.verb for s in root.steps] == ["import-volume"]
    assert [c.path for c in root.changes] == ["content"]
    assert root.owner_record[inventory_file.CONTENT_PENDING] == {"source": SOURCE}
    # once the mark is gone (a verified copy), the same volume is in sync
    done = action(plan_for(result, converged(result, running=False)), Kind.VOLUME, "root")
    assert done.op is Op.NOOP and inventory_file.CONTENT_PENDING not in done.owner_record


def test_a_pending_volume_a_running_vm_uses_is_not_overwritten(write: WriteFiles) -> None:
    result = _with_source(write)
    root = action(plan_for(result, _pending(converged(result))), Kind.VOLUME, "root")
    assert root.op is Op.ERROR and root.steps == ()
    assert "never completed" in root.reason and "web" in root.reason
    # the mark stays: the executor rewrites owner records even for refused actions
    assert root.owner_record[inventory_file.CONTENT_PENDING] == {"source": SOURCE}


def test_a_source_larger_than_capacity_is_a_plan_error(write: WriteFiles) -> None:
    result = _with_source(write)
    plan = plan_for(result, Observed(), source_sizes={SOURCE: 2 * 1024**3})
    root = action(plan, Kind.VOLUME, "root")
    assert root.op is Op.ERROR and root.steps == ()
    assert "more than capacity 1GiB" in root.reason
    assert root.source.line > 0  # placed at spec.source
    fits = action(plan_for(result, Observed(), source_sizes={SOURCE: 1024**3}), Kind.VOLUME,
                  "root")  # fmt: skip
    assert fits.op is Op.CREATE


class _Hv:
    """Just enough of a Hypervisor for an import: the volume's path and XML."""

    remote = False  # this machine: qemu-img convert and compare

    def __init__(self, path: Path) -> None:
        self.path = path

    def volume_path(self, pool: str, name: str) -> str:
        return str(self.path)

    def volume(self, pool: str, name: str) -> VolumeRecord:
        return VolumeRecord(pool, name, str(self.path), self.volume_xml(pool, name))

    def volume_xml(self, pool: str, name: str) -> str:
        return "<volume><name>root</name><target><format type='raw'/></target></volume>"


def _import_action(source: Path) -> Action:
    step = ImportVolume("images", str(source), None)
    record = {"pool": "images", inventory_file.CONTENT_PENDING: {"source": str(source)}}
    return Action(Kind.VOLUME, "root", Op.CREATE, (), (step,), owner_record=record)


def _run(tmp_path: Path, source: Path, target: Path) -> tuple[str, dict[str, Any]]:
    executor = Executor(_Hv(target), Inventory(), tmp_path / "state")  # type: ignore[arg-type]
    [result] = executor.apply(Plan((_import_action(source),)))
    entry = dict(inventory_file.load(tmp_path / "state").objects["Volume/root"])
    return result.outcome, entry


def test_the_mark_is_cleared_only_after_a_verified_copy(tmp_path: Path) -> None:
    source, target = tmp_path / "src.img", tmp_path / "vol.img"
    source.write_bytes(b"\x01" * 65536)
    target.write_bytes(b"\x00" * 65536)
    outcome, entry = _run(tmp_path, source, target)
    assert outcome == "ok" and inventory_file.CONTENT_PENDING not in entry
    assert target.read_bytes() == source.read_bytes()


def test_a_failed_copy_keeps_the_mark(tmp_path: Path) -> None:
    source, target = tmp_path / "src.img", tmp_path / "vol.img"
    source.write_bytes(b"\x01" * 131072)
    target.write_bytes(b"\x00" * 65536)  # smaller than the source: qemu-img convert fails
    outcome, entry = _run(tmp_path, source, target)
    assert outcome == "failed"
    assert entry[inventory_file.CONTENT_PENDING] == {"source": str(source)}


def test_a_source_on_a_backing_volume_is_refused_for_a_remote_host(write: WriteFiles) -> None:
    """libvirt's storage API copies whole images (CreateXMLFrom drops a backing store),
    and the controller runs no qemu-img for a remote host: a plan error, not a volume
    that never settles. A local host makes it with qemu-img convert -B as before."""
    result = edit(load(write), "root", source=SOURCE, backing_volume="root")
    remote = action(plan_for(result, Observed(), remote=True), Kind.VOLUME, "root")
    assert remote.op is Op.ERROR and remote.steps == ()
    assert "cannot be made on a remote host" in remote.reason
    assert "drop backingVolume" in remote.reason and "\n" not in remote.reason
    local = action(plan_for(result, Observed()), Kind.VOLUME, "root")
    assert local.op is Op.CREATE
