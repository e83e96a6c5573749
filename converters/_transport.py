"""Transport encoding for pruned artifacts, and what it saves.

A bundle stores members uncompressed on purpose (``edgepack/_archive.py``:
every byte is signed, hashed or canonical, and no member can inflate past
its size on disk). So pruning's zeros, which leave a dense ONNX/TFLite file
exactly as large, can only pay off in transport. Two ways, both measured
here:

* HTTP-level: serve the ``.edgepack`` with ``Content-Encoding: gzip`` (or
  zstd); the device's client inflates it and then verifies the bundle as
  usual. Nothing in the format changes. ``measure(..)["zlib"]`` is that size.
* Artifact encoding (proposed, ``encode``/``decode``): an artifact may be
  stored as ``<name>.xz`` with ``encoding = "xz"`` and its decoded size and
  sha256 in the manifest entry; the runtime decodes with a hard output limit
  (the declared size), then checks the hash before loading. The signature
  still covers the manifest, which pins both the encoded bytes (member hash)
  and the decoded bytes (decoded hash). This needs a core change (manifest
  field + runtime decode), so it is offered as a helper, not wired in.

``sparse_bytes`` estimates a sparse-aware layout (1-bit mask + non-zero
values), the floor a format-aware encoder could reach.
"""

from __future__ import annotations

import lzma
import zlib
from typing import Any

from edgepack import BundleError

__all__ = ["CODECS", "decode", "encode", "measure", "sparse_bytes"]

#: codec name -> (compress, decompress-with-limit)
CODECS = ("xz", "zlib")


def encode(data: bytes, codec: str = "xz") -> bytes:
    """Compress an artifact for transport.

    Raises:
        BundleError: an unknown codec.
    """
    if codec == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if codec == "zlib":
        return zlib.compress(data, 9)
    raise BundleError(f"unknown artifact encoding {codec!r}", hint=f"use one of {CODECS}")


def decode(data: bytes, codec: str, size: int) -> bytes:
    """Decompress at most ``size`` bytes, refusing anything that would inflate further.

    Raises:
        BundleError: unknown codec, corrupt stream, or output over or under ``size``.
    """
    try:
        if codec == "xz":
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = d.decompress(data, max_length=size + 1)
            complete = d.eof
        elif codec == "zlib":
            z = zlib.decompressobj()
            out = z.decompress(data, size + 1)
            complete = z.eof
        else:
            raise BundleError(f"unknown artifact encoding {codec!r}", hint=f"use one of {CODECS}")
    except (lzma.LZMAError, zlib.error) as e:
        raise BundleError(f"corrupt {codec} artifact encoding: {e}") from e
    if len(out) != size or not complete:
        raise BundleError(f"{codec} artifact decodes to {'more' if len(out) > size else 'fewer'} bytes than the "
                          f"declared {size}")
    return out


def sparse_bytes(model: Any) -> int:
    """Bytes of a mask + non-zero-values layout of a torch model's float parameters."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        total += (n + 7) // 8 + int((p != 0).sum()) * p.element_size()
    return total


def measure(data: bytes) -> dict[str, int | float]:
    """Raw, zlib (HTTP gzip-equivalent) and xz sizes of an artifact, and xz's ratio."""
    z, x = len(zlib.compress(data, 9)), len(encode(data, "xz"))
    return {"raw": len(data), "zlib": z, "xz": x, "xz_ratio": len(data) / max(x, 1)}
