"""File-level helpers for the TUF repository: names, atomic writes, one lock.

Kept apart from the metadata logic (STYLE rule 4: trust decisions and I/O do
not mix). Every name that reaches the file system goes through ``check_name``,
so no group, model or file name from an API call can escape the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path

from edgepack import FleetError, PathTraversalError
from edgepack._atomic import atomic_write

__all__ = ["TufRepositoryError", "atomic_write", "check_name", "locked"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


class TufRepositoryError(FleetError):
    """The server's TUF repository refused an operation or is damaged."""


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a safe single path segment, else raise.

    Raises:
        PathTraversalError: ``value`` holds a separator, ``..`` or odd characters.
    """
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise PathTraversalError(
            f"{what} {value!r} is not a safe name", where=what,
            hint="use 1-128 characters from A-Z a-z 0-9 . _ - (no '/', no '..', not starting with '.')",
        )
    return value


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the repository for one read-modify-write.

    gunicorn runs several workers; without the lock two publishes could both
    write snapshot version N+1 with different contents.
    """
    lock_path = directory / ".lock"
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
