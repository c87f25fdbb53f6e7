"""Issue 13: a Volume ``source: {url, sha256}``.

The pure parts: loading (only http/https, a digest, no backingVolume), the cache's
paths, the download's digest check, resume and limits (against a server on
127.0.0.1), the planner's steps and its plan errors (too big, wrong format), and
the executor leaving nothing behind when the image cannot be had.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import ssl
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler import imagefetch
from reconciler import inventory as inventory_file
from reconciler.executor import Executor, image_problem
from reconciler.inventory import Inventory
from reconciler.manifests import load_directory
from reconciler.model import Kind, VolumeSpec
from reconciler.plan import Op, Plan
from reconciler.reconcile import url_sources
from reconciler.snapshot import Observed
from tests.unit.conftest import WriteFiles
from tests.unit.http_support import Served, serving
from tests.unit.test_planner import STACK, action, converged, edit, load, plan_for

URL = "https://images.example.org/debian-12-genericcloud-amd64.qcow2"
SHA = "ab" * 32


def qcow2(virtual: int, payload: bytes = b"") -> bytes:
    """A qcow2 header of ``virtual`` bytes (enough for images.parse_header), then data."""
    head = b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, virtual)
    return head + bytes(512 - len(head)) + payload


def _url_source(write: WriteFiles, **spec: Any) -> Any:
    fields = {"source_url": URL, "source_sha256": SHA, **spec}
    return edit(load(write), "root", **fields)


# --- loading -----------------------------------------------------------------------


def _volume_problems(write: WriteFiles, source: str, extra: str = "") -> list[str]:
    text = STACK.replace("spec: {pool: images, capacity: 1GiB}",
                         f"spec: {{pool: images, capacity: 1GiB, source: {source}{extra}}}")
    found = [str(p) for p in load_directory(write(**{"stack.yaml": text})).problems]
    return [p for p in found if "spec.disks" not in p]  # (the VM then names no volume)


def test_a_url_source_loads_with_its_digest(write: WriteFiles) -> None:
    text = STACK.replace("spec: {pool: images, capacity: 1GiB}",
                         f"spec: {{pool: images, capacity: 1GiB, source: {{url: '{URL}', "
                         f"sha256: {SHA.upper()}}}}}")  # fmt: skip
    result = load_directory(write(**{"stack.yaml": text}))
    assert result.problems == ()
    [root] = [m for m in result.manifests if m.name == "root"]
    assert isinstance(root.spec, VolumeSpec)
    assert (root.spec.source, root.spec.source_url, root.spec.source_sha256) == (
        None, URL, SHA)  # digests compare in lower case
    assert root.spec.content == URL


@pytest.mark.parametrize(("source", "expected"), [
    (f"{{url: 'ftp://x.org/a.qcow2', sha256: {SHA}}}", "spec.source.url: 'ftp://x.org/a.qcow2' "
     "is not an http(s) URL"),
    (f"{{url: 'https:///a.qcow2', sha256: {SHA}}}", "spec.source.url: 'https:///a.qcow2' names "
     "no host"),
    ("{url: 'https://x.org/a.qcow2', sha256: abc}", "spec.source.sha256: 'abc' is not a SHA-256"),
    ("{url: 'https://x.org/a.qcow2'}", "spec.source.sha256: required field is missing"),
    ("'https://x.org/a.qcow2'", "is not an absolute path (expected e.g. /srv/images/base.qcow2; "
     "an image from a URL is a mapping: source: {url: https://..., sha256: ...})"),
])  # fmt: skip
def test_a_url_source_is_refused_without_http_or_a_digest(
    write: WriteFiles, source: str, expected: str
) -> None:
    [problem] = _volume_problems(write, source)
    assert expected in problem and "stack.yaml:" in problem


def test_a_url_source_on_a_backing_volume_is_refused(write: WriteFiles) -> None:
    [problem] = _volume_problems(write, f"{{url: '{URL}', sha256: {SHA}}}",
                                 ", backingVolume: base, format: qcow2")
    assert "spec.backingVolume" in problem and "cannot have a backingVolume" in problem
    assert "make the URL's image its own Volume" in problem


def test_only_http_and_https_are_fetched() -> None:
    assert imagefetch.url_problem("https://a.org/x") is None
    assert imagefetch.url_problem("http://127.0.0.1:8000/x") is None
    for bad in ("file:///etc/shadow", "ftp://a.org/x", "/srv/x.qcow2", "https:///x",
                "https://user:secret@a.org/x"):
        assert imagefetch.url_problem(bad) is not None, bad
    assert "secret" not in str(imagefetch.url_problem("https://user:secret@a.org/x"))


# --- the cache -----------------------------------------------------------------------


def test_cache_paths_are_named_by_digest_only(tmp_path: Path) -> None:
    assert imagefetch.cache_path(tmp_path, SHA) == tmp_path / SHA
    assert imagefetch.partial_path(tmp_path, SHA) == tmp_path / f"{SHA}.part"
    for bad in ("../" + SHA[3:], SHA.upper(), SHA[:-1], ""):
        with pytest.raises(ValueError):
            imagefetch.cache_path(tmp_path, bad)
    assert imagefetch.cached(tmp_path, SHA) is None
    (tmp_path / f"{SHA}.part").write_bytes(b"half")
    assert imagefetch.cached(tmp_path, SHA) is None  # a part is never an image
    (tmp_path / SHA).write_bytes(b"whole")
    assert imagefetch.cached(tmp_path, SHA) == tmp_path / SHA


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_download_is_verified_and_kept_once(tmp_path: Path) -> None:
    image = qcow2(64 * 1024**2, b"\x07" * 300_000)
    with serving(Served(files={"/a.qcow2": image})) as served:
        path, fetched = imagefetch.fetch(served.url("/a.qcow2"), _digest(image), tmp_path,
                                         limit=10**7)  # fmt: skip
        assert fetched and path.read_bytes() == image
        again, fetched = imagefetch.fetch(served.url("/a.qcow2"), _digest(image), tmp_path,
                                          limit=10**7)  # fmt: skip
        assert again == path and not fetched
        assert served.downloads("/a.qcow2") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [_digest(image)]


def test_a_digest_mismatch_names_both_digests_and_keeps_nothing(tmp_path: Path) -> None:
    image = b"\x01" * 100_000
    with serving(Served(files={"/a.img": image})) as served, \
            pytest.raises(imagefetch.FetchError) as caught:  # fmt: skip
        imagefetch.fetch(served.url("/a.img"), SHA, tmp_path, limit=10**7)
    message = str(caught.value)
    assert served.url("/a.img") in message and SHA in message and _digest(image) in message
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_is_never_used_and_is_resumed(tmp_path: Path) -> None:
    image = bytes(range(256)) * 2000
    served = Served(files={"/a.img": image}, cut_after={"/a.img": 200_000})
    with serving(served):
        with pytest.raises(imagefetch.FetchError, match="the next apply resumes it"):
            imagefetch.fetch(served.url("/a.img"), _digest(image), tmp_path, limit=10**7)
        assert imagefetch.cached(tmp_path, _digest(image)) is None
        assert (tmp_path / f"{_digest(image)}.part").stat().st_size == 200_000
        served.cut_after.clear()
        path, fetched = imagefetch.fetch(served.url("/a.img"), _digest(image), tmp_path,
                                         limit=10**7)  # fmt: skip
    assert fetched and path.read_bytes() == image
    assert served.bodies("/a.img") == [None, "bytes=200000-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [_digest(image)]


def test_a_download_over_its_limit_is_cut_off(tmp_path: Path) -> None:
    image = b"\x02" * 300_000
    with serving(Served(files={"/a.img": image})) as served, \
            pytest.raises(imagefetch.FetchError, match="more than the 1000 bytes"):  # fmt: skip
        imagefetch.fetch(served.url("/a.img"), _digest(image), tmp_path, limit=1000)
    assert list(tmp_path.iterdir()) == []


def test_redirects_are_followed_to_http_only(tmp_path: Path) -> None:
    image = b"\x03" * 1000
    served = Served(files={"/b.img": image})
    with serving(served):
        served.redirects["/a.img"] = served.url("/b.img")
        served.redirects["/evil.img"] = "file:///etc/hostname"
        path, _ = imagefetch.fetch(served.url("/a.img"), _digest(image), tmp_path, limit=10**6)
        assert path.read_bytes() == image
        with pytest.raises(imagefetch.FetchError, match=r"file:///etc/hostname.* not allowed"):
            imagefetch.fetch(served.url("/evil.img"), SHA, tmp_path, limit=10**6)
        served.redirects["/loop.img"] = served.url("/loop.img?again")
        served.redirects["/loop.img?again"] = served.url("/loop.img")
        with pytest.raises(imagefetch.FetchError, match="more than 5 redirects"):
            imagefetch.fetch(served.url("/loop.img"), SHA, tmp_path, limit=10**6)
        # bounded: the first request and at most MAX_REDIRECTS more
        assert len(served.bodies("/loop.img") + served.bodies("/loop.img?again")) == 1 + \
            imagefetch.MAX_REDIRECTS


def test_a_probe_reads_the_header_and_the_size_only() -> None:
    image = qcow2(8 * 1024**3, b"\x00" * 1_000_000)
    with serving(Served(files={"/a.qcow2": image, "/r.img": b"\x05" * 4096})) as served:
        found = imagefetch.probe(served.url("/a.qcow2"))
        raw = imagefetch.probe(served.url("/r.img"))
        with pytest.raises(imagefetch.FetchError, match="HTTP 404"):
            imagefetch.probe(served.url("/missing"))
    assert found.size == len(image) and found.format == "qcow2"
    assert found.header is not None and found.header.virtual_size == 8 * 1024**3
    assert raw.format == "raw" and raw.header is not None and raw.header.virtual_size == 4096
    assert served.bodies("/a.qcow2") == ["bytes=0-511"]


def test_the_progress_line_is_for_terminals_only() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    ticks = iter([0.0, 1.0, 2.0])
    shown = Tty()
    progress = imagefetch.TtyProgress("fetching x", shown, clock=lambda: next(ticks))
    progress(1024**2, 2 * 1024**2)
    progress(2 * 1024**2, 2 * 1024**2)
    progress.done()
    assert shown.getvalue().endswith("\rfetching x: 2.0/2.0 MiB, 1.0 MiB/s\x1b[K\n")
    log = io.StringIO()
    quiet = imagefetch.TtyProgress("fetching x", log)
    quiet(1, 2)
    quiet.done()
    assert log.getvalue() == ""


# --- planning ---------------------------------------------------------------------


def test_a_url_volume_fetches_before_anything_touches_libvirt(write: WriteFiles) -> None:
    result = _url_source(write)
    root = action(plan_for(result, Observed()), Kind.VOLUME, "root")
    assert root.op is Op.CREATE
    assert [s.verb for s in root.steps] == ["fetch-image", "create-volume", "import-volume"]
    fetch, _, copy = root.steps
    assert (fetch.url, fetch.sha256, fetch.format, fetch.capacity) == (URL, SHA, "qcow2",
                                                                       1024**3)  # fmt: skip
    assert (copy.url, copy.sha256, copy.source) == (URL, SHA, None)
    assert root.owner_record[inventory_file.CONTENT_PENDING] == {"source": URL}
    # once made and verified, in sync; a pending copy fetches (from the cache) again
    assert action(plan_for(result, converged(result, running=False)), Kind.VOLUME,
                  "root").op is Op.NOOP  # fmt: skip
    observed = converged(result, running=False)
    objects = dict(observed.inventory.objects)
    objects["Volume/root"] = {**objects["Volume/root"],
                              inventory_file.CONTENT_PENDING: {"source": URL}}
    pending = dataclasses.replace(observed, inventory=Inventory(objects))
    again = action(plan_for(result, pending), Kind.VOLUME, "root")
    assert again.op is Op.UPDATE_LIVE
    assert [s.verb for s in again.steps] == ["fetch-image", "import-volume"]


def test_a_new_url_or_digest_does_not_touch_a_volume_in_sync(write: WriteFiles) -> None:
    """Like a path, a URL source is what a new volume is filled with."""
    result = _url_source(write)
    observed = converged(result, running=False)
    for changed in ({"source_url": URL + "?v=2"}, {"source_sha256": "cd" * 32}):
        root = action(plan_for(edit(result, "root", **changed), observed), Kind.VOLUME, "root")
        assert root.op is Op.NOOP and root.steps == (), changed


def test_a_url_image_larger_than_capacity_is_a_plan_error(write: WriteFiles) -> None:
    result = _url_source(write)
    root = action(plan_for(result, Observed(), source_sizes={URL: 2 * 1024**3}),
                  Kind.VOLUME, "root")  # fmt: skip
    assert root.op is Op.ERROR and root.steps == ()
    assert URL in root.reason and "more than capacity 1GiB" in root.reason
    # an existing volume in sync is not judged by its source's size
    fine = plan_for(result, converged(result, running=False), source_sizes={URL: 2 * 1024**3})
    assert action(fine, Kind.VOLUME, "root").op is Op.NOOP


def test_a_url_image_in_another_format_is_a_plan_error(write: WriteFiles) -> None:
    result = _url_source(write)
    root = action(plan_for(result, Observed(), source_formats={URL: "raw"}), Kind.VOLUME, "root")
    assert root.op is Op.ERROR and root.steps == ()
    assert "is a raw image, but the volume's format is qcow2; set format: raw" in root.reason
    vmdk = action(plan_for(result, Observed(), source_formats={URL: "vmdk"}), Kind.VOLUME,
                  "root")  # fmt: skip
    assert vmdk.op is Op.ERROR and "convert it to qcow2 or raw" in vmdk.reason
    ok = action(plan_for(result, Observed(), source_formats={URL: "qcow2"}), Kind.VOLUME, "root")
    assert ok.op is Op.CREATE


def test_url_facts_come_from_the_cache_before_the_network(write: WriteFiles,
                                                          tmp_path: Path) -> None:
    result = _url_source(write)
    asked: list[str] = []

    def look(url: str) -> imagefetch.Probe:
        asked.append(url)
        return imagefetch.Probe(5000, None, "raw")

    assert url_sources(result.manifests, Observed(), None, look=look) == ({}, {URL: "raw"})
    cache = tmp_path / "images"
    cache.mkdir()
    (cache / SHA).write_bytes(qcow2(3 * 1024**2))
    assert url_sources(result.manifests, Observed(), cache, look=look) == (
        {URL: 3 * 1024**2}, {URL: "qcow2"})
    assert asked == [URL]
    # a volume in sync is not looked at
    assert url_sources(result.manifests, converged(result, running=False), None,
                       look=look) == ({}, {})  # fmt: skip
    assert asked == [URL]


def test_a_fetched_image_is_checked_against_the_volume(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(qcow2(2 * 1024**2))
    assert image_problem(str(image), URL, "qcow2", 2 * 1024**2) is None
    assert "set format: qcow2" in str(image_problem(str(image), URL, "raw", 2 * 1024**2))
    assert "more than capacity" in str(image_problem(str(image), URL, "qcow2", 1024**2))
    image.write_bytes(b"\x00" * 4096)
    assert image_problem(str(image), URL, "raw", 4096) is None
    assert "is a raw image" in str(image_problem(str(image), URL, "qcow2", 4096))


# --- the executor -------------------------------------------------------------------


class _NoLibvirt:
    """A hypervisor that fails the test if the executor touches it."""

    remote = False

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"libvirt touched: {name}")


def test_a_mismatch_fails_the_create_before_libvirt_and_claims_nothing(
    write: WriteFiles, tmp_path: Path
) -> None:
    image = b"\x09" * 50_000
    with serving(Served(files={"/a.img": image})) as served:
        result = edit(load(write), "root", source_url=served.url("/a.img"), source_sha256=SHA,
                      format="raw")  # fmt: skip
        root = action(plan_for(result, Observed()), Kind.VOLUME, "root")
        state = tmp_path / "state"
        executor = Executor(_NoLibvirt(), Inventory(), state)  # type: ignore[arg-type]
        [outcome] = executor.apply(Plan((root,)))
    assert outcome.outcome == "failed"
    assert SHA in outcome.error and _digest(image) in outcome.error
    assert served.url("/a.img") in outcome.error
    assert "Volume/root" not in inventory_file.load(state).objects
    assert list((state / "images").iterdir()) == []


def test_a_stop_ends_a_download_and_keeps_its_part(write: WriteFiles, tmp_path: Path) -> None:
    """SIGTERM (``should_stop``) does not wait for a long download: the part is kept
    for the next start to resume, and libvirt is not touched."""
    image = b"\x0a" * (3 * imagefetch.CHUNK)
    with serving(Served(files={"/a.img": image})) as served:
        result = edit(load(write), "root", source_url=served.url("/a.img"),
                      source_sha256=_digest(image), format="raw")  # fmt: skip
        root = action(plan_for(result, Observed()), Kind.VOLUME, "root")
        state = tmp_path / "state"
        stops = iter([False, False, True])
        executor = Executor(_NoLibvirt(), Inventory(), state,  # type: ignore[arg-type]
                            should_stop=lambda: next(stops, True))  # fmt: skip
        [outcome] = executor.apply(Plan((root,)))
    assert outcome.outcome == "failed" and "the next apply resumes it" in outcome.error
    [part] = (state / "images").iterdir()
    assert part.name.endswith(".part") and 0 < part.stat().st_size < len(image)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate")
def test_tls_certificates_are_verified(tmp_path: Path) -> None:
    """An https server whose certificate no trusted authority signed is refused."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    image = b"\x0b" * 1000
    with serving(Served(files={"/a.img": image}), tls=context) as served, \
            pytest.raises(imagefetch.FetchError, match="CERTIFICATE_VERIFY_FAILED"):  # fmt: skip
        imagefetch.fetch(f"https://127.0.0.1:{served.port}/a.img", _digest(image),
                         tmp_path / "cache", limit=10**6)  # fmt: skip
