"""Preflight counts the free huge pages a VM to be started needs (issue 13: a VM on
2MiB pages planned clean on a host with none free, and its start failed with
"unable to map backing store for guest RAM: Cannot allocate memory")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord, local_huge_pages
from reconciler.model import Manifest, build_manifest
from reconciler.observe import Observed
from reconciler.preflight import HostFacts, check, wanted

MiB, GiB = 1024**2, 1024**3
PAGES = frozenset({4096, 2 * MiB, GiB})

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: db}
spec:
  type: qemu
  memory: 1GiB
  vcpus: 1
  memoryBacking: {hugepages: {pageSize: 2MiB}}
"""


def vm(**spec: Any) -> Manifest:
    doc = yaml.safe_load(VM)
    doc["spec"].update(spec)
    return build_manifest(doc, SourcePosition("vms/db.yaml"))


def problems(m: Manifest, facts: HostFacts, observed: Observed | None = None) -> list[Any]:
    found = check([m], facts, observed or Observed())
    return [(".".join(map(str, p.path)), p.message, p.hint) for _, p in found]


def facts(free: int, reserved: int = 0, size: int = 2 * MiB) -> HostFacts:
    return HostFacts(page_sizes=PAGES, huge_pages={size: (reserved, free), GiB: (0, 0)},
                     default_huge_page=2 * MiB)  # fmt: skip


def test_a_vm_to_start_without_enough_free_pages_is_refused_with_the_fix() -> None:
    [(where, message, hint)] = problems(vm(), facts(free=100, reserved=100))
    assert where == "spec.memoryBacking.hugepages"
    assert message == ("1GiB of memory needs 512 free 2MiB huge pages, and this host has "
                       "100 free (100 reserved): the start would fail")  # fmt: skip
    assert "sysctl vm.nr_hugepages=512" in hint
    assert "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages" in hint


def test_enough_free_pages_a_running_vm_or_a_stopped_one_are_no_problem() -> None:
    assert problems(vm(), facts(free=512)) == []
    running = DomainRecord("db", "u", True, False, "<domain type='qemu'><name>db</name>"
                           "</domain>", None)  # fmt: skip
    assert problems(vm(), facts(free=0), Observed(domains={"db": running})) == []
    assert problems(vm(state="stopped"), facts(free=0)) == []


def test_max_memory_is_what_is_mapped_and_a_1gib_page_has_no_sysctl() -> None:
    m = vm(maxMemory="2GiB", memoryBacking={"hugepages": {"pageSize": "1GiB"}})
    [(_, message, hint)] = problems(m, facts(free=1, reserved=1, size=GiB))
    assert message.startswith("2GiB of memory needs 2 free 1GiB huge pages")
    assert "sysctl vm.nr_hugepages" not in hint and "hugepagesz=1024M hugepages=2" in hint
    assert "echo 2 > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages" in hint


def test_hugepages_true_counts_pages_of_the_default_size() -> None:
    [(where, message, _)] = problems(vm(memoryBacking={"hugepages": True}), facts(free=0))
    assert where == "spec.memoryBacking.hugepages" and "512 free 2MiB" in message


def test_unknown_counts_a_remote_host_are_not_judged() -> None:
    assert problems(vm(), HostFacts(page_sizes=PAGES, local=False)) == []


def test_the_counts_are_wanted_only_for_a_vm_to_run_on_huge_pages() -> None:
    assert wanted([vm()]).huge_pages
    assert not wanted([vm(state="stopped")]).huge_pages
    assert not wanted([vm(memoryBacking={"shared": True})]).huge_pages


def test_local_huge_pages_reads_sysfs_and_meminfo(tmp_path: Path) -> None:
    for kib, nr, free in ((2048, 8, 3), (1048576, 0, 0)):
        d = tmp_path / f"hugepages-{kib}kB"
        d.mkdir()
        (d / "nr_hugepages").write_text(f"{nr}\n")
        (d / "free_hugepages").write_text(f"{free}\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nHugepagesize:       2048 kB\n")
    assert local_huge_pages(str(tmp_path), str(meminfo)) == {
        "huge_pages": {2 * MiB: (8, 3), GiB: (0, 0)}, "default_huge_page": 2 * MiB}
    assert local_huge_pages(str(tmp_path / "none"), str(meminfo)) == {}
