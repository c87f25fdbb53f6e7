"""A define carries the definition it was planned from (no libvirt: the hypervisor's
comparison is a pure function, the executor runs on a fake). Against libvirtd:
tests/integration/test_engine_planned_from.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import DefinitionChanged, SourcePosition
from reconciler.executor import Executor
from reconciler.hypervisor import _check_unchanged, same_definition
from reconciler.inventory import Inventory
from reconciler.model import Kind
from reconciler.plan import Action, DefineDomain, Op, Plan
from tests.unit.test_executor_batches import FakeLog

POOL = """<pool type='dir'>
  <name>p</name>
  <uuid>222d71d9-9d9e-4c7c-aef0-130edcff9643</uuid>
  <capacity unit='bytes'>{capacity}</capacity>
  <allocation unit='bytes'>{allocation}</allocation>
  <available unit='bytes'>{available}</available>
  <source>
  </source>
  <target>
    <path>/srv/p</path>
    <permissions>
      <mode>{mode}</mode>
    </permissions>
  </target>
</pool>
"""


def _pool(mode: str = "0755", allocation: int = 100, available: int = 900) -> str:
    return POOL.format(capacity=1000, allocation=allocation, available=available, mode=mode)


def test_a_pools_sizes_move_on_their_own_and_are_not_a_change() -> None:
    assert same_definition(_pool(), _pool(allocation=400, available=600))
    assert not same_definition(_pool(), _pool(mode="0700"))


def test_a_domain_is_compared_by_its_whole_text() -> None:
    before = "<domain type='kvm'><name>d</name><vcpu>1</vcpu><devices/></domain>"
    assert same_definition(before, before)
    # capacity, allocation or available mean nothing special in a domain
    assert not same_definition(before, before.replace("<devices/>",
                                                      "<devices><rng model='virtio'/></devices>"))
    assert not same_definition(
        "<domain><name>d</name><capacity>1</capacity></domain>",
        "<domain><name>d</name><capacity>2</capacity></domain>",
    )


def test_a_networks_connection_count_is_not_a_change() -> None:
    assert same_definition("<network connections='1'><name>n</name></network>",
                           "<network><name>n</name></network>")  # fmt: skip
    assert not same_definition("<network><name>n</name></network>",
                               "<network><name>n</name><domain name='x'/></network>")  # fmt: skip


def test_the_message_says_what_happened_and_what_to_do() -> None:
    with pytest.raises(DefinitionChanged) as changed:
        _check_unchanged("VM", "web", "<domain><name>web</name></domain>", "<domain/>")
    assert str(changed.value) == ("VM web's definition changed since it was planned "
                                  "(by someone else): nothing changed; plan again")  # fmt: skip
    with pytest.raises(DefinitionChanged, match=r"^network n.s definition was undefined since"):
        _check_unchanged("network", "n", "<network><name>n</name></network>", None)
    _check_unchanged("VM", "web", "<domain/>", "<domain/>")  # unchanged: no error


class Changing:
    """Defines nothing: the definition changed since the plan, every time."""

    def __init__(self) -> None:
        self.given: list[str | None] = []

    def define_domain(self, xml: str, current: str | None = None) -> None:
        self.given.append(current)
        raise DefinitionChanged(
            "VM web's definition changed since it was planned (by someone else): "
            "nothing changed; plan again"
        )


def test_the_executor_hands_the_planned_definition_over_and_reports_one_message(
    tmp_path: Path,
) -> None:
    hv = Changing()
    define = DefineDomain("<domain>new</domain>", current="<domain>old</domain>")
    update = Action(Kind.VIRTUAL_MACHINE, "web", Op.UPDATE_RESTART, steps=(define,),
                    source=SourcePosition("vms/web.yaml", 1, 1),
                    owner_record={"manifest": "vms/web.yaml"})  # fmt: skip
    ex = Executor(hv, Inventory(), tmp_path, log=FakeLog([]))  # type: ignore[arg-type]
    [result] = ex.apply(Plan((update,)))
    assert hv.given == ["<domain>old</domain>"]
    assert result.outcome == "failed" and result.stale
    assert result.failed_step == "define-domain" and result.explanation is None
    assert result.error == ("VM web's definition changed since it was planned "
                            "(by someone else): nothing changed; plan again")  # fmt: skip
