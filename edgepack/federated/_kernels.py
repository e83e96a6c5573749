"""Float64 accumulation of float updates: a small C kernel, or numpy in fixed scratch.

The streaming aggregator's inner loops are ``acc += w * x`` (float32 ``x``,
float64 ``acc``), the distance of ``x`` from the running mean, a sum of squares,
a finiteness check, and the final in-place divide-and-narrow. numpy either
allocates a model-sized float64 temporary for these or, chunked, makes three
passes per chunk; ``_fastsum.c`` does each in one pass with no scratch memory
and without the GIL.

The extension is optional (pyproject.toml declares it with ``optional = true``). The
numpy fallback is used when it is missing, when ``EDGEPACK_NO_C_KERNEL=1`` is
set at import, or for dtypes the kernel does not take (float16); it goes through
one ``CHUNK``-element float64 scratch buffer per call and gives the same results
(bit for bit for :func:`axpy` and :func:`divide_narrow`; the sums are
accumulated in a different order, so they agree to rounding).

Every function takes 1-D C-contiguous numpy arrays and checks its arguments, so
a mistake is a ``TypeError`` or ``ValueError`` here rather than memory corruption
in C or a silently wrong in-place result.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import numpy as np

__all__ = ["CHUNK", "HAVE_C", "all_finite", "axpy", "divide_narrow", "dist2", "flat_view", "sumsq"]

CHUNK = 1 << 15  # elements: 256 KB of float64 scratch, stays in L2; larger chunks were no faster (measured)

_F64 = np.dtype(np.float64)
_C_DTYPES = (np.dtype(np.float32), _F64)  # native byte order only, like the kernel


def _load() -> ModuleType | None:
    if os.environ.get("EDGEPACK_NO_C_KERNEL") == "1":
        return None
    try:
        return importlib.import_module("._fastsum", __package__)
    except ImportError:
        return None


_c: ModuleType | None = _load()
HAVE_C = _c is not None


def flat_view(a: np.ndarray) -> np.ndarray:
    """``a`` as the 1-D C-contiguous array these kernels take: a view, or a copy for a strided ``a``.

    Only for inputs; an accumulator must already be contiguous, since a copy would lose the writes.
    """
    return np.ascontiguousarray(a).reshape(-1)


def _check_vec(a: np.ndarray, name: str, *, float64: bool = False, writable: bool = False) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(a).__name__}")
    if float64 and a.dtype != _F64:
        raise TypeError(f"{name} must be float64 in native byte order, not {a.dtype}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats, not {a.dtype}")
    if a.ndim != 1 or not a.flags.c_contiguous:
        raise ValueError(f"{name} must be 1-D and C-contiguous (got shape {a.shape}, strides {a.strides})")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only")


def _check_pair(acc: np.ndarray, x: np.ndarray, *, writable: bool) -> None:
    _check_vec(acc, "acc", float64=True, writable=writable)
    _check_vec(x, "x")
    if x.size != acc.size:
        raise ValueError(f"acc has {acc.size} elements but x has {x.size}")


def _bounds(n: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, CHUNK):
        yield s, min(s + CHUNK, n)


def _chunks(n: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, end, scratch[:end - start])`` over ``range(n)``, sharing one scratch buffer."""
    buf = np.empty(min(CHUNK, n), dtype=np.float64)
    for s, e in _bounds(n):
        yield s, e, buf[: e - s]


def axpy(acc: np.ndarray, x: np.ndarray, w: float) -> None:
    """``acc += w * x`` in float64, in one pass and without a temporary.

    Each element is ``acc[i] + w * float64(x[i])``, rounded once for the product
    and once for the sum, on both paths.

    Args:
        acc: the float64 accumulator, updated in place.
        x: the update, any float dtype, as many elements as ``acc``.
        w: the weight.

    Raises:
        TypeError: if ``acc`` is not float64 or ``x`` does not hold floats.
        ValueError: if either is not 1-D and C-contiguous, ``acc`` is read-only,
            or the sizes differ. ``acc`` is unchanged then.
    """
    _check_pair(acc, x, writable=True)
    if _c is not None and x.dtype in _C_DTYPES:
        _c.axpy(acc, x, w)
        return
    for s, e, tmp in _chunks(x.size):
        # Cast, scale, add as three contiguous passes over a cached chunk: ~10% faster
        # than one multiply with dtype=float64, whose buffered cast is slower (measured).
        np.copyto(tmp, x[s:e])
        tmp *= w
        acc[s:e] += tmp


