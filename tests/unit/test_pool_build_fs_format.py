"""An fs pool with ``build: true`` names its filesystem: without one libvirt ran
``mkfs -t auto`` ("failed to execute mkfs.auto") after the pool was defined, a
failed apply with the pool left behind instead of one problem at plan time."""

from __future__ import annotations

import pytest

from tests.unit.test_pool_types import HEAD, problems

FS = HEAD % "p" + "  type: fs\n  path: /m\n  build: true\n"


@pytest.mark.parametrize(("source", "field"), [
    ("  source: {device: /dev/sdb}\n", "spec.build"),
    ("  source: {device: /dev/sdb, format: auto}\n", "spec.source.format"),
])  # fmt: skip
def test_building_an_fs_pool_needs_its_filesystem(source: str, field: str) -> None:
    found = problems(FS + source)
    assert len(found) == 1 and field in found[0] and "source.format: ext4" in found[0], found


def test_an_fs_pool_that_names_it_or_is_not_built_is_fine() -> None:
    assert problems(FS + "  source: {device: /dev/sdb, format: xfs}\n") == []
    unbuilt = FS.replace("  build: true\n", "") + "  source: {device: /dev/sdb}\n"
    assert problems(unbuilt) == []
