"""Serve a ``TufRepository`` over plain HTTP (standard library only).

The Flask app serves the same two routes (``/tuf/metadata/<file>``,
``/tuf/targets/<path>``) inside the fleet server. This stand-alone server is for
serving the repository from a separate host (or in tests and benchmarks) with
the same contract: metadata is small and fetched whole; targets honour
``Range``/``If-Range`` (one byte range) and ``ETag``/``If-None-Match``, and the
ETag is the target's sha256, which never changes for a given URL because
consistent snapshots put the hash in the file name.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgepack import PathTraversalError

from ._tuf import TufRepository

__all__ = ["TufHTTPServer", "TufRequestHandler", "parse_range", "serve_tuf"]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``Range`` header, None for the whole file.

    Raises:
        ValueError: the range cannot be satisfied (answer 416).
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # RFC 9110 14.2: an unsupported range form is ignored
    if m.group(1):
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        first, last = max(size - int(m.group(2)), 0), size - 1
    if first >= size or first > last:
        raise ValueError(f"range {header!r} outside 0..{size - 1}")
    return first, last


class TufRequestHandler(BaseHTTPRequestHandler):
    """GET ``/tuf/metadata/<file>`` and ``/tuf/targets/<path>`` from ``server.repo``."""

    server: TufHTTPServer
    protocol_version = "HTTP/1.1"
    chunk_size = 64 * 1024

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        body = json.dumps({"error": status.phrase.replace(" ", ""), "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        try:
            if path.startswith("/tuf/metadata/"):
                self.send_metadata(path.removeprefix("/tuf/metadata/"))
            elif path.startswith("/tuf/targets/"):
                self.send_target(path.removeprefix("/tuf/targets/"))
            else:
                self._send_error(HTTPStatus.NOT_FOUND, "no such route")
        except PathTraversalError as e:
            self._send_error(HTTPStatus.BAD_REQUEST, e.message)
        except FileNotFoundError:
            self._send_error(HTTPStatus.NOT_FOUND, "no such file")

    def send_metadata(self, filename: str) -> None:
        data = self.server.repo.metadata_bytes(filename)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(data)

    def send_target(self, url_path: str) -> None:
        file = self.server.repo.target_file(url_path)
        self.send_file(file, etag=f'"{file.name.split(".", 1)[0]}"')

    def send_file(self, file: Path, *, etag: str) -> None:
        size = file.stat().st_size
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if_range = self.headers.get("If-Range")
        try:
            rng = parse_range(self.headers.get("Range"), size) if if_range in (None, etag) else None
        except ValueError:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = rng if rng else (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if rng else HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(last - first + 1))
        if rng:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        self.write_body(file, first, last - first + 1)

    def write_body(self, file: Path, offset: int, count: int) -> None:
        """Stream ``count`` bytes from ``offset`` (a hook tests use to drop the connection)."""
        with open(file, "rb") as f:
            f.seek(offset)
            while count > 0:
                chunk = f.read(min(self.chunk_size, count))
                if not chunk:
                    break
                self.wfile.write(chunk)
                count -= len(chunk)


class TufHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one repository."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], repo: TufRepository,
                 handler: type[TufRequestHandler] = TufRequestHandler, verbose: bool = False) -> None:
        super().__init__(address, handler)
        self.repo = repo
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve_tuf(repo: TufRepository, host: str = "127.0.0.1", port: int = 0,
              handler: type[TufRequestHandler] = TufRequestHandler) -> tuple[TufHTTPServer, threading.Thread]:
    """Start serving ``repo`` on a background thread; stop with ``server.shutdown()``."""
    server = TufHTTPServer((host, port), repo, handler)
    thread = threading.Thread(target=server.serve_forever, name="tuf-http", daemon=True)
    thread.start()
    return server, thread
