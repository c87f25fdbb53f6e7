"""Preflight against the tuning a manifest leaves to the domain (``numa`` and
``iothreads`` not named: kept). Found by breaking issue 13's vocabulary:

* a memory change on a domain whose NUMA cells are kept was planned and applied,
  libvirt kept the cells' sum, and the apply reported itself "unsettled ... a bug in
  reconciler" instead of the plan naming the user's contradiction;
* a disk ``iothread`` on a new VM without ``iothreads`` was planned as a create and
  failed at apply with libvirt's "Disk iothread '1' not defined in iothreadid",
  pointing at the document's first line.
"""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord
from reconciler.model import VirtualMachineSpec, build_manifest
from reconciler.observe import Observed
from reconciler.preflight import HostFacts, _context, check

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hand}
spec:
  type: qemu
  memory: 256MiB
  vcpus: 2
  graphics: {type: none}
  state: stopped
"""

NUMA_DOMAIN = """<domain type='qemu'>
  <name>hand</name>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>2</vcpu>
  <iothreads>2</iothreads>
  <iothreadids><iothread id='1'/><iothread id='3'/></iothreadids>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <cpu><numa>
    <cell id='0' cpus='0' memory='131072' unit='KiB'/>
    <cell id='1' cpus='1' memory='131072' unit='KiB'/>
  </numa></cpu>
  <devices/>
</domain>"""


def problems(spec: dict[str, Any], domain_xml: str | None = None) -> list[tuple[str, str]]:
    document: Any = yaml.safe_load(VM)
    document["spec"].update(spec)
    m = build_manifest(document, SourcePosition("vm.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    domains = (
        {}
        if domain_xml is None
        else {"hand": DomainRecord("hand", "u", False, False, domain_xml, None)}
    )
    observed = Observed(domains=domains)
    found = check([m], HostFacts(), observed)
    assert _context([m], observed) is not None
    return [(".".join(map(str, p.path)), p.message + "; " + p.hint) for _, p in found]


DISK = {"file": "/var/lib/libvirt/images/d.raw", "format": "raw"}


def test_a_disk_iothread_on_a_new_vm_without_iothreads_is_a_plan_error() -> None:
    [(path, text)] = problems({"disks": [{**DISK, "iothread": 1}]})
    assert path == "spec.disks.0.iothread"
    assert "a new VM has none" in text and "add iothreads: 1" in text
    assert problems({"disks": [{**DISK, "iothread": 1}], "iothreads": 1}) == []


def test_a_disk_iothread_is_checked_against_the_kept_iothreadids() -> None:
    # ids 1 and 3 (libvirt's <iothreadids>), not 1 .. <iothreads>
    assert problems({"memory": "256MiB", "disks": [{**DISK, "iothread": 3}]}, NUMA_DOMAIN) == []
    [(path, text)] = problems({"disks": [{**DISK, "iothread": 2}]}, NUMA_DOMAIN)
    assert path == "spec.disks.0.iothread" and "the domain's are 1,3" in text


def test_memory_against_kept_numa_cells_is_a_plan_error() -> None:
    assert problems({}, NUMA_DOMAIN) == []
    [(path, text)] = problems({"memory": "512MiB"}, NUMA_DOMAIN)
    assert path == "spec.memory"
    assert "hold 256MiB" in text and "write memory: 256MiB" in text
    [(path, _)] = problems({"maxMemory": "1GiB"}, NUMA_DOMAIN)
    assert path == "spec.maxMemory"
    # numa named: the model checks the cells against the memory, not the domain's
    cells = [{"id": 0, "cpus": "0-1", "memory": "512MiB"}]
    assert problems({"memory": "512MiB", "numa": cells}, NUMA_DOMAIN) == []
