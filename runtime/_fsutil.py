"""Crash-safe file operations: every write goes to a temp path, is fsynced, then
``os.replace``d, and the directory is fsynced so the rename itself survives a
power cut (POSIX: rename is atomic, but durable only once the directory is synced)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "fsync_dir", "read_json", "remove_tree", "write_json"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


def write_json(path: Path, doc: Any) -> None:
    atomic_write(path, json.dumps(doc, sort_keys=True, indent=1).encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def remove_tree(path: Path) -> None:
    """Remove a directory by first renaming it aside, so a crash never leaves a half-deleted slot
    under its real name."""
    if not path.exists():
        return
    aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{os.urandom(4).hex()}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
