"""Volume images from an ``http(s)`` URL: fetched once into a cache, verified by SHA-256.

A Volume ``source: {url: https://..., sha256: HEX}`` names an image by its digest;
the URL is only where to get it. The cache is ``STATE/images/`` (statedir.IMAGES):

* ``<sha256>``       a complete image whose digest was checked; the only file used;
* ``<sha256>.part``  a download in progress or interrupted, never used as an image:
  the next fetch resumes it with an HTTP ``Range`` request (or starts again when
  the server ignores ranges), and the digest covers the whole file.

A digest that does not match deletes the partial file: nothing of a wrong image is
kept. Only ``http`` and ``https`` are fetched (TLS certificates verified by the
system's trust store, Python's default context), redirects are followed at most
``MAX_REDIRECTS`` times and only to ``http(s)``, and a download larger than its
limit is cut off. The URL is passed to ``urllib`` only, never to a shell or program.

No libvirt here: the executor streams the cached file into the volume through
``Hypervisor.import_file``; the planner learns an image's size and format from
``probe`` (the first bytes, by a ranged GET) or from the cached file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # imported when a download starts: they cost the CLI ~20 ms to load
    import urllib.request

from reconciler import images
from reconciler.errors import ReconcilerError

SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
TIMEOUT = 60.0  # seconds without data before a download is given up
PROBE_TIMEOUT = 10.0  # seconds a plan waits for an image's first bytes
PROBE_BYTES = 512  # the header a probe reads (qcow2 needs 32, sniffing 72)
CHUNK = 1024 * 1024
MIN_PROGRESS = 64 * 1024  # bytes a download must bring in every TIMEOUT seconds
SHA256 = re.compile(r"^[0-9a-f]{64}$")
PART = ".part"
USER_AGENT = "reconciler (volume image fetch)"

Progress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) as a download proceeds."""


class FetchError(ReconcilerError):
    """An image could not be fetched or did not verify; the message names the URL."""


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be fetched (scheme other than http/https, no host), or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{url!r} is not a URL ({exc})"
    if parts.scheme not in SCHEMES:
        return f"{url!r}: only http and https URLs are fetched, not {parts.scheme or 'a path'}"
    if not parts.hostname:
        return f"{url!r} names no host"
    if parts.username is not None or parts.password is not None:
        # the URL is logged, planned and kept in the inventory: no secret belongs in it
        return (f"{parts.scheme}://{parts.hostname}/...: a URL with a user name or password "
                "is refused (it would be logged and stored); publish the image where it "
                "can be read without one")
    return None


def cache_path(cache: Path, sha256: str) -> Path:
    """The verified image of digest ``sha256`` in ``cache`` (``ValueError`` for a value
    that is not 64 lowercase hex digits: it becomes a file name)."""
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256 digest: {sha256!r}")
    return cache / sha256


def partial_path(cache: Path, sha256: str) -> Path:
    """Where the download of ``sha256`` is written until it is verified."""
    return cache_path(cache, sha256).with_name(sha256 + PART)


def cached(cache: Path | None, sha256: str) -> Path | None:
    """The complete cached image of ``sha256``, if there is one (not re-verified)."""
    if cache is None:
        return None
    path = cache_path(cache, sha256)
    return path if _plain_file(path) else None


def _plain_file(path: Path) -> bool:
    """A regular file at ``path`` itself, not through a symbolic link: the cache is
    written and read by root, and a link planted there would point it at another file."""
    return path.is_file() and not path.is_symlink()


def mismatch_message(url: str, expected: str, actual: str) -> str:
    """The one message of a digest that does not match (URL, expected, actual)."""
    return (f"image {url} does not match its sha256: expected {expected}, got {actual}; "
            "nothing was kept (check the URL and the sha256 the distribution publishes)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def opener() -> urllib.request.OpenerDirector:
    """An opener for http(s) only: the environment's proxy settings, our redirect
    rules, certificate verification on (the default HTTPS context)."""
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        """Redirects bounded in number and kept to http/https (urllib also allows ftp)."""

        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                             msg: str, headers: Any,
                             newurl: str) -> urllib.request.Request | None:  # fmt: skip
            if urlsplit(newurl).scheme not in SCHEMES:
                raise FetchError(f"{req.full_url} redirects to {newurl}, which is not http(s)")
            hops = getattr(req, "redirects", 0) + 1
            if hops > MAX_REDIRECTS:  # (urllib counts distinct URLs only)
                raise FetchError(f"{req.full_url}: more than {MAX_REDIRECTS} redirects")
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            if new is not None:
                new.redirects = hops  # type: ignore[attr-defined]
            return new

    return urllib.request.build_opener(Redirects())


