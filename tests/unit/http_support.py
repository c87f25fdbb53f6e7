"""A small HTTP server on 127.0.0.1 for the tests of Volume images from URLs.

It serves byte strings by path, honours ``Range: bytes=N-`` (and ``N-M``) as a
mirror does, counts the requests it gets, and can be told to close a response
early (an interrupted download) or to redirect. Nothing but loopback: it binds
127.0.0.1 on a free port, and stops when the ``with`` block ends.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Served:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent, then close
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[str | None]:
        """The Range header of each GET of ``path`` (None: the whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]

    def downloads(self, path: str) -> int:
        """GETs of ``path`` that asked for more than a probe's first bytes."""
        return sum(1 for r in self.bodies(path) if r is None or not r.startswith("bytes=0-"))


@contextmanager
def serving(served: Served, tls: ssl.SSLContext | None = None) -> Iterator[Served]:
    """Serve ``served`` on 127.0.0.1 (over TLS with ``tls``: then ``served.url`` is
    still http://; use https:// with the port yourself)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path
            with lock:
                served.requests.append(("GET", path, self.headers.get("Range")))
            if path in served.redirects:
                self.send_response(302)
                self.send_header("Location", served.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start, end = 0, len(body) - 1
            ranged = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
            if ranged:
                start = int(ranged[1])
                end = min(int(ranged[2]), end) if ranged[2] else end
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
            else:
                self.send_response(200)
            part = body[start:end + 1]
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Connection", "close")
            self.end_headers()
            cut = served.cut_after.get(path)
            if cut is not None and start < cut:
                self.wfile.write(part[:cut - start])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    served.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
