"""Artifact storage: a small interface, and the local-directory default.

An S3-compatible store implements the same five methods (``put_file`` as a
multipart upload, ``read_range`` as ``GetObject`` with a ``Range`` header), so
nothing else in the server knows where bytes live. Keys are relative,
'/'-separated paths; anything that could escape the root is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgepack import PathTraversalError

__all__ = ["LocalStorage", "Storage", "check_key"]

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}\Z")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key.

    Raises:
        PathTraversalError: for absolute paths, '..', empty parts, backslashes or odd characters.
    """
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or len(key) > 1024 or any(not _PART.match(p) or p in (".", "..") for p in parts):
        raise PathTraversalError(f"unsafe storage key {key!r}", where="storage",
                                 hint="names use letters, digits, '.', '_', '+' and '-', without '..'")
    return key


@runtime_checkable
class Storage(Protocol):
    def put_file(self, key: str, src: Path) -> None:
        """Store the file at ``src`` under ``key`` atomically (``src`` may be moved)."""

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes ``[start, end]`` (inclusive, like HTTP Range) of ``key``."""

    def size(self, key: str) -> int:
        """The object's size in bytes; FileNotFoundError if absent."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Objects as files under ``root``, written to a temp name then ``os.replace``d."""

    chunk_size = 1 << 16

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / check_key(key)).resolve()
        if self.root not in p.parents:
            raise PathTraversalError(f"storage key {key!r} escapes the storage root", where="storage")
        return p

    def temp_file(self) -> tuple[int, Path]:
        """A new temp file on the same file system as the store (so ``put_file`` can rename it)."""
        tmpdir = self.root / ".tmp"
        tmpdir.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmpdir, suffix=".part")
        return fd, Path(name)

    def put_file(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # one temp per call, not per process: two threads may store the same key at once
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            try:
                os.replace(src, tmp)
            except OSError:  # another file system: copy instead
                shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        with open(path, "rb") as f:
            f.seek(start)
            left = (end - start + 1) if end is not None else None
            while left is None or left > 0:
                chunk = f.read(self.chunk_size if left is None else min(self.chunk_size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sha256(self, key: str) -> str:
        h = hashlib.sha256()
        for chunk in self.read_range(key):
            h.update(chunk)
        return h.hexdigest()