def _open(url: str, headers: dict[str, str], timeout: float,
          open_with: urllib.request.OpenerDirector | None) -> Any:
    import http.client
    import urllib.error
    import urllib.request

    problem = url_problem(url)
    if problem is not None:
        raise FetchError(problem)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
    try:
        return (open_with or opener()).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # range not satisfiable: the caller starts again
        raise FetchError(f"fetching {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise FetchError(f"fetching {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"fetching {url}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Probe:
    """What a plan knows of a remote image before downloading it."""

    size: int | None  # bytes of the file (Content-Range total or Content-Length)
    header: images.ImageHeader | None  # read from its first bytes, when it could be
    format: str | None = None  # images.sniff_format of its first bytes


def probe(url: str, *, timeout: float = PROBE_TIMEOUT,
          open_with: urllib.request.OpenerDirector | None = None) -> Probe:
    """The size and header of the image at ``url`` from one ranged GET of its first
    ``PROBE_BYTES`` (a server that ignores ranges is read only that far). ``FetchError``
    when the server cannot be reached or answers with an error."""
    import http.client

    deadline = time.monotonic() + timeout
    response = _open(url, {"Range": f"bytes=0-{PROBE_BYTES - 1}"}, timeout, open_with)
    with contextlib.closing(response):
        size = _total_size(response)
        read = getattr(response, "read1", response.read)
        head = b""
        try:
            # piece by piece against one deadline: a server that sends a byte now and
            # then (each within the socket's timeout) does not hold the plan for long
            while len(head) < PROBE_BYTES:
                piece = read(PROBE_BYTES - len(head))
                if not piece:
                    break
                head += piece
                if len(head) < PROBE_BYTES and time.monotonic() > deadline:
                    raise FetchError(f"fetching {url}: fewer than {PROBE_BYTES} bytes in "
                                     f"{timeout:g} s; the server is too slow")  # fmt: skip
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"fetching {url}: {exc}") from None
    if size is None:
        return Probe(None, None, images.sniff_format(head))
    return Probe(size, images.parse_header(head, size), images.sniff_format(head))


def image_facts(url: str, sha256: str, cache: Path | None,
                look: Callable[[str], Probe] = probe) -> tuple[int | None, str | None]:
    """(virtual size in bytes, format) of the image ``sha256`` at ``url``: from the
    cached file when there is one, else from ``look`` (a probe of the server); (None,
    None) where neither can tell (a server that cannot be reached: the fetch at apply
    time reports it). The virtual size is a qcow2 header's, or a raw file's length."""
    path = cached(cache, sha256)
    try:
        if path is not None:
            with open(path, "rb") as f:
                head = f.read(images.SNIFF)
            header = images.read_header(str(path))
            return header.virtual_size, images.sniff_format(head)
        found = look(url)
    except (OSError, FetchError):
        return None, None
    return (found.header.virtual_size if found.header else None), found.format


def _total_size(response: Any) -> int | None:
    """The whole file's size from a 206's Content-Range, else a 200's Content-Length."""
    headers = response.headers
    if getattr(response, "status", None) == 206:
        found = re.match(r"bytes \d+-\d+/(\d+)$", headers.get("Content-Range", "") or "")
        return int(found[1]) if found else None
    length = headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(url: str, sha256: str, cache: Path, *, limit: int,
          progress: Progress | None = None,
          open_with: urllib.request.OpenerDirector | None = None) -> tuple[Path, bool]:
    """The verified image ``sha256`` in ``cache``, downloaded from ``url`` unless a
    verified copy is there already: (its path, whether it was downloaded now).

    Resumes ``<sha256>.part`` where an earlier download stopped; a download that ends
    early keeps its part for the next try (``FetchError``: "closed after N of M
    bytes"). A digest mismatch deletes the part and raises ``FetchError`` naming the
    URL, the expected and the actual digest. More than ``limit`` bytes is refused."""
    final = cache_path(cache, sha256)
    if _plain_file(final):
        if file_sha256(final) == sha256:
            return final, False
        final.unlink()  # changed on disk since it was verified: fetched again
    elif final.is_symlink():
        final.unlink()  # never followed: fetched again into a file of our own
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = partial_path(cache, sha256)
    if part.is_symlink():
        part.unlink()  # a link is not a download of ours: root would append to its target
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = _open(url, headers, TIMEOUT, open_with)
    try:
        status = getattr(response, "status", None)
        if have and (status != 206 or not _starts_at(response, have)):
            have = 0  # the server sends the whole file (or refused the range): start over
            if status == 416:
                response.close()
                response = _open(url, {}, TIMEOUT, open_with)
        if getattr(response, "status", None) == 416:
            raise FetchError(f"fetching {url}: HTTP 416 for a request without a range")
        total = _total_size(response)
        if total is not None and total > limit:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise FetchError(f"image {url} is {total} bytes, more than the {limit} bytes "
                             "allowed for this volume")  # fmt: skip
        _write(response, part, have, total, limit, url, progress)
    finally:
        response.close()
    actual = file_sha256(part)
    if actual != sha256:
        part.unlink()
        raise FetchError(mismatch_message(url, sha256, actual))
    os.replace(part, final)
    _fsync_dir(cache)
    return final, True


def _starts_at(response: Any, offset: int) -> bool:
    found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", "") or "")
    return found is not None and int(found[1]) == offset


def _write(response: Any, part: Path, have: int, total: int | None, limit: int, url: str,
           progress: Progress | None) -> None:
    """Append the body of ``response`` to ``part`` (truncated when ``have`` is 0)."""
    import http.client

    done = have
    read = getattr(response, "read1", response.read)
    window, brought = time.monotonic(), 0  # bytes brought in since ``window`` began
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if have else os.O_TRUNC)
    try:
        fd = os.open(part, flags, 0o600)
    except OSError as exc:
        raise FetchError(f"fetching {url}: cannot write {part}: {exc.strerror}") from None
    with open(fd, "ab" if have else "wb") as out:
        try:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                done += len(chunk)
                brought += len(chunk)
                if done > limit:
                    out.close()
                    part.unlink()
                    raise FetchError(f"image {url} goes on past the {limit} bytes allowed "
                                     "for this volume; not kept")  # fmt: skip
                out.write(chunk)
                if progress is not None:
                    progress(done, total)
                if time.monotonic() - window >= TIMEOUT:
                    if brought < MIN_PROGRESS:  # a trickle that never times out a read
                        raise TimeoutError(f"less than {MIN_PROGRESS} bytes in "
                                           f"{TIMEOUT:g} s")  # fmt: skip
                    window, brought = time.monotonic(), 0
        except (OSError, http.client.HTTPException) as exc:
            out.flush()
            os.fsync(out.fileno())
            said = f"{done} of {total} bytes" if total else f"{done} bytes"
            raise FetchError(f"fetching {url}: the transfer stopped after {said} ({exc}); "
                             "the next apply resumes it") from None
        out.flush()
        os.fsync(out.fileno())
    if total is not None and done < total:
        raise FetchError(f"fetching {url}: the server closed after {done} of {total} bytes; "
                         "the next apply resumes it")  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TtyProgress:
    """A progress line on a terminal: ``label: 12.0/300.0 MiB, 45.1 MiB/s`` rewritten in
    place at most every ``every`` seconds, ended with a newline by ``done``. Writes
    nothing when ``stream`` is not a TTY (log files and journald get only the start and
    end events the executor logs)."""

    def __init__(self, label: str, stream: IO[str] | None = None, every: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.stream, self.every, self.clock = label, stream or sys.stderr, every, clock
        self.start = self.last = clock()
        self.shown = False
        self.active = self.stream.isatty()

    def __call__(self, done: int, total: int | None) -> None:
        now = self.clock()
        if not self.active or (now - self.last < self.every and done != total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        mib = 1024 * 1024
        amount = f"{done / mib:.1f}/{total / mib:.1f} MiB" if total else f"{done / mib:.1f} MiB"
        self.stream.write(f"\r{self.label}: {amount}, {rate / mib:.1f} MiB/s\x1b[K")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
