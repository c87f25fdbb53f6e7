"""SPEC §5 / issue 11: a data-losing action is logged with what was lost and why it was
allowed: a volume deleted (prune under reclaimPolicy delete, or an allowed replace)
and a VM forced off after ignoring its ACPI shutdown."""

from __future__ import annotations

from typing import Any

from reconciler.executor import Executor
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import Action, DeleteVolume, Op, Plan
from reconciler.snapshot import DomainRecord, VolumeRecord


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_context: Any) -> _Log:
        return self

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))

    def lost(self) -> list[dict[str, Any]]:
        return [f for level, e, f in self.lines if e == "data.lost" and level == "warning"]


class _Hv:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.users: list[DomainRecord] = []

    def volume(self, pool: str, name: str) -> VolumeRecord:
        return VolumeRecord(pool, name, "/var/lib/libvirt/images/data", self.volume_xml(pool, name))

    def volume_xml(self, pool: str, name: str) -> str:
        return ("<volume><name>data</name><capacity unit='bytes'>1073741824</capacity>"
                "<target><format type='qcow2'/></target></volume>")  # fmt: skip

    def domains(self) -> list[DomainRecord]:
        return self.users

    def volume_path(self, pool: str, name: str) -> str:
        return "/var/lib/libvirt/images/data"

    def delete_volume(self, pool: str, name: str) -> None:
        self.calls.append(f"delete {pool}/{name}")

    def domain_active(self, name: str) -> bool:
        return True

    def shutdown_domain(self, name: str) -> None:
        self.calls.append(f"shutdown {name}")

    def destroy_domain(self, name: str) -> None:
        self.calls.append(f"destroy {name}")


def _executor(log: _Log, hv: _Hv) -> Executor:
    ticks = iter(range(1000))
    return Executor(hv, Inventory(), None, log=log, clock=lambda: float(next(ticks)),  # type: ignore[arg-type]
                    sleep=lambda _s: None)  # fmt: skip


def test_a_pruned_volume_is_logged_as_lost_with_its_reason() -> None:
    log, hv = _Log(), _Hv()
    prune = Action(Kind.VOLUME, "data", Op.DELETE, steps=(DeleteVolume("p"),),
                   reason="manifest vols.yaml is gone; reclaimPolicy delete")  # fmt: skip
    [result] = _executor(log, hv).apply(Plan((prune,)))
    assert result.outcome == "ok" and hv.calls == ["delete p/data"]
    [lost] = log.lost()
    assert "volume p/data" in lost["lost"] and lost["capacity"] == 1073741824
    assert lost["why"] == "manifest vols.yaml is gone; reclaimPolicy delete"


def test_a_replaced_volume_names_the_flag_that_allowed_it() -> None:
    log, hv = _Log(), _Hv()
    replace = Action(Kind.VOLUME, "data", Op.REPLACE,
                     steps=(DeleteVolume("p"),))  # fmt: skip
    _executor(log, hv).apply(Plan((replace,)))
    [lost] = log.lost()
    assert lost["why"] == "replace allowed with --allow-replace Volume/data"


def test_a_forced_power_off_is_logged_as_lost() -> None:
    log, hv = _Log(), _Hv()
    note = _executor(log, hv).graceful_stop("web", timeout=3)
    assert note.startswith("forced off") and hv.calls == ["shutdown web", "destroy web"]
    [lost] = log.lost()
    assert "forced power-off" in lost["lost"] and "shutdownTimeout of 3s" in lost["why"]


def test_a_volume_a_domain_uses_now_is_not_deleted() -> None:
    """libvirt keeps no owner on volumes: another instance may have taken one over and
    attached it after the plan was made. Just before deleting, the executor asks the
    host again; any domain using it (by file here) keeps its data."""
    xml = ("<domain type='kvm'><name>theirs</name><memory>1024</memory><vcpu>1</vcpu>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
           "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/data'/>"
           "<target dev='vda' bus='virtio'/></disk></devices></domain>")
    log, hv = _Log(), _Hv()
    hv.users = [DomainRecord("theirs", "u-1", False, False, xml, None)]
    prune = Action(Kind.VOLUME, "data", Op.DELETE, steps=(DeleteVolume("images"),),
                   reason="manifest gone; reclaimPolicy delete")  # fmt: skip
    [result] = _executor(log, hv).apply(Plan((prune,)))
    assert result.outcome == "failed"
    assert "domain(s) theirs use it now" in (result.error or "")
    assert hv.calls == [] and log.lost() == []
    hv.users = []
    [result] = _executor(log, hv).apply(Plan((prune,)))
    assert result.outcome == "ok" and hv.calls == ["delete images/data"]
