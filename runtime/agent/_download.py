"""Resumable target downloads (HTTP Range + ETag), bounded by the signed length.

python-tuf's ``Updater.download_target`` restarts from byte 0 after any break,
which on a flaky link may never finish a large bundle. Here the bytes received
so far stay in ``NAME.part`` (with the ETag they came with in ``NAME.part.etag``)
and the next try asks for the rest with ``Range`` and ``If-Range``: if the file
changed on the server, the server answers 200 and the download restarts.

The length from signed TUF metadata is a hard cap (endless-data attack): one
byte more and the download stops with ``EndlessDataError``. Hashes are checked
by the caller (``TufClient``) once the file is complete.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from ._errors import DownloadInterruptedError, EndlessDataError, ServerRefusedError
from ._http import Auth, auth_headers, open_url

__all__ = ["DownloadResult", "download_resumable"]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)\Z")


@dataclass(frozen=True)
class DownloadResult:
    """Where the file is, and how many bytes this call moved over the network."""

    path: Path
    bytes_received: int
    resumed_from: int
    etag: str | None


def _read_etag(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _discard(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def download_resumable(url: str, dest: Path, length: int, *, timeout: float = 30.0,
                       chunk_size: int = 64 * 1024, auth: Auth | None = None) -> DownloadResult:
    """Download ``url`` into ``dest`` (atomically renamed when complete), resuming a part file.

    Raises:
        DownloadInterruptedError: the connection broke; the part file is kept for next time.
        EndlessDataError: the server sent more than ``length`` bytes.
        ServerRefusedError: the server answered with an HTTP error.
        ServerUnreachableError: the server cannot be reached (from ``open_url``).
    """
    part = dest.with_name(dest.name + ".part")
    etag_file = dest.with_name(dest.name + ".part.etag")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > length:
        _discard(part, etag_file)
        have = 0
    etag = _read_etag(etag_file) if have else None
    headers = auth_headers(auth, "GET", url)
    if have:
        headers["Range"] = f"bytes={have}-"
        if etag:
            headers["If-Range"] = etag
    if have == length:
        os.replace(part, dest)
        _discard(etag_file)
        return DownloadResult(dest, 0, have, etag)
    try:
        resp = open_url(url, headers, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416:  # our part is no prefix of what the server has now
            _discard(part, etag_file)
        raise ServerRefusedError(f"GET {url} -> HTTP {e.code}", status=e.code, where=url) from e
    start = 0
    with resp:
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                _discard(part, etag_file)
                raise ServerRefusedError(f"server answered a range we did not ask for: "
                                         f"{resp.headers.get('Content-Range')!r}", where=url)
            start = have
        new_etag = resp.headers.get("ETag")
        if start == 0:
            _discard(etag_file)
            if new_etag:
                etag_file.write_text(new_etag)
        received = 0
        with open(part, "r+b" if start else "wb") as f:
            f.seek(start)
            f.truncate()
            try:
                while chunk := resp.read(chunk_size):
                    received += len(chunk)
                    if start + received > length:
                        f.close()
                        _discard(part, etag_file)
                        raise EndlessDataError(
                            f"{url} sent more than the {length} bytes its signed metadata allows",
                            where=url, hint="the server or a proxy is misbehaving; the download was dropped")
                    f.write(chunk)
            except (OSError, http.client.HTTPException) as e:
                # A reset or timeout mid-body: keep what arrived so the next try resumes.
                f.flush()
                os.fsync(f.fileno())
                raise DownloadInterruptedError(f"download of {url} broke off after {start + received} "
                                               f"of {length} bytes: {e}", where=url,
                                               hint="it resumes from there on the next poll") from e
            f.flush()
            os.fsync(f.fileno())
    total = start + received
    if total < length:
        raise DownloadInterruptedError(f"download of {url} ended at {total} of {length} bytes", where=url,
                                       hint="it resumes from there on the next poll")
    os.replace(part, dest)
    _discard(etag_file)
    return DownloadResult(dest, received, start, new_etag or etag)

