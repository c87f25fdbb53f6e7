"""A server that trickles bytes (each within the socket timeout) does not hold a plan
or an apply without end: the probe of a plan has one deadline for its first bytes,
and a download that brings in less than ``MIN_PROGRESS`` bytes in ``TIMEOUT`` seconds
is stopped, its part kept for the next apply to resume."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler import imagefetch

SHA = "ab" * 32
BODY = 4096


@contextmanager
def trickling(every: float) -> Iterator[str]:
    """A server on 127.0.0.1 that sends a ``BODY``-byte file one byte every ``every`` s."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(BODY))
            self.end_headers()
            for _ in range(BODY):
                if stop.is_set():
                    return
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(every)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_a_probe_of_a_trickling_server_ends_at_its_deadline() -> None:
    with trickling(0.05) as url:
        start = time.monotonic()
        with pytest.raises(imagefetch.FetchError, match="too slow"):
            imagefetch.probe(url, timeout=0.5)  # 512 bytes would take 25 s
        assert time.monotonic() - start < 3


def test_a_trickling_download_stops_and_keeps_its_part(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imagefetch, "TIMEOUT", 0.5)
    with trickling(0.05) as url:
        start = time.monotonic()
        with pytest.raises(imagefetch.FetchError, match="the next apply resumes it"):
            imagefetch.fetch(url, SHA, tmp_path, limit=10**6)  # 4096 bytes: 200 s
        assert time.monotonic() - start < 3
    part = imagefetch.partial_path(tmp_path, SHA)
    assert 0 < part.stat().st_size < BODY
    assert imagefetch.cached(tmp_path, SHA) is None
