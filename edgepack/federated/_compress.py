"""Compressed device updates: int8 stochastic quantization and top-k sparsification.

Codecs are a registry (STYLE rule 7) from name to an encoder (device side) and
a strict decoder (server side). The decoder receives the tensor's shape and
dtype from the *server's* spec, and checks that the byte count is exactly what
that shape implies before it allocates or indexes anything.

- ``none``: raw little-endian values (4 bytes/param for float32).
- ``int8``: per-tensor scale ``max|x| / 127`` and ``q = floor(x / scale + u)``,
  ``u ~ U[0, 1)``: unbiased (E[q * scale] = x), 1 byte/param + one float.
- ``topk``: the ``ceil(ratio * n)`` largest-magnitude entries as sorted uint32
  indices + float32 values: 8 bytes per kept entry.

Both lossy codecs are meant to be used with :class:`ErrorFeedback` on the
device: what compression dropped this round is added to the next round's delta
(Seide et al. 2014; Karimireddy et al. 2019), so nothing is lost for good.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import DeviceUpdateFormatError, FederatedConfigError
from ._params import Params

__all__ = ["CODECS", "CompressionConfig", "EncodedTensor", "ErrorFeedback", "compress", "decode_tensor"]


@dataclass(frozen=True)
class CompressionConfig:
    """The codec a round asks devices to use, and its parameter."""

    codec: str = "none"
    topk_ratio: float = 0.01

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise FederatedConfigError(f"unknown codec {self.codec!r}", where="codec", hint=f"use one of {sorted(CODECS)}")
        if not 0.0 < self.topk_ratio <= 1.0:
            raise FederatedConfigError(f"topk_ratio must be in (0, 1], got {self.topk_ratio}", where="topk_ratio")


@dataclass(frozen=True)
class EncodedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    meta: dict[str, Any]
    data: bytes


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _enc_none(x: np.ndarray, cfg: CompressionConfig, rng: np.random.Generator) -> tuple[bytes, dict[str, Any]]:
    return x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes(), {}


def _dec_none(data: bytes, meta: Mapping[str, Any], size: int, dtype: np.dtype) -> np.ndarray:
    _expect_len(data, size * dtype.itemsize, "none")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=size).astype(dtype)


def _enc_int8(x: np.ndarray, cfg: CompressionConfig, rng: np.random.Generator) -> tuple[bytes, dict[str, Any]]:
    x64 = x.astype(np.float64)
    peak = float(np.max(np.abs(x64))) if x64.size else 0.0
    scale = peak / 127.0
    if scale == 0.0:
        return bytes(x64.size), {"scale": 0.0}
    y = x64 / scale
    q = np.floor(y + rng.random(y.shape))
    # y is in [-127, 127], so floor(y + u) is in [-127, 127] (127 + u < 128); the clip only guards rounding.
    return np.clip(q, -127, 127).astype(np.int8).tobytes(), {"scale": scale}


def _dec_int8(data: bytes, meta: Mapping[str, Any], size: int, dtype: np.dtype) -> np.ndarray:
    _expect_len(data, size, "int8")
    scale = meta.get("scale")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
        raise DeviceUpdateFormatError("int8 tensor needs a finite, non-negative 'scale'", where="meta.scale")
    return (np.frombuffer(data, dtype=np.int8, count=size).astype(np.float64) * scale).astype(dtype)


def _enc_topk(x: np.ndarray, cfg: CompressionConfig, rng: np.random.Generator) -> tuple[bytes, dict[str, Any]]:
    n = x.size
    k = min(n, max(1, math.ceil(cfg.topk_ratio * n))) if n else 0
    idx = np.sort(np.argpartition(np.abs(x), n - k)[n - k:]) if k < n else np.arange(n)
    return idx.astype("<u4").tobytes() + x[idx].astype("<f4").tobytes(), {"k": int(k)}


def _dec_topk(data: bytes, meta: Mapping[str, Any], size: int, dtype: np.dtype) -> np.ndarray:
    k = meta.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= size or size >= 2**32:
        raise DeviceUpdateFormatError(f"top-k count {k!r} is not an integer in [0, {size}]", where="meta.k")
    _expect_len(data, 8 * k, "topk")
    idx = np.frombuffer(data, dtype="<u4", count=k).astype(np.int64)
    vals = np.frombuffer(data, dtype="<f4", count=k, offset=4 * k)
    if k and (idx[-1] >= size or np.any(np.diff(idx) <= 0)):
        raise DeviceUpdateFormatError("top-k indices must be strictly increasing and within the tensor",
                                      where="topk indices")
    out = np.zeros(size, dtype=dtype)
    out[idx] = vals
    return out


def _expect_len(data: bytes, expected: int, codec: str) -> None:
    if len(data) != expected:
        raise DeviceUpdateFormatError(f"{codec} tensor has {len(data)} bytes; its shape needs exactly {expected}",
                                      where="tensor data", hint="the update was truncated or built for another model")


_Encoder = Callable[[np.ndarray, CompressionConfig, np.random.Generator], tuple[bytes, dict[str, Any]]]
_Decoder = Callable[[bytes, Mapping[str, Any], int, np.dtype], np.ndarray]

CODECS: dict[str, tuple[_Encoder, _Decoder]] = {
    "none": (_enc_none, _dec_none),
    "int8": (_enc_int8, _dec_int8),
    "topk": (_enc_topk, _dec_topk),
}


def decode_tensor(codec: str, data: bytes, meta: Mapping[str, Any], shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Decode one tensor whose shape and dtype the server already trusts.

    Raises:
        DeviceUpdateFormatError: unknown codec, wrong byte count or bad codec metadata.
    """
    if codec not in CODECS:
        raise DeviceUpdateFormatError(f"unknown codec {codec!r}", where="codec", hint=f"use one of {sorted(CODECS)}")
    return CODECS[codec][1](data, meta, _size(shape), np.dtype(dtype)).reshape(shape)


