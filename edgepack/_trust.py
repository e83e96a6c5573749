"""Trust files: which keys may sign bundles, how many must, and rotation.

A trust file is an envelope ``{"signed": {...}, "signatures": [...]}`` whose
payload is ``{"_type": "edgepack-trust", "version": N, "threshold": T,
"keys": {keyid: public key}, ...}``. Version 1 is pinned out of band. Like a TUF
root rotation, version N+1 is accepted only if it is signed by a threshold of
version N's keys *and* of its own keys; the version never goes backwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._atomic import atomic_write
from ._canonical import canonical_bytes, loads_strict
from ._errors import EdgepackError, TrustError, VerificationError
from ._keys import PublicKey, SigningKey
from ._signing import Signature, sign_bytes, verify_threshold

__all__ = ["Trust", "load_trust"]

TRUST_TYPE = "edgepack-trust"


@dataclass
class Trust:
    keys: dict[str, PublicKey]
    threshold: int = 1
    version: int = 1
    signatures: list[Signature] = field(default_factory=list)
    unrecognized: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, int) or self.threshold < 1:
            raise TrustError("threshold must be an integer >= 1", where="trust file")
        if not isinstance(self.version, int) or self.version < 1:
            raise TrustError("version must be an integer >= 1", where="trust file")
        if len(self.keys) < self.threshold:
            raise TrustError(
                f"threshold {self.threshold} is more than the {len(self.keys)} key(s) listed",
                where="trust file", hint="lower --threshold or add --key entries",
            )
        for kid, key in self.keys.items():
            if key.keyid != kid:
                raise TrustError(f"key id {kid[:12]} does not match its public key", where="trust file")

    @classmethod
    def of(cls, keys: list[PublicKey], threshold: int = 1, version: int = 1) -> Trust:
        return cls({k.keyid: k for k in keys}, threshold, version)

    def signed_dict(self) -> dict[str, Any]:
        return {
            **self.unrecognized,
            "_type": TRUST_TYPE,
            "version": self.version,
            "threshold": self.threshold,
            "keys": {kid: k.to_dict() for kid, k in sorted(self.keys.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {"signed": self.signed_dict(), "signatures": [s.to_dict() for s in self.signatures]}

    @classmethod
    def from_dict(cls, d: object) -> Trust:
        if not isinstance(d, dict) or not isinstance(d.get("signed"), dict):
            raise TrustError("a trust file is {signed: {...}, signatures: [...]}", where="trust file")
        s = dict(d["signed"])
        if s.pop("_type", None) != TRUST_TYPE:
            raise TrustError(f"_type must be {TRUST_TYPE!r}", where="trust file")
        try:
            raw_keys = s.pop("keys")
            keys = {kid: PublicKey.from_dict(v, where=f"trust file key {kid[:12]}") for kid, v in raw_keys.items()}
            threshold, version = s.pop("threshold"), s.pop("version")
            sigs = [Signature.from_dict(x) for x in d.get("signatures", [])]
        except (KeyError, AttributeError, TypeError) as e:
            raise TrustError(f"trust file is missing or mistypes a field: {e}", where="trust file") from e
        except EdgepackError as e:
            raise TrustError(e.message, where="trust file") from e
        return cls(keys, threshold, version, sigs, s)

    def sign(self, key: SigningKey) -> None:
        self.signatures = [s for s in self.signatures if s.keyid != key.keyid]
        self.signatures.append(sign_bytes(key, canonical_bytes(self.signed_dict())))

    def rotate_to(self, new: Trust) -> Trust:
        """Accept ``new`` as the next trust file, or raise.

        Raises:
            TrustError: if ``new`` is not version+1, or is not signed by a threshold
                of this file's keys and of its own.
        """
        if new.version != self.version + 1:
            raise TrustError(
                f"trust rotation must go from version {self.version} to {self.version + 1}, got {new.version}",
                hint="apply each intermediate trust file in order",
            )
        try:
            verify_threshold(new.signed_dict(), new.signatures, self.keys, self.threshold, what="new trust file")
            verify_threshold(new.signed_dict(), new.signatures, new.keys, new.threshold, what="new trust file")
        except VerificationError as e:
            raise TrustError(f"trust rotation refused: {e.message}", hint=e.hint) from e
        return new

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write(path, canonical_bytes(self.to_dict()) + b"\n")


def load_trust(path: str | os.PathLike[str]) -> Trust:
    """Read a trust file.

    Raises:
        TrustError: if it is unreadable or malformed.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise TrustError(f"cannot read trust file: {e.strerror}", where=str(p),
                         hint="make one with 'edgepack keys trust PUB.json... --out trust.json'") from e
    try:
        return Trust.from_dict(loads_strict(data, what=str(p)))
    except EdgepackError as e:
        raise TrustError(e.message, where=str(p), hint=e.hint) from e
