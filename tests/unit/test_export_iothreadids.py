"""Export of a domain whose I/O thread ids are not 1 .. n (libvirt's ``<iothreadids>``).

Found by breaking issue 13's vocabulary: ``<iothreads>2</iothreads>`` with
``<iothreadids>`` 1 and 3, a disk on I/O thread 3 and a pin of thread 3 (a valid
libvirt definition) made ``reconciler export`` fail ("cannot be exported: ... I/O
thread 3 is pinned, but the VM's are 1 to 2"), so the domain could not be adopted.
"""

from __future__ import annotations

from reconciler import export
from reconciler.hypervisor import DomainRecord
from reconciler.model import Kind
from reconciler.observe import Observed
from reconciler.schema import validate_document

HAND = """<domain type='qemu'>
  <name>hand</name>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>2</vcpu>
  <iothreads>2</iothreads>
  <iothreadids><iothread id='1'/><iothread id='{second}'/></iothreadids>
  <cputune><iothreadpin iothread='{second}' cpuset='0'/></cputune>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' iothread='{second}'/>
      <source file='/var/lib/libvirt/images/d.raw'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


def exported(second: int) -> dict[str, object]:
    xml = HAND.format(second=second)
    obs = Observed(domains={"hand": DomainRecord("hand", "u", False, False, xml, None)})
    [item] = export.export(obs, [export.Ref(Kind.VIRTUAL_MACHINE, "hand")])
    assert item.document is not None, item.notes
    assert validate_document(Kind.VIRTUAL_MACHINE, item.document) == []
    spec = item.document["spec"]
    assert isinstance(spec, dict)
    return spec


def test_ids_that_are_not_1_to_n_are_kept_and_the_rest_exported() -> None:
    spec = exported(3)
    assert "iothreads" not in spec  # kept as the domain has it (ids 1 and 3)
    assert spec["cputune"] == {"iothreadpin": [{"iothread": 3, "cpuset": "0"}]}
    assert spec["disks"][0]["iothread"] == 3  # type: ignore[index]


def test_ids_1_to_n_are_exported_as_iothreads() -> None:
    assert exported(2)["iothreads"] == 2
