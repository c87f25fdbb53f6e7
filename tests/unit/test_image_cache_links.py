"""The image cache (STATE/images) never follows a symbolic link planted in it.

reconciler runs as root: a link at ``<sha256>.part`` made it append the download to
the link's target (any file of the host), and a link at ``<sha256>`` made it read and
upload whatever the link points at once. A link is removed and the image fetched
into a file of our own.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from reconciler import imagefetch
from tests.unit.http_support import Served, serving


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_link_at_the_partial_download_is_not_written_through(tmp_path: Path) -> None:
    image = b"\x05" * 200_000
    cache, victim = tmp_path / "images", tmp_path / "victim"
    cache.mkdir()
    victim.write_bytes(b"a host file that is not ours\n")
    (cache / f"{_digest(image)}.part").symlink_to(victim)
    with serving(Served(files={"/a.img": image})) as served:
        path, fetched = imagefetch.fetch(served.url("/a.img"), _digest(image), cache,
                                         limit=10**7)  # fmt: skip
        assert served.bodies("/a.img") == [None]  # from the start, not resumed
    assert fetched and path.read_bytes() == image and not path.is_symlink()
    assert victim.read_bytes() == b"a host file that is not ours\n"


def test_a_link_at_the_image_is_not_used(tmp_path: Path) -> None:
    image = b"\x06" * 100_000
    cache, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.write_bytes(image)  # even one with the right digest: it can change later
    (cache / _digest(image)).symlink_to(elsewhere)
    assert imagefetch.cached(cache, _digest(image)) is None
    with serving(Served(files={"/a.img": image})) as served:
        path, fetched = imagefetch.fetch(served.url("/a.img"), _digest(image), cache,
                                         limit=10**7)  # fmt: skip
    assert fetched and not path.is_symlink() and path.read_bytes() == image
    assert imagefetch.cached(cache, _digest(image)) == path
    assert elsewhere.read_bytes() == image
