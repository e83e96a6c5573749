"""Crash-safe file writes, shared by every part (bundles, keys, trust files, the
device's install store and agent state, the TUF repository).

Every write goes to a temp file in the same directory, is fsynced, then
``os.replace``d over the target, and the directory is fsynced so the rename
itself survives a power cut (POSIX: rename is atomic, but durable only once
the directory is synced). A reader sees the old file or the new one, never a
torn one; a crash leaves at most a ``.NAME.*.tmp`` file that is never read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_write", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block completes.

    The temp file is created 0600 (``mkstemp``) and chmod-ed to ``mode`` just
    before the rename, so a private key is never readable by others, not even
    for a moment.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_file(path, mode) as f:
        f.write(data)
