"""Where named weights live inside an artifact file, without the onnx or
tensorflow packages: ONNX initializers (``raw_data`` or packed
``float_data``/``double_data``) found with a minimal protobuf wire reader, and
TFLite buffers found with a minimal flatbuffer reader. Parameter updates
(``_params.py``) patch these byte ranges in place; local training reads them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ._errors import UpdateError

__all__ = ["ParamFormatError", "WeightSlot", "locate_weights", "read_weights"]


class ParamFormatError(UpdateError):
    """A parameter update or the artifact it targets cannot be read or patched."""


@dataclass(frozen=True)
class WeightSlot:
    """Where one named weight's bytes live inside an artifact file."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


# ---- ONNX: protobuf wire format (ModelProto.graph=7, GraphProto.initializer=5) -------------
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        if i >= len(b) or shift > 63:
            raise ParamFormatError("truncated protobuf varint")
        c = b[i]
        out |= (c & 0x7F) << shift
        i += 1
        if not c & 0x80:
            return out, i
        shift += 7


def _fields(b: bytes, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value start, value end or varint value)."""
    i = start
    while i < end:
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
            yield num, wt, v, v
        elif wt == 2:
            n, i = _varint(b, i)
            if i + n > end:
                raise ParamFormatError("protobuf field runs past its message")
            yield num, wt, i, i + n
            i += n
        elif wt in (1, 5):
            n = 8 if wt == 1 else 4
            yield num, wt, i, i + n
            i += n
        else:
            raise ParamFormatError(f"unsupported protobuf wire type {wt}")


def _onnx_tensor(b: bytes, s: int, e: int) -> tuple[str, WeightSlot | None]:
    name, dims, dtype, payload, external = "", [], 0, None, False
    for num, wt, a, z in _fields(b, s, e):
        if num == 8 and wt == 2:
            name = b[a:z].decode("utf-8")
        elif num == 1:
            if wt == 0:
                dims.append(a)
            else:
                j = a
                while j < z:
                    d, j = _varint(b, j)
                    dims.append(d)
        elif num == 2 and wt == 0:
            dtype = a
        elif num in (9, 4, 10) and wt == 2:
            payload = (a, z)  # raw_data, packed float_data, packed double_data: fixed width
        elif num == 14 and wt == 0 and a == 1:
            external = True
    if external or payload is None or dtype not in _ONNX_DTYPES:
        return name, None
    return name, WeightSlot(payload[0], payload[1] - payload[0], _ONNX_DTYPES[dtype], tuple(dims))


def _locate_onnx(b: bytes) -> dict[str, WeightSlot]:
    out: dict[str, WeightSlot] = {}
    try:
        for num, wt, gs, ge in _fields(b, 0, len(b)):
            if num == 7 and wt == 2:
                for n2, w2, ts, te in _fields(b, gs, ge):
                    if n2 == 5 and w2 == 2:
                        name, slot = _onnx_tensor(b, ts, te)
                        if slot is not None:
                            out[name] = slot
    except UnicodeDecodeError as e:
        raise ParamFormatError(f"not a readable ONNX model: a tensor name is not UTF-8 ({e.reason})") from e
    return out


# ---- TFLite: flatbuffer (Model.subgraphs=2, Model.buffers=4; Tensor.shape/type/buffer/name) --
_TFL_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
               9: "int8", 10: "float64"}


class FlatTable:
    """Just enough flatbuffer reading for the TFLite schema's tables and vectors."""

    def __init__(self, b: bytes, pos: int) -> None:
        self.b, self.pos = b, pos
        vt = pos - struct.unpack_from("<i", b, pos)[0]
        self.vt, self.vt_len = vt, struct.unpack_from("<H", b, vt)[0]

    def field(self, i: int) -> int | None:
        o = 4 + 2 * i
        if o >= self.vt_len:
            return None
        rel = struct.unpack_from("<H", self.b, self.vt + o)[0]
        return self.pos + rel if rel else None

    def scalar(self, i: int, fmt: str, default: int = 0) -> int:
        p = self.field(i)
        return default if p is None else struct.unpack_from(fmt, self.b, p)[0]

    def vector(self, i: int) -> tuple[int, int]:
        """(start of elements, length) or (0, 0)."""
        p = self.field(i)
        if p is None:
            return 0, 0
        v = p + struct.unpack_from("<I", self.b, p)[0]
        return v + 4, struct.unpack_from("<I", self.b, v)[0]

    def tables(self, i: int) -> list[FlatTable]:
        s, n = self.vector(i)
        return [FlatTable(self.b, s + 4 * k + struct.unpack_from("<I", self.b, s + 4 * k)[0]) for k in range(n)]

    def ints(self, i: int) -> list[int]:
        s, n = self.vector(i)
        return list(struct.unpack_from(f"<{n}i", self.b, s)) if n else []

    def string(self, i: int) -> str:
        s, n = self.vector(i)
        return self.b[s:s + n].decode("utf-8") if n else ""


