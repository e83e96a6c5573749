"""The signed device update: what one device returns in a round.

Wire format (all lengths little-endian)::

    b"EPFU1\\n\\0\\0"  | u32 envelope length | envelope (canonical JSON) | payload

The envelope is ``{"signed": HEADER, "signatures": [{"keyid", "sig"}]}`` (STYLE
rule 3) and the signature is Ed25519 by the *device's* key over
``canonical_bytes(HEADER)``. The header binds the update to its round id, base
model version, device id and a random update id, and commits to the payload by
length and sha256, so one signature check covers every tensor byte.

The reader trusts nothing before it must: the envelope length is bounded before
it is read, the signature is checked before any tensor is looked at, the
payload hash and length before any tensor is sliced, and each tensor's byte
count is checked against the shape the *server's* spec gives, not the header's.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._canonical import canonical_bytes, loads_strict
from .._errors import BadSignatureError, EdgepackError, UntrustedKeyError
from .._keys import PublicKey, SigningKey
from .._signing import Signature, sign_bytes
from ._compress import EncodedTensor, decode_tensor
from ._errors import DeviceUpdateFormatError, UpdateShapeError
from ._params import Params, ParamSpec

__all__ = ["UPDATE_SCHEMA", "UpdateHeader", "UpdateLimits", "encode_update", "open_update"]

UPDATE_SCHEMA = "edgepack.device-update/1"
MAGIC = b"EPFU1\n\0\0"
_PREFIX = len(MAGIC) + 4


@dataclass(frozen=True)
class UpdateLimits:
    """Bounds the reader enforces before allocating anything."""

    max_envelope_bytes: int = 4 << 20
    max_blob_bytes: int = 2 << 30


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    codec: str
    meta: dict[str, Any]
    offset: int
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "codec": self.codec,
                "meta": self.meta, "offset": self.offset, "nbytes": self.nbytes}


@dataclass(frozen=True)
class UpdateHeader:
    """The signed header. Unknown fields are kept in ``extra`` and survive a round trip."""

    round_id: str
    base_version: int
    device_id: str
    update_id: str
    num_samples: int
    tensors: tuple[TensorEntry, ...]
    payload_nbytes: int
    payload_sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update({"schema": UPDATE_SCHEMA, "round_id": self.round_id, "base_version": self.base_version,
                  "device_id": self.device_id, "update_id": self.update_id, "num_samples": self.num_samples,
                  "tensors": [t.to_dict() for t in self.tensors],
                  "payload": {"nbytes": self.payload_nbytes, "sha256": self.payload_sha256},
                  "metrics": self.metrics})
        return d

    @classmethod
    def from_dict(cls, d: object) -> UpdateHeader:
        """Raises:
            DeviceUpdateFormatError: if a field is missing or mistyped.
        """
        if not isinstance(d, dict) or d.get("schema") != UPDATE_SCHEMA:
            raise DeviceUpdateFormatError(f"update header is not {UPDATE_SCHEMA}", where="signed.schema")
        known = {"schema", "round_id", "base_version", "device_id", "update_id", "num_samples", "tensors",
                 "payload", "metrics"}
        payload = _typed(d, "payload", dict)
        metrics = d.get("metrics", {})
        if not isinstance(metrics, dict):
            raise DeviceUpdateFormatError("metrics must be an object", where="signed.metrics")
        tensors = _typed(d, "tensors", list)
        return cls(
            round_id=_typed(d, "round_id", str), base_version=_typed(d, "base_version", int),
            device_id=_typed(d, "device_id", str), update_id=_typed(d, "update_id", str),
            num_samples=_typed(d, "num_samples", int), tensors=tuple(_entry(t, i) for i, t in enumerate(tensors)),
            payload_nbytes=_typed(payload, "nbytes", int), payload_sha256=_typed(payload, "sha256", str),
            metrics=metrics, extra={k: v for k, v in d.items() if k not in known},
        )


def _typed(d: Mapping[str, Any], key: str, typ: type) -> Any:
    v = d.get(key)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise DeviceUpdateFormatError(f"field {key!r} must be {typ.__name__}", where=f"signed.{key}")
    return v


def _entry(t: object, i: int) -> TensorEntry:
    if not isinstance(t, dict):
        raise DeviceUpdateFormatError("tensor entry must be an object", where=f"tensors[{i}]")
    shape = _typed(t, "shape", list)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape):
        raise DeviceUpdateFormatError("shape must be non-negative integers", where=f"tensors[{i}].shape")
    off, nb = _typed(t, "offset", int), _typed(t, "nbytes", int)
    if off < 0 or nb < 0:
        raise DeviceUpdateFormatError("offset and nbytes must be >= 0", where=f"tensors[{i}]")
    return TensorEntry(_typed(t, "name", str), tuple(shape), _typed(t, "dtype", str), _typed(t, "codec", str),
                       _typed(t, "meta", dict), off, nb)


def encode_update(key: SigningKey, *, round_id: str, base_version: int, device_id: str, num_samples: int,
                  tensors: Sequence[EncodedTensor], metrics: Mapping[str, float] | None = None,
                  update_id: str | None = None) -> bytes:
    """Build and sign a device update blob (device side).

    ``tensors`` come from :func:`edgepack.federated.compress` (use codec
    ``"none"`` for an uncompressed update).
    """
    entries, parts, off = [], [], 0
    for t in tensors:
        entries.append(TensorEntry(t.name, t.shape, t.dtype, t.codec, t.meta, off, len(t.data)))
        parts.append(t.data)
        off += len(t.data)
    payload = b"".join(parts)
    header = UpdateHeader(round_id, int(base_version), device_id, update_id or secrets.token_hex(16),
                          int(num_samples), tuple(entries), len(payload), hashlib.sha256(payload).hexdigest(),
                          dict(metrics or {}))
    signed = header.to_dict()
    env = canonical_bytes({"signed": signed, "signatures": [sign_bytes(key, canonical_bytes(signed)).to_dict()]})
    return MAGIC + struct.pack("<I", len(env)) + env + payload


@dataclass(frozen=True)
class OpenedUpdate:
    """An update whose envelope parsed; nothing in it is trusted yet."""

    signed: dict[str, Any]
    signature: Signature
    payload: memoryview

    @property
    def claimed_device_id(self) -> str | None:
        v = self.signed.get("device_id")
        return v if isinstance(v, str) else None

    @property
    def claimed_update_id(self) -> str | None:
        v = self.signed.get("update_id")
        return v if isinstance(v, str) else None

    def verify(self, key: PublicKey) -> VerifiedUpdate:
        """Check the signature with the claimed device's key, then the header and payload hash.

        Raises:
            UntrustedKeyError: the signature names another key than the device's.
            BadSignatureError: the signature does not match the header.
            DeviceUpdateFormatError: the header is malformed or the payload does not match it.
        """
        if self.signature.keyid != key.keyid:
            raise UntrustedKeyError("update is signed by another key than the device's registered key",
                                    where=self.signature.keyid[:12])
        try:
            raw = bytes.fromhex(self.signature.sig)
        except ValueError as e:
            raise BadSignatureError("signature is not hex") from e
        if not key.verify(raw, canonical_bytes(self.signed)):
            raise BadSignatureError("device signature does not match the update header",
                                    hint="the update was altered after signing")
        header = UpdateHeader.from_dict(self.signed)
        if len(self.payload) != header.payload_nbytes:
            raise DeviceUpdateFormatError(f"payload is {len(self.payload)} bytes, header says {header.payload_nbytes}",
                                          where="payload")
        if hashlib.sha256(self.payload).hexdigest() != header.payload_sha256:
            raise DeviceUpdateFormatError("payload does not match its signed sha256", where="payload")
        return VerifiedUpdate(header, self.payload)


@dataclass(frozen=True)
class VerifiedUpdate:
    """Signature and payload hash checked; tensors not yet decoded."""

    header: UpdateHeader
    payload: memoryview

    def decode(self, spec: ParamSpec) -> Params:
        """Decode every tensor into the server's ``spec`` (names, order, shapes, dtypes from the spec).

        Raises:
            DeviceUpdateFormatError: tensors differ from the spec, overlap, or fail their codec's checks.
        """
        entries = self.header.tensors
        if [e.name for e in entries] != list(spec.names):
            raise UpdateShapeError("update tensor names differ from the base model's",
                                          where="tensors", hint=f"expected {list(spec.names)[:5]}...")
        out: Params = {}
        pos = 0
        for e, t in zip(entries, spec.tensors, strict=True):
            if e.shape != t.shape or e.dtype != t.dtype:
                raise UpdateShapeError(f"{t.name}: update has {e.shape}/{e.dtype}, base is {t.shape}/{t.dtype}",
                                              where=t.name)
            if e.offset != pos or e.offset + e.nbytes > len(self.payload):
                raise DeviceUpdateFormatError(f"{t.name}: tensor bytes are not contiguous within the payload",
                                              where=t.name)
            out[t.name] = decode_tensor(e.codec, bytes(self.payload[e.offset: e.offset + e.nbytes]), e.meta,
                                        t.shape, t.dtype)
            pos += e.nbytes
        if pos != len(self.payload):
            raise DeviceUpdateFormatError("payload has bytes no tensor claims", where="payload")
        return out


def open_update(blob: bytes, limits: UpdateLimits | None = None) -> OpenedUpdate:
    """Parse only the framing and envelope of a device update.

    Raises:
        DeviceUpdateFormatError: bad magic, lengths over the limits, or a malformed envelope.
    """
    lim = limits or UpdateLimits()
    if len(blob) > lim.max_blob_bytes:
        raise DeviceUpdateFormatError(f"update is {len(blob)} bytes, over the {lim.max_blob_bytes} limit")
    if len(blob) < _PREFIX or blob[: len(MAGIC)] != MAGIC:
        raise DeviceUpdateFormatError("not an edgepack device update (bad magic)", where="byte 0")
    (elen,) = struct.unpack("<I", blob[len(MAGIC): _PREFIX])
    if elen > lim.max_envelope_bytes or _PREFIX + elen > len(blob):
        raise DeviceUpdateFormatError(f"envelope length {elen} is over the limit or past the end", where="byte 8")
    try:
        env = loads_strict(bytes(blob[_PREFIX: _PREFIX + elen]), what="update envelope")
    except EdgepackError as e:
        raise DeviceUpdateFormatError(e.message, where="envelope") from e
    if not isinstance(env, dict) or set(env) != {"signed", "signatures"} or not isinstance(env["signed"], dict):
        raise DeviceUpdateFormatError("envelope must be {signed, signatures}", where="envelope")
    sigs = env["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1:
        raise DeviceUpdateFormatError("a device update carries exactly one signature", where="signatures")
    try:
        sig = Signature.from_dict(sigs[0])
    except EdgepackError as e:
        raise DeviceUpdateFormatError(e.message, where="signatures[0]") from e
    return OpenedUpdate(env["signed"], sig, memoryview(blob)[_PREFIX + elen:])


def encode_plain(key: SigningKey, params: Mapping[str, np.ndarray], **kw: Any) -> bytes:
    """Convenience: sign an uncompressed update (codec ``none``)."""
    from ._compress import CompressionConfig, compress

    return encode_update(key, tensors=compress(params, CompressionConfig("none")), **kw)