def dist2(acc: np.ndarray, x: np.ndarray, inv: float) -> float:
    """Squared L2 distance of ``x`` from ``acc * inv`` (the running mean, with ``inv = 1 / weight_sum``).

    The sum of ``(float64(x[i]) - acc[i] * inv) ** 2``, accumulated in float64.

    Raises:
        TypeError: if ``acc`` is not float64 or ``x`` does not hold floats.
        ValueError: if either is not 1-D and C-contiguous, or the sizes differ.
    """
    _check_pair(acc, x, writable=False)
    if _c is not None and x.dtype in _C_DTYPES:
        return float(_c.dist2(acc, x, inv))
    total = 0.0
    for s, e, tmp in _chunks(x.size):
        np.multiply(acc[s:e], inv, out=tmp)
        np.subtract(x[s:e], tmp, out=tmp)
        total += float(np.dot(tmp, tmp))
    return total


def sumsq(x: np.ndarray) -> float:
    """The sum of ``float64(x[i]) ** 2`` (a squared L2 norm), accumulated in float64.

    Raises:
        TypeError: if ``x`` does not hold floats.
        ValueError: if ``x`` is not 1-D and C-contiguous.
    """
    _check_vec(x, "x")
    if _c is not None and x.dtype in _C_DTYPES:
        return float(_c.sumsq(x))
    total = 0.0
    for s, e, tmp in _chunks(x.size):
        np.copyto(tmp, x[s:e])
        total += float(np.dot(tmp, tmp))
    return total


def all_finite(x: np.ndarray) -> bool:
    """True if no element of ``x`` is NaN or infinite (True for an empty ``x``).

    Raises:
        TypeError: if ``x`` does not hold floats.
        ValueError: if ``x`` is not 1-D and C-contiguous.
    """
    _check_vec(x, "x")
    if _c is not None and x.dtype in _C_DTYPES:
        return bool(_c.all_finite(x))
    # np.isfinite's boolean temporary is one chunk (32 KB), never model-sized.
    return all(bool(np.isfinite(x[s:e]).all()) for s, e in _bounds(x.size))


def divide_narrow(buf: np.ndarray, src: int, n: int, dst_byte: int, dtype: np.dtype, wsum: float) -> None:
    """Write ``buf[src:src + n] / wsum`` as ``dtype`` into ``buf``'s own memory, from byte ``dst_byte``.

    This is how ``RoundAccumulator.finalize`` turns the float64 sum into the
    mean in the spec's dtypes without a second model-sized buffer. Writing
    forward is safe because ``dst_byte <= 8 * src`` and ``dtype`` is at most 8
    bytes wide: output ``i`` ends at or before the end of input ``i``, and every
    input is read before its own output (and any later one) is stored. Read the
    result with ``np.frombuffer(buf.view(np.uint8), dtype, count=n, offset=dst_byte)``.

    Args:
        buf: the whole float64 accumulator (1-D, C-contiguous, writable).
        src: index of the first element to read.
        n: number of elements.
        dst_byte: byte offset in ``buf`` of the first output; any alignment.
        dtype: output dtype: a float of at most 8 bytes (float16, float32, float64).
        wsum: the divisor (the weight sum).

    Raises:
        TypeError: if ``buf`` is not float64 or ``dtype`` is not such a float.
        ValueError: if ``buf`` is not 1-D, C-contiguous and writable, or the
            ranges fall outside ``buf`` or break ``dst_byte <= 8 * src``. ``buf``
            is unchanged then.
    """
    _check_vec(buf, "buf", float64=True, writable=True)
    dt = np.dtype(dtype)
    if dt.kind != "f" or dt.itemsize > 8:
        raise TypeError(f"dtype must be a float of at most 8 bytes, not {dt}")
    if src < 0 or n < 0 or src + n > buf.size:
        raise ValueError(f"elements [{src}, {src}+{n}) are outside buf ({buf.size} elements)")
    # With itemsize <= 8 this also keeps the outputs inside buf: dst_byte + n*itemsize <= 8*(src+n).
    if not 0 <= dst_byte <= 8 * src:
        raise ValueError(f"dst_byte {dst_byte} must be in [0, 8*src = {8 * src}] (writes would overtake reads)")
    if n == 0:
        return
    if _c is not None and dt in _C_DTYPES:
        _c.divide_narrow(buf, src, n, dst_byte, dt.char, wsum)
        return
    out = np.frombuffer(buf.view(np.uint8), dt, count=n, offset=dst_byte)
    for s, e, tmp in _chunks(n):
        # The whole chunk is read into scratch before any of it is written.
        np.divide(buf[src + s: src + e], wsum, out=tmp)
        out[s:e] = tmp
