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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._canonical import canonical_bytes, loads_strict
from ._errors import ExpiredError
from ._keys import SigningKey
from ._signing import Signature, sign_bytes, verify_threshold
from ._weights import ParamFormatError, WeightSlot, locate_weights, read_weights

__all__ = ["ENCODINGS", "COMPRESSIONS", "ParamUpdate", "WeightSlot", "apply_param_update",
           "encode_param_update", "locate_weights", "parse_param_update", "read_weights"]

MAGIC = b"EPPU1\n"
PAYLOAD_TYPE = "edgepack-param-update"
ENCODINGS = ("whole", "delta-xor", "delta-add")
COMPRESSIONS = ("zlib", "lzma")
MAX_HEADER = 4 << 20


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
        _check_types(u)
        return u


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(u: ParamUpdate) -> None:
    """A signed payload is still checked field by field: a buggy or compromised signer must
    produce a refusal, not a TypeError deep in the applier (found by tests/security fuzzing)."""
    for name in ("model", "body_sha256", "expires_at"):
        if not isinstance(getattr(u, name), str):
            raise ParamFormatError(f"parameter update field {name!r} must be a string", where=name)
    for name in ("version", "base_version", "body_size", "raw_size"):
        v = getattr(u, name)
        if not _is_int(v) or v < 0:
            raise ParamFormatError(f"parameter update field {name!r} must be a non-negative integer", where=name)
    try:
        dt.datetime.strptime(u.expires_at, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as e:
        raise ParamFormatError(f"expires_at {u.expires_at[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ", where="expires_at") from e
    for path, a in u.artifacts.items():
        if not all(isinstance(a.get(k), str) for k in ("format", "base_sha256", "result_sha256")):
            raise ParamFormatError(f"{path}: format, base_sha256 and result_sha256 must be strings", where=path)
        tensors = a.get("tensors")
        if not isinstance(tensors, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and _is_int(t.get("nbytes"))
                and t["nbytes"] >= 0 for t in tensors):
            raise ParamFormatError(f"{path}: tensors must be a list of {{name, nbytes >= 0, ...}}", where=path)


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
