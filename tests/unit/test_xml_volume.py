"""reconciler.xml.volume: golden XML, round trip, libvirt's own additions ignored."""

from __future__ import annotations

import pytest

from reconciler.model import VolumeSpec
from reconciler.xml import volume

from .xml_support import assert_golden, manifest, read_data

ROOT = """
apiVersion: reconciler/v1
kind: Volume
metadata: {name: win7-root}
spec: {pool: images, format: qcow2, capacity: 20GiB, backingVolume: win7-base}
"""
BASE_PATH = "/var/lib/libvirt/images/win7-base"


def _spec(text: str) -> VolumeSpec:
    spec = manifest(text).spec
    assert isinstance(spec, VolumeSpec)
    return spec


def test_render_golden_clone() -> None:
    xml = volume.render("win7-root", _spec(ROOT), backing_path=BASE_PATH, backing_format="qcow2")
    assert_golden(xml, "volume-clone.xml")


def test_render_golden_raw() -> None:
    assert_golden(
        volume.render("data.img", VolumeSpec(pool="p", capacity=10**9, format="raw")),
        "volume-raw.xml",
    )


@pytest.mark.parametrize(
    "spec",
    [
        VolumeSpec(pool="p", capacity=20 * 1024**3),
        VolumeSpec(pool="p", capacity=1000, format="raw"),
        VolumeSpec(pool="p", capacity=1_000_001, format="qcow2"),
        VolumeSpec(pool="p", capacity=1024**3, backing_volume="base"),
    ],
)
def test_round_trip(spec: VolumeSpec) -> None:
    kw = {"backing_path": "/p/base", "backing_format": "qcow2"} if spec.backing_volume else {}
    assert volume.observe(volume.render("v", spec, **kw)) == volume.project(spec, **kw)


def test_qcow2_capacity_rounds_up_to_sectors() -> None:
    # qemu-img makes qcow2 images in 512-byte sectors: 1000001 reads back as 1000448.
    assert volume.project(VolumeSpec(pool="p", capacity=1_000_001))["capacity"] == 1_000_448
    raw = VolumeSpec(pool="p", capacity=1_000_001, format="raw")
    assert volume.project(raw)["capacity"] == 1_000_001


def test_clone_needs_backing_path() -> None:
    with pytest.raises(ValueError, match="backing_path"):
        volume.render("v", _spec(ROOT))


def test_observe_libvirt_xml() -> None:
    # vol.XMLDesc(0): key, allocation, physical, permissions, timestamps added.
    expected = volume.project(_spec(ROOT), backing_path=BASE_PATH, backing_format="qcow2")
    assert volume.observe(read_data("volume-clone-libvirt.xml")) == expected
    assert expected == {
        "capacity": 20 * 1024**3,
        "format": "qcow2",
        "backingVolume": BASE_PATH,
        "backingFormat": "qcow2",
    }
