"""A file the serial port writes is no disk. Found by breaking issue 13's vocabulary:
``serial: {type: pty, log: {file: <another VM's qcow2 image>}}`` (inside
allowedDiskRoots, where the images are too) was planned and applied, and starting
the VM truncated the image to 0 bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord
from reconciler.model import Manifest, build_manifest
from reconciler.observe import Observed
from reconciler.preflight import HostFacts, PathFacts, check, wanted

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  type: qemu
  memory: 256MiB
  vcpus: 1
  graphics: {type: none}
  state: stopped
"""


def vm(name: str = "vm", **spec: Any) -> Manifest:
    document: Any = yaml.safe_load(VM)
    document["metadata"]["name"] = name
    document["spec"].update(spec)
    return build_manifest(document, SourcePosition(f"{name}.yaml"))


def problems(manifests: list[Manifest], observed: Observed | None = None,
             paths: dict[str, PathFacts] | None = None) -> list[tuple[str, str]]:  # fmt: skip
    facts = HostFacts(paths=paths or {})
    return [(".".join(map(str, p.path)), p.message)
            for _, p in check(manifests, facts, observed or Observed())]  # fmt: skip


def test_a_log_on_another_manifests_disk_is_refused(tmp_path: Path) -> None:
    disk = str(tmp_path / "other.raw")
    other = vm("other", disks=[{"file": disk, "format": "raw"}])
    me = vm(serial={"type": "pty", "log": {"file": disk}})
    found = problems([other, me], paths={disk: PathFacts(exists=True)})
    assert [p for p, _ in found] == ["spec.serial.log.file"], found
    assert "is a disk or volume" in found[0][1]


def test_a_serial_file_on_a_libvirt_domains_disk_is_refused(tmp_path: Path) -> None:
    disk = str(tmp_path / "hand.qcow2")
    xml = (f"<domain type='qemu'><name>hand</name><devices><disk type='file' device='disk'>"
           f"<source file='{disk}'/><target dev='vda'/></disk></devices></domain>")  # fmt: skip
    observed = Observed(domains={"hand": DomainRecord("hand", "u", False, False, xml, None)})
    found = problems([vm(serial={"file": disk})], observed)
    assert [p for p, _ in found] == ["spec.serial.file"]


def test_a_file_with_an_image_header_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "orphan.qcow2")
    facts = {path: PathFacts(exists=True, image_format="qcow2")}
    found = problems([vm(serial={"file": path})], paths=facts)
    assert found and "qcow2 disk image" in found[0][1]


def test_a_log_file_of_its_own_is_fine(tmp_path: Path) -> None:
    log = str(tmp_path / "vm-serial.log")
    facts = {log: PathFacts(exists=True, image_format="raw")}
    assert problems([vm(serial={"type": "pty", "log": {"file": log, "append": True}})],
                    paths=facts) == []  # fmt: skip
    assert log in wanted([vm(serial={"file": log})]).paths  # its header is read
