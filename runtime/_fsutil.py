"""Crash-safe file operations: every write goes to a temp path, is fsynced, then
``os.replace``d, and the directory is fsynced so the rename itself survives a
power cut (POSIX: rename is atomic, but durable only once the directory is synced)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from edgepack._atomic import atomic_write, fsync_dir

__all__ = ["atomic_write", "fsync_dir", "read_json", "remove_tree", "write_json"]


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
