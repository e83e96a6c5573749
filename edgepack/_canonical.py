"""Canonical JSON: the exact bytes that signatures cover.

Sorted keys, no insignificant whitespace, UTF-8, no NaN or Infinity. Python's
float ``repr`` is the shortest round-tripping form on every platform, so the
bytes are stable across runs and machines (``tests/test_canonical.py`` pins them).
"""

from __future__ import annotations

import json
from typing import Any

from ._errors import ManifestParseError

__all__ = ["canonical_bytes", "loads_strict"]


def canonical_bytes(obj: Any) -> bytes:
    """Return the canonical JSON encoding of ``obj``.

    Raises:
        ValueError: if ``obj`` holds NaN/Infinity or a non-JSON type.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could pick different values for a duplicate key, so a
            # signature over one would not cover what the other reads.
            raise ManifestParseError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ManifestParseError(f"non-standard JSON constant {name}")


def loads_strict(data: bytes | str, *, what: str = "JSON document") -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity and invalid UTF-8.

    Raises:
        ManifestParseError: if ``data`` is not strict JSON.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ManifestParseError as e:
        raise ManifestParseError(f"{what} is not valid JSON: {e.message}", where=what) from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestParseError(f"{what} is not valid JSON: {e}", where=what) from e
