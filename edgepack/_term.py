"""Terminal output with no dependencies: one-line progress bars on stderr (only
when stderr is a terminal, so logs and pipes stay clean) and plain tables."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["progress", "step", "table"]

T = TypeVar("T")


def _enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("EDGEPACK_NO_PROGRESS")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, drawing ``desc [#####.....] 5/10 1.2s`` on stderr."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    start = time.monotonic()
    show = _enabled()
    for i, item in enumerate(items, 1):
        yield item
        if show:
            elapsed = time.monotonic() - start
            if total:
                filled = int(24 * i / total)
                bar = "#" * filled + "." * (24 - filled)
                sys.stderr.write(f"\r{desc} [{bar}] {i}/{total} {elapsed:.1f}s")
            else:
                sys.stderr.write(f"\r{desc} {i} {elapsed:.1f}s")
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")


@contextmanager
def step(desc: str) -> Iterator[None]:
    """Mark a step that may take more than a second: prints '… desc' then 'done in Xs'."""
    show = _enabled()
    start = time.monotonic()
    if show:
        sys.stderr.write(f"… {desc}")
        sys.stderr.flush()
    try:
        yield
    finally:
        if show:
            sys.stderr.write(f"\r✓ {desc} ({time.monotonic() - start:.1f}s)\n")
            sys.stderr.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Render rows as an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
