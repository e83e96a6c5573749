"""Atomic, verified files for aggregation state (accumulators, optimizer moments).

Layout: an 8-byte magic, a little-endian u64 header length, the canonical JSON
header, then each array's raw little-endian bytes in header order. The header
records every array's dtype, element count and sha256, and the reader checks
all three and the exact file length before it trusts a byte: a truncated or
edited file raises :class:`AccumulatorStateError`, never a silently wrong sum.

Writes go to a temp file in the same directory, are fsynced, then
``os.replace``d over the target, and the directory is fsynced: a crash leaves
either the old state or the new one, never a mix (POSIX rename is atomic).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .._canonical import canonical_bytes, loads_strict
from .._errors import EdgepackError
from ._errors import AccumulatorStateError

__all__ = ["load_state", "save_state"]

MAGIC = b"EPFLST1\n"
_MAX_HEADER = 64 << 20  # records for a million updates fit well below this
_IO_CHUNK = 8 << 20


def save_state(path: str | os.PathLike[str], kind: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` and ``arrays`` to ``path`` atomically.

    Raises:
        AccumulatorStateError: if the file cannot be written.
    """
    p = Path(path)
    entries = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        entries.append({"name": name, "dtype": a.dtype.str, "count": int(a.size), "sha256": _sha256(a)})
    header = canonical_bytes({"kind": kind, "meta": meta, "arrays": entries})
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            for a in arrays.values():
                f.write(np.ascontiguousarray(a).data.cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        _fsync_dir(p.parent)
    except OSError as e:
        raise AccumulatorStateError(f"cannot write state: {e.strerror}", where=str(p),
                                    hint="check free disk space and that the directory is writable") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def load_state(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`save_state`, checking sizes and hashes.

    Raises:
        AccumulatorStateError: if the file is missing, truncated, of another kind, or altered.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(MAGIC) + 8)
            if len(head) != len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                raise AccumulatorStateError("not an edgepack federated state file", where=str(p))
            (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
            if hlen > min(_MAX_HEADER, size):
                raise AccumulatorStateError(f"header length {hlen} is implausible", where=str(p))
            try:
                doc = loads_strict(f.read(hlen), what=str(p))
            except EdgepackError as e:
                raise AccumulatorStateError(f"state header is not valid JSON: {e.message}", where=str(p)) from e
            if not isinstance(doc, dict) or doc.get("kind") != kind:
                raise AccumulatorStateError(f"state file is not a {kind!r} state", where=str(p))
            arrays = _read_arrays(f, doc.get("arrays"), size - len(MAGIC) - 8 - hlen, p)
            return doc.get("meta") or {}, arrays
    except OSError as e:
        raise AccumulatorStateError(f"cannot read state: {e.strerror}", where=str(p)) from e


def _read_arrays(f: Any, entries: object, remaining: int, p: Path) -> dict[str, np.ndarray]:
    if not isinstance(entries, list):
        raise AccumulatorStateError("state header has no array list", where=str(p))
    declared = 0
    parsed = []
    for e in entries:
        try:
            dt = np.dtype(e["dtype"])
            count = int(e["count"])
            name, digest = str(e["name"]), str(e["sha256"])
        except (KeyError, TypeError, ValueError) as err:
            raise AccumulatorStateError(f"bad array entry in state header: {err}", where=str(p)) from err
        if count < 0 or dt.kind not in "fiu":
            raise AccumulatorStateError(f"array {name!r} has a bad dtype or count", where=str(p))
        declared += count * dt.itemsize
        parsed.append((name, dt, count, digest))
    # Checked before allocating, so a lying header cannot make us allocate more than the file holds.
    if declared != remaining:
        raise AccumulatorStateError(f"state file holds {remaining} data bytes, header declares {declared}",
                                    where=str(p), hint="the file is truncated or was edited; restore it")
    out: dict[str, np.ndarray] = {}
    for name, dt, count, digest in parsed:
        a = np.empty(count, dtype=dt)
        view = a.data.cast("B")
        got = 0
        while got < len(view):
            n = f.readinto(view[got: got + _IO_CHUNK])
            if not n:
                raise AccumulatorStateError(f"state file ends inside array {name!r}", where=str(p))
            got += n
        if _sha256(a) != digest:
            raise AccumulatorStateError(f"array {name!r} does not match its sha256", where=str(p),
                                        hint="the file was altered or corrupted; restore it")
        out[name] = a
    return out


def _sha256(a: np.ndarray) -> str:
    h = hashlib.sha256()
    mv = np.ascontiguousarray(a).data.cast("B")
    for s in range(0, len(mv), _IO_CHUNK):
        h.update(mv[s: s + _IO_CHUNK])
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
