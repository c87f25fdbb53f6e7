"""A VM to run on huge pages finds enough of them free. Found by breaking issue 13's
vocabulary: ``memoryBacking: {hugepages: {pageSize: 2MiB}}`` with ``updatePolicy:
restart`` on a running VM of a host with no huge pages reserved was planned, the VM
was shut down, and its start failed ("unable to map backing store for guest RAM:
Cannot allocate memory"): left down."""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord
from reconciler.model import build_manifest
from reconciler.observe import Observed
from reconciler.preflight import HostFacts, check, wanted

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  type: qemu
  memory: 256MiB
  vcpus: 1
  graphics: {type: none}
  memoryBacking: {hugepages: {pageSize: 2MiB}}
  state: running
"""
MIB2 = 2 * 1024**2
SIZES = frozenset({4096, MIB2, 1024**3})


def problems(free: int, observed: Observed | None = None, **spec: Any) -> list[str]:
    document: Any = yaml.safe_load(VM)
    document["spec"].update(spec)
    m = build_manifest(document, SourcePosition("vm.yaml"))
    facts = HostFacts(page_sizes=SIZES, free_pages={MIB2: free, 1024**3: 0})
    return [p.message for _, p in check([m], facts, observed or Observed())]


def test_too_few_free_huge_pages_is_a_plan_error() -> None:
    [message] = problems(free=10)
    assert "256MiB of memory needs 128 free 2MiB huge pages" in message and "has 10 free" in message
    assert problems(free=128) == []
    [_] = problems(free=0, memoryBacking={"hugepages": True})  # the host's smallest size
    assert problems(free=0, state="stopped") == []  # defined only, not started


def test_a_vm_running_on_huge_pages_already_is_left_alone() -> None:
    live = ("<domain type='qemu'><name>vm</name><memory unit='KiB'>262144</memory>"
            "<memoryBacking><hugepages/></memoryBacking><vcpu>1</vcpu>"
            "<os><type>hvm</type></os><devices/></domain>")  # fmt: skip
    observed = Observed(domains={"vm": DomainRecord("vm", "u", True, False, live, live)})
    assert problems(free=0, observed=observed) == []


def test_free_pages_are_read_only_for_a_vm_to_run_on_huge_pages() -> None:
    m = build_manifest(yaml.safe_load(VM), SourcePosition("vm.yaml"))
    assert wanted([m]).free_pages
    document: Any = yaml.safe_load(VM)
    document["spec"]["state"] = "stopped"
    assert not wanted([build_manifest(document, SourcePosition("vm.yaml"))]).free_pages