def _locate_tflite(b: bytes) -> dict[str, WeightSlot]:
    try:
        model = FlatTable(b, struct.unpack_from("<I", b, 0)[0])
        buffers = model.tables(4)
        sub = model.tables(2)[0]
        out: dict[str, WeightSlot] = {}
        for t in sub.tables(0):
            bi, ty = t.scalar(2, "<I"), t.scalar(1, "<b")
            if bi == 0 or bi >= len(buffers) or ty not in _TFL_DTYPES:
                continue
            buf = buffers[bi]
            start, n = buf.vector(0)
            if not n:
                off, size = buf.scalar(1, "<Q"), buf.scalar(2, "<Q")
                if off <= 1:
                    continue
                start, n = off, size
            out[t.string(3)] = WeightSlot(start, n, _TFL_DTYPES[ty], tuple(t.ints(0)))
        return out
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ParamFormatError(f"not a readable TFLite flatbuffer: {e}") from e


LOCATORS: dict[str, Callable[[bytes], dict[str, WeightSlot]]] = {"onnx": _locate_onnx, "tflite": _locate_tflite}


def locate_weights(fmt: str, data: bytes) -> dict[str, WeightSlot]:
    """Map each named constant tensor of an artifact to its bytes.

    Raises:
        ParamFormatError: unknown format or unreadable file.
    """
    if fmt not in LOCATORS:
        raise ParamFormatError(f"no weight locator for format {fmt!r}", hint=f"known: {sorted(LOCATORS)}")
    return LOCATORS[fmt](data)


def read_weights(fmt: str, data: bytes, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The named weights (all of them without ``names``) as arrays viewing ``data``.

    Raises:
        ParamFormatError: unknown format, unreadable file, a name the file does not have, or a
            tensor whose bytes do not fit its declared shape (found by tests/security fuzzing).
    """
    slots = locate_weights(fmt, data)
    if names is None:
        keep = slots
    else:
        names = list(names)
        missing = [n for n in names if n not in slots]
        if missing:
            raise ParamFormatError(f"no weight(s) {missing[:5]} in the {fmt} file", where=fmt,
                                   hint=f"it has {sorted(slots)[:10]}")
        keep = {n: slots[n] for n in names}
    out = {}
    for n, s in keep.items():
        dtype = np.dtype(s.dtype)
        count = math.prod(s.shape)  # exact: a forged dim near 2**64 must not wrap around
        if s.nbytes != count * dtype.itemsize or s.offset < 0 or s.offset + s.nbytes > len(data):
            raise ParamFormatError(f"weight {n!r} has {s.nbytes} bytes, which do not fit {s.dtype}{list(s.shape)}",
                                   where=n, hint="the model file is corrupt")
        out[n] = np.frombuffer(data, dtype.newbyteorder("<"), count, s.offset).reshape(s.shape)
    return out
