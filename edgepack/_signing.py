"""Signatures over canonical bytes, and the threshold rule.

``Signed`` is the envelope (STYLE rule 3): a payload that knows ``to_dict`` plus
a list of signatures over ``canonical_bytes(payload.to_dict())``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._canonical import canonical_bytes
from ._errors import (
    BadSignatureError,
    ManifestSchemaError,
    ThresholdError,
    UnsignedError,
    UntrustedKeyError,
)
from ._keys import PublicKey, SigningKey

__all__ = ["Signature", "sign_bytes", "verify_threshold"]

# Lowercase only: bytes.fromhex accepts either case, and two spellings of one
# signature would let an unsigned byte change survive verification.
_HEX = re.compile(r"[0-9a-f]{64}")
_SIG_HEX = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: str  # hex

    def to_dict(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": self.sig}

    @classmethod
    def from_dict(cls, d: object) -> Signature:
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("keyid"), str)
            or not isinstance(d.get("sig"), str)
            or not _HEX.fullmatch(d["keyid"])
            or not _SIG_HEX.fullmatch(d["sig"])
            or set(d) != {"keyid", "sig"}
        ):
            raise ManifestSchemaError("a signature must be {keyid: <64 lowercase hex>, sig: <128 lowercase hex>}",
                                      where="signatures.json")
        return cls(d["keyid"], d["sig"])


def sign_bytes(key: SigningKey, message: bytes) -> Signature:
    return Signature(key.keyid, key.sign(message).hex())


@dataclass
class ThresholdResult:
    valid_keyids: list[str] = field(default_factory=list)
    invalid_keyids: list[str] = field(default_factory=list)
    untrusted_keyids: list[str] = field(default_factory=list)


def count_valid(
    message: bytes, signatures: Iterable[Signature], keys: Mapping[str, PublicKey]
) -> ThresholdResult:
    """Sort signatures into valid, invalid and untrusted. Each key counts once."""
    result = ThresholdResult()
    seen: set[str] = set()
    for s in signatures:
        if s.keyid in seen:
            continue  # one key cannot meet a threshold alone by signing twice
        seen.add(s.keyid)
        key = keys.get(s.keyid)
        if key is None:
            result.untrusted_keyids.append(s.keyid)
            continue
        try:
            raw = bytes.fromhex(s.sig)
        except ValueError:
            result.invalid_keyids.append(s.keyid)
            continue
        (result.valid_keyids if key.verify(raw, message) else result.invalid_keyids).append(s.keyid)
    return result


def verify_threshold(
    payload: Any,
    signatures: list[Signature],
    keys: Mapping[str, PublicKey],
    threshold: int,
    *,
    what: str = "manifest",
) -> list[str]:
    """Check that ``threshold`` distinct trusted keys signed ``payload``.

    Returns the key ids whose signatures are valid.

    Raises:
        UnsignedError: there are no signatures.
        BadSignatureError: a trusted key's signature does not match (content changed).
        UntrustedKeyError: every signature is from a key not in ``keys``.
        ThresholdError: valid signatures exist but are fewer than ``threshold``.
    """
    message = canonical_bytes(payload)
    if not signatures:
        raise UnsignedError(f"the {what} has no signatures", hint="sign it with 'edgepack sign BUNDLE --key KEY'")
    r = count_valid(message, signatures, keys)
    if len(r.valid_keyids) >= threshold:
        return r.valid_keyids
    if r.invalid_keyids:
        raise BadSignatureError(
            f"signature by trusted key {r.invalid_keyids[0][:12]} does not match the {what}: "
            "it was changed after signing",
            hint="rebuild or re-sign from a trusted source; never edit a signed bundle",
        )
    if not r.valid_keyids:
        raise UntrustedKeyError(
            f"the {what} is signed only by keys the trust file does not list "
            f"({', '.join(k[:12] for k in r.untrusted_keyids)})",
            hint="sign with a release key listed in the trust file, or add its public key to the trust file",
        )
    raise ThresholdError(
        f"the {what} has {len(r.valid_keyids)} valid signature(s) from trusted keys; {threshold} are needed",
        hint="add signatures from more trusted keys with 'edgepack sign'",
    )
