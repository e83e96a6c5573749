"""Parameter updates: new values for named weights of an existing artifact graph.

File layout (``.epu``): ``MAGIC`` + u32 big-endian header length + header + body.
The header is the signed envelope ``{"signed": payload, "signatures": [...]}``
in canonical JSON (STYLE rule 3); the body is the compressed tensor bytes,
bound to the payload by ``body_sha256``/``body_size``. Nothing in the body is
decompressed before the signature and body hash verify, and decompression is
capped at the signed ``raw_size`` (no zip bombs).

Encodings: ``whole`` (new bytes), ``delta-xor`` (new XOR base, bit-exact for any
dtype) and ``delta-add`` (new - base in the tensor's own dtype; the result is
defined as base + delta, computed by the encoder too, so ``result_sha256`` always
matches what a device rebuilds). Compression: ``zlib`` or ``lzma`` (stdlib).

Weights are patched in place (same byte length): ONNX initializers stored as
``raw_data`` or packed ``float_data``/``double_data``, found with a minimal
protobuf wire reader, and TFLite buffers, found with a minimal flatbuffer
reader. Neither needs the ``onnx`` or ``tensorflow`` packages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import lzma
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._canonical import canonical_bytes, loads_strict
from ._errors import ExpiredError, UpdateError
from ._keys import SigningKey
from ._signing import Signature, sign_bytes, verify_threshold

__all__ = ["ENCODINGS", "COMPRESSIONS", "ParamUpdate", "WeightSlot", "apply_param_update",
           "encode_param_update", "locate_weights", "parse_param_update", "read_weights"]

MAGIC = b"EPPU1\n"
PAYLOAD_TYPE = "edgepack-param-update"
ENCODINGS = ("whole", "delta-xor", "delta-add")
COMPRESSIONS = ("zlib", "lzma")
MAX_HEADER = 4 << 20


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
    for num, wt, gs, ge in _fields(b, 0, len(b)):
        if num == 7 and wt == 2:
            for n2, w2, ts, te in _fields(b, gs, ge):
                if n2 == 5 and w2 == 2:
                    name, slot = _onnx_tensor(b, ts, te)
                    if slot is not None:
                        out[name] = slot
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
    slots = locate_weights(fmt, data)
    keep = slots if names is None else {n: slots[n] for n in names}
    return {n: np.frombuffer(data, np.dtype(s.dtype).newbyteorder("<"), s.nbytes // np.dtype(s.dtype).itemsize,
                             s.offset).reshape(s.shape) for n, s in keep.items()}


# ---- the signed update -------------------------------------------------------------------
def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ParamUpdate:
    """The signed payload. ``artifacts`` maps artifact path -> {format, base_sha256,
    result_sha256, tensors: [{name, dtype, shape, nbytes}]}; tensors appear in the
    body in that order. Unknown payload fields survive in ``unrecognized``."""

    model: str
    version: int
    base_version: int
    encoding: str
    compression: str
    body_sha256: str
    body_size: int
    raw_size: int
    expires_at: str
    artifacts: dict[str, dict[str, Any]]
    golden: dict[str, Any] | None = None
    unrecognized: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {**(self.unrecognized or {}), "_type": PAYLOAD_TYPE, "spec_version": 1, "model": self.model,
             "version": self.version, "base_version": self.base_version, "encoding": self.encoding,
             "compression": self.compression, "body_sha256": self.body_sha256, "body_size": self.body_size,
             "raw_size": self.raw_size, "expires_at": self.expires_at, "artifacts": self.artifacts}
        if self.golden is not None:
            d["golden"] = self.golden
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ParamUpdate:
        if not isinstance(d, dict) or d.get("_type") != PAYLOAD_TYPE or d.get("spec_version") != 1:
            raise ParamFormatError(f"not a {PAYLOAD_TYPE} v1 payload")
        d = dict(d)
        known = ("model", "version", "base_version", "encoding", "compression", "body_sha256", "body_size",
                 "raw_size", "expires_at", "artifacts")
        try:
            vals = {k: d.pop(k) for k in known}
        except KeyError as e:
            raise ParamFormatError(f"parameter update lacks field {e.args[0]!r}") from e
        golden = d.pop("golden", None)
        d.pop("_type"), d.pop("spec_version")
        u = cls(**vals, golden=golden, unrecognized=d)
        if u.encoding not in ENCODINGS or u.compression not in COMPRESSIONS:
            raise ParamFormatError(f"unknown encoding/compression {u.encoding}/{u.compression}")
        if not isinstance(u.artifacts, dict) or not all(isinstance(v, dict) for v in u.artifacts.values()):
            raise ParamFormatError("artifacts must map path -> object")
        return u


def _delta(base: np.ndarray, new: np.ndarray, encoding: str) -> tuple[bytes, np.ndarray]:
    """Return (body bytes for this tensor, the exact values a device will rebuild)."""
    if encoding == "whole":
        return new.tobytes(), new
    if encoding == "delta-xor":
        return (new.view(np.uint8) ^ base.view(np.uint8)).tobytes(), new
    if np.issubdtype(new.dtype, np.integer):
        d = (new.astype(new.dtype) - base).astype(new.dtype)   # wraps, like the device's add
        return d.tobytes(), (base + d).astype(new.dtype)
    d = (new - base).astype(new.dtype)
    return d.tobytes(), (base + d).astype(new.dtype)


def _undelta(base: np.ndarray, body: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "whole":
        return body
    if encoding == "delta-xor":
        return (base.view(np.uint8) ^ body.view(np.uint8)).view(base.dtype)
    return (base + body).astype(base.dtype)


def _patch(data: bytes, fmt: str, values: Mapping[str, np.ndarray], where: str) -> bytes:
    slots = locate_weights(fmt, data)
    out = bytearray(data)
    written: dict[int, bytes] = {}
    for name, v in values.items():
        s = slots.get(name)
        if s is None:
            raise ParamFormatError(f"{where} has no patchable weight {name!r}", where=where,
                                   hint="names must be ONNX initializers (raw/float data) or TFLite tensors with a buffer")
        raw = np.ascontiguousarray(v, dtype=np.dtype(s.dtype).newbyteorder("<")).tobytes()
        if len(raw) != s.nbytes:
            raise ParamFormatError(f"weight {name!r} is {s.nbytes} bytes {s.dtype}{list(s.shape)}; update gives {len(raw)}",
                                   where=where, hint="a parameter update cannot change shapes or dtypes")
        if written.get(s.offset, raw) != raw:
            raise ParamFormatError(f"weight {name!r} shares its buffer with another tensor given different values",
                                   where=where)
        written[s.offset] = raw
        out[s.offset:s.offset + s.nbytes] = raw
    return bytes(out)


def encode_param_update(
    *, model: str, version: int, base_version: int,
    base_artifacts: Mapping[str, tuple[str, bytes]],
    new_weights: Mapping[str, Mapping[str, np.ndarray]],
    keys: Iterable[SigningKey], encoding: str = "delta-xor", compression: str = "zlib",
    expires_in: dt.timedelta = dt.timedelta(days=30), golden: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, bytes]]:
    """Build and sign an update. ``base_artifacts``: path -> (format, base bytes);
    ``new_weights``: path -> {weight name: new values}. Returns (update file bytes,
    path -> rebuilt artifact bytes, whose sha256 the update vouches for).

    Raises:
        ParamFormatError: unknown encoding, unknown weight, or a shape/dtype change.
    """
    if encoding not in ENCODINGS or compression not in COMPRESSIONS:
        raise ParamFormatError(f"encoding must be one of {ENCODINGS}, compression one of {COMPRESSIONS}")
    chunks, arts, rebuilt = [], {}, {}
    for path, weights in new_weights.items():
        fmt, base = base_artifacts[path]
        old = read_weights(fmt, base, weights)
        tensors, exact = [], {}
        for name, v in weights.items():
            b = old[name]
            nv = np.asarray(v).astype(b.dtype, copy=False).reshape(b.shape)
            body, exact[name] = _delta(b, nv, encoding)
            chunks.append(body)
            tensors.append({"name": name, "dtype": b.dtype.name, "shape": list(b.shape), "nbytes": len(body)})
        rebuilt[path] = _patch(base, fmt, exact, path)
        arts[path] = {"format": fmt, "base_sha256": _sha(base), "result_sha256": _sha(rebuilt[path]),
                      "tensors": tensors}
    raw = b"".join(chunks)
    body = zlib.compress(raw, 9) if compression == "zlib" else lzma.compress(raw, preset=6)
    payload = ParamUpdate(model, version, base_version, encoding, compression, _sha(body), len(body), len(raw),
                          _fmt_time(_now() + expires_in), arts, golden)
    message = canonical_bytes(payload.to_dict())
    sigs = [sign_bytes(k, message).to_dict() for k in keys]
    header = canonical_bytes({"signed": payload.to_dict(), "signatures": sigs})
    return MAGIC + struct.pack(">I", len(header)) + header + body, rebuilt


def parse_param_update(data: bytes, trust: Any, *, now: dt.datetime | None = None) -> tuple[ParamUpdate, bytes]:
    """Verify the envelope (threshold signature, body hash and size, expiry), then
    decompress the body with a cap at its signed ``raw_size``.

    Raises:
        ParamFormatError: malformed file or body.
        VerificationError: bad/untrusted/insufficient signatures, body hash mismatch, expiry.
    """
    from ._errors import ArtifactHashError, ArtifactSizeError

    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ParamFormatError("not an edgepack parameter update (bad magic)")
    (hlen,) = struct.unpack_from(">I", data, len(MAGIC))
    if hlen > MAX_HEADER or len(MAGIC) + 4 + hlen > len(data):
        raise ParamFormatError("parameter update header is truncated or too large")
    hstart = len(MAGIC) + 4
    env = loads_strict(data[hstart:hstart + hlen], what="parameter update header")
    if not isinstance(env, dict) or not isinstance(env.get("signed"), dict):
        raise ParamFormatError("header must be {signed: {...}, signatures: [...]}")
    sigs = [Signature.from_dict(s) for s in env.get("signatures") or []]
    verify_threshold(env["signed"], sigs, trust.keys, trust.threshold, what="parameter update")
    u = ParamUpdate.from_dict(env["signed"])
    body = data[hstart + hlen:]
    if len(body) != u.body_size:
        raise ArtifactSizeError(f"update body is {len(body)} bytes; the signed header says {u.body_size}")
    if _sha(body) != u.body_sha256:
        raise ArtifactHashError("update body does not match its signed sha256")
    if dt.datetime.strptime(u.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) <= (now or _now()):
        raise ExpiredError(f"parameter update v{u.version} expired at {u.expires_at}")
    try:
        dec = zlib.decompressobj() if u.compression == "zlib" else lzma.LZMADecompressor()
        raw = dec.decompress(body, u.raw_size + 1)
    except (zlib.error, lzma.LZMAError) as e:
        raise ParamFormatError(f"update body does not decompress: {e}") from e
    if len(raw) != u.raw_size:
        raise ParamFormatError(f"update body expands to {len(raw)}+ bytes; the header says {u.raw_size}")
    return u, raw


def apply_param_update(u: ParamUpdate, raw: bytes, artifacts: Mapping[str, bytes]) -> dict[str, bytes]:
    """Rebuild each artifact the update names; check base and result hashes.

    Raises:
        ParamFormatError: a base artifact is missing or does not match ``base_sha256``,
            or the body does not fit the tensors.
        ArtifactHashError: a rebuilt artifact's sha256 differs from the signed ``result_sha256``.
    """
    from ._errors import ArtifactHashError

    out, pos = {}, 0
    for path, a in u.artifacts.items():
        base = artifacts.get(path)
        if base is None or _sha(base) != a.get("base_sha256"):
            raise ParamFormatError(f"{path}: the installed artifact is not this update's base", where=path,
                                   hint="the update was made for another version; fetch the matching one")
        old = read_weights(a["format"], base, [t["name"] for t in a["tensors"]])
        values = {}
        for t in a["tensors"]:
            b = old[t["name"]]
            chunk = raw[pos:pos + int(t["nbytes"])]
            if len(chunk) != b.nbytes:
                raise ParamFormatError(f"{path}:{t['name']}: body holds {len(chunk)} bytes, tensor needs {b.nbytes}")
            pos += len(chunk)
            values[t["name"]] = _undelta(b, np.frombuffer(chunk, dtype=b.dtype).reshape(b.shape), u.encoding)
        new = _patch(base, a["format"], values, path)
        if _sha(new) != a.get("result_sha256"):
            raise ArtifactHashError(f"{path}: rebuilt artifact sha256 {_sha(new)[:16]}… differs from the signed "
                                    f"{str(a.get('result_sha256'))[:16]}…", where=path,
                                    hint="the update is corrupt or was made against different bytes; keep the old model")
        out[path] = new
    if pos != len(raw):
        raise ParamFormatError(f"update body has {len(raw) - pos} trailing bytes")
    return out
