"""``video.vram`` compares as libvirt rounds it. Found by breaking issue 13's
vocabulary: ``video: {model: qxl, vram: 1000KiB}`` was defined, libvirt 9.0 kept
``vram='1024'`` (it rounds every model's vram up to a power of two KiB; measured with
virsh define for vga, qxl, bochs and cirrus), and the apply reported itself
"unsettled ... a bug in reconciler". A vga vram under 1MiB is refused by libvirt."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reconciler.errors import SourcePosition
from reconciler.model import SpecError, VirtualMachineSpec, build_manifest

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm}
spec: {memory: 256MiB, vcpus: 1}
"""


def video(**fields: Any) -> Any:
    document: Any = yaml.safe_load(VM)
    document["spec"]["video"] = fields
    m = build_manifest(document, SourcePosition("vm.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    return m.spec.devices.video


@pytest.mark.parametrize(
    ("model", "written", "kept_kib"),
    [("qxl", "1000KiB", 1024), ("vga", "3000KiB", 4096), ("bochs", "20000KiB", 32768),
     ("cirrus", "100KiB", 128), ("qxl", "64MiB", 65536)],
)  # fmt: skip
def test_vram_is_what_libvirt_keeps(model: str, written: str, kept_kib: int) -> None:
    assert video(model=model, vram=written).vram == kept_kib * 1024


def test_a_vga_vram_under_1mib_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        video(model="vga", vram="100KiB")
    [problem] = err.value.problems
    assert problem.path == ("spec", "video", "vram")
    assert "at least 1MiB" in problem.message