class ErrorFeedback:
    """The device-side residual: what compression has not yet delivered, per tensor.

    Kept on the device (it is private training signal); save it between rounds
    with :meth:`save`/:meth:`load`.
    """

    def __init__(self, residual: Params | None = None) -> None:
        self.residual: Params = dict(residual or {})

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}.npz")
        np.savez(tmp, **self.residual)  # type: ignore[arg-type]
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ErrorFeedback:
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})


def compress(delta: Mapping[str, np.ndarray], config: CompressionConfig, *,
             feedback: ErrorFeedback | None = None, rng: np.random.Generator | None = None) -> list[EncodedTensor]:
    """Encode a device's delta with ``config.codec``; with ``feedback``, add and then update its residual.

    Raises:
        FederatedConfigError: if the residual's shapes do not match ``delta``.
    """
    gen = rng if rng is not None else np.random.default_rng()
    enc, dec = CODECS[config.codec]
    out = []
    for name, x in delta.items():
        x = np.asarray(x)
        flat = x.reshape(-1)
        if feedback is not None and name in feedback.residual:
            r = feedback.residual[name]
            if r.shape != x.shape:
                raise FederatedConfigError(f"error-feedback residual for {name!r} has shape {r.shape}, delta {x.shape}",
                                           hint="reset the residual when the model changes")
            flat = (flat.astype(np.float64) + r.reshape(-1)).astype(x.dtype)
        data, meta = enc(flat, config, gen)
        if feedback is not None:
            sent = dec(data, meta, flat.size, x.dtype)
            feedback.residual[name] = (flat.astype(np.float64) - sent).astype(x.dtype).reshape(x.shape)
        out.append(EncodedTensor(name, tuple(int(d) for d in x.shape), str(x.dtype), config.codec, meta, data))
    return out
