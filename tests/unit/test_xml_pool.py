"""reconciler.xml.pool: golden XML, round trip, libvirt's own additions ignored."""

from __future__ import annotations

import pytest

from reconciler.model import StoragePoolSpec
from reconciler.xml import pool

from .xml_support import assert_golden, manifest, read_data

IMAGES = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {type: dir, path: /var/lib/libvirt/images, autostart: true}
"""


def test_render_golden() -> None:
    m = manifest(IMAGES)
    assert isinstance(m.spec, StoragePoolSpec)
    assert_golden(pool.render(m.name, m.spec), "pool-images.xml")


@pytest.mark.parametrize("path", ["/srv/pool", "/srv/a & b <c>", "/", "/srv//odd/"])
def test_round_trip(path: str) -> None:
    spec = StoragePoolSpec(path=path)
    assert pool.observe(pool.render("p", spec)) == pool.project(spec)


def test_project_cleans_path_like_libvirt() -> None:
    assert pool.project(StoragePoolSpec(path="/srv//images/"))["path"] == "/srv/images"


def test_render_keeps_uuid() -> None:
    xml = pool.render(
        "p", StoragePoolSpec(path="/srv"), uuid="fc631c69-359a-473f-85ca-2b9eeb30de74"
    )
    assert "<uuid>fc631c69-359a-473f-85ca-2b9eeb30de74</uuid>" in xml


def test_observe_libvirt_xml() -> None:
    # pool.XMLDesc(0) of an active dir pool: uuid, sizes, permissions added.
    m = manifest(IMAGES)
    assert isinstance(m.spec, StoragePoolSpec)
    assert pool.observe(read_data("pool-images-libvirt.xml")) == pool.project(m.spec)
