"""The signed release of a round's result: a parameter update signed by the federated key.

Two outputs: :func:`core_param_update_release` emits the fleet's parameter-update
file (``edgepack/_params.py``: new weights patched into the released artifact),
which is what goes through the rollout. :func:`sign_release` emits a small
self-describing "round result" (raw tensors + round summary) for tools that
have no base artifact at hand (e.g. a Flower deployment's audit log).

Same framing as a device update (magic, envelope length, canonical-JSON
envelope, payload) with its own magic and schema, so one can never be mistaken
for the other. The header names the model, the new and base versions and the
round, and records the round's summary (update counts, rejections by reason,
DP noise multiplier); the tensors are raw (codec ``none``).

The fleet server or a Flower deployment hands this blob to the rollout path;
the device side verifies it with :func:`open_release` against the federated
key(s) its trust names before loading any tensor.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._canonical import canonical_bytes, loads_strict
from .._errors import EdgepackError
from .._keys import PublicKey, SigningKey
from .._signing import Signature, sign_bytes, verify_threshold
from ._compress import CompressionConfig, compress, decode_tensor
from ._errors import DeviceUpdateFormatError
from ._params import Params, ParamSpec

__all__ = ["RELEASE_SCHEMA", "ParameterRelease", "ReleaseFn", "core_param_update_release", "open_release",
           "sign_release"]

RELEASE_SCHEMA = "edgepack.parameter-update/1"
# Not "EPPU1": that prefix is the core parameter-update file (edgepack/_params.py).
MAGIC = b"EPFR1\n\0\0"
_PREFIX = len(MAGIC) + 4
_MAX_ENVELOPE = 16 << 20


@dataclass(frozen=True)
class ParameterRelease:
    """A verified release: its signed header and decoded tensors."""

    header: dict[str, Any]
    params: Params

    @property
    def version(self) -> int:
        return int(self.header["version"])


def sign_release(key: SigningKey, params: Mapping[str, np.ndarray], *, model: str, version: int, base_version: int,
                 round_id: str, summary: Mapping[str, Any] | None = None) -> bytes:
    """Encode and sign new global parameters as a parameter update.

    Raises:
        DeviceUpdateFormatError: if ``version`` does not grow past ``base_version``.
    """
    if version <= base_version:
        raise DeviceUpdateFormatError(f"version {version} must be greater than base version {base_version}",
                                      where="version", hint="versions only grow")
    tensors = compress(dict(params), CompressionConfig("none"))
    entries, off = [], 0
    for t in tensors:
        entries.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "offset": off, "nbytes": len(t.data)})
        off += len(t.data)
    payload = b"".join(t.data for t in tensors)
    signed = {"schema": RELEASE_SCHEMA, "model": model, "version": int(version), "base_version": int(base_version),
              "round_id": round_id, "summary": dict(summary or {}), "tensors": entries,
              "payload": {"nbytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}}
    env = canonical_bytes({"signed": signed, "signatures": [sign_bytes(key, canonical_bytes(signed)).to_dict()]})
    return MAGIC + struct.pack("<I", len(env)) + env + payload


def open_release(blob: bytes, keys: Mapping[str, PublicKey], spec: ParamSpec, *, threshold: int = 1) -> ParameterRelease:
    """Verify a release against trusted federated keys, then decode it into ``spec``.

    Raises:
        DeviceUpdateFormatError: malformed framing, payload or tensors.
        VerificationError: (its subclasses) if the signature does not verify.
    """
    if len(blob) < _PREFIX or blob[: len(MAGIC)] != MAGIC:
        raise DeviceUpdateFormatError("not an edgepack parameter update (bad magic)", where="byte 0")
    (elen,) = struct.unpack("<I", blob[len(MAGIC): _PREFIX])
    if elen > _MAX_ENVELOPE or _PREFIX + elen > len(blob):
        raise DeviceUpdateFormatError(f"envelope length {elen} is over the limit or past the end", where="byte 8")
    try:
        env = loads_strict(bytes(blob[_PREFIX: _PREFIX + elen]), what="release envelope")
        if not isinstance(env, dict) or not isinstance(env.get("signed"), dict) or not isinstance(
                env.get("signatures"), list):
            raise DeviceUpdateFormatError("envelope must be {signed, signatures}", where="envelope")
        sigs = [Signature.from_dict(s) for s in env["signatures"]]
    except EdgepackError as e:
        if isinstance(e, DeviceUpdateFormatError):
            raise
        raise DeviceUpdateFormatError(e.message, where="envelope") from e
    signed = env["signed"]
    verify_threshold(signed, sigs, keys, threshold, what="parameter update")
    if signed.get("schema") != RELEASE_SCHEMA:
        raise DeviceUpdateFormatError(f"release is not {RELEASE_SCHEMA}", where="signed.schema")
    payload = memoryview(blob)[_PREFIX + elen:]
    pinfo = signed.get("payload") or {}
    if len(payload) != pinfo.get("nbytes") or hashlib.sha256(payload).hexdigest() != pinfo.get("sha256"):
        raise DeviceUpdateFormatError("payload does not match its signed length and sha256", where="payload")
    entries = signed.get("tensors")
    if not isinstance(entries, list) or [e.get("name") for e in entries] != list(spec.names):
        raise DeviceUpdateFormatError("release tensors differ from the model's", where="tensors")
    out: Params = {}
    pos = 0
    for entry, t in zip(entries, spec.tensors, strict=True):
        if entry.get("shape") != list(t.shape) or entry.get("dtype") != t.dtype or entry.get("offset") != pos:
            raise DeviceUpdateFormatError(f"{t.name}: release tensor does not match the model", where=t.name)
        nb = entry.get("nbytes")
        if not isinstance(nb, int) or pos + nb > len(payload):
            raise DeviceUpdateFormatError(f"{t.name}: tensor runs past the payload", where=t.name)
        out[t.name] = decode_tensor("none", bytes(payload[pos: pos + nb]), {}, t.shape, t.dtype)
        pos += nb
    if pos != len(payload):
        raise DeviceUpdateFormatError("payload has bytes no tensor claims", where="payload")
    return ParameterRelease(signed, out)


ReleaseFn = Callable[[Params, int, int, str], bytes]
"""``(new_params, version, base_version, round_id) -> signed blob`` for the rollout path."""


def core_param_update_release(keys: Iterable[SigningKey], *, model: str, artifact_path: str, artifact_format: str,
                              base_artifact: bytes) -> ReleaseFn:
    """A release function that emits the fleet's own parameter-update file (``edgepack/_params.py``).

    This is what devices install: the new weights patched into the released
    artifact, signed by the federated key(s). ``base_artifact`` is the released
    artifact the round trained from (ONNX or TFLite bytes).
    """
    signers = list(keys)

    def release(params: Params, version: int, base_version: int, round_id: str) -> bytes:
        from .._params import encode_param_update  # the core format, imported when used

        blob, _rebuilt = encode_param_update(
            model=model, version=version, base_version=base_version,
            base_artifacts={artifact_path: (artifact_format, base_artifact)},
            new_weights={artifact_path: dict(params)}, keys=signers, encoding="delta-xor",
        )
        return blob

    return release
