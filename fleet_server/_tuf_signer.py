"""Edgepack Ed25519 keys as python-tuf signers.

python-tuf signs through ``securesystemslib.signer.Signer``. Wrapping
edgepack's own ``SigningKey`` (instead of loading the key a second time with
``CryptoSigner``) keeps one key format on disk for release, root and online keys.
TUF key ids are computed the spec's way (sha256 of the canonical key object),
so any TUF client can check them.
"""

from __future__ import annotations

from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey
from securesystemslib.signer._utils import compute_default_keyid

from edgepack import PublicKey, SigningKey

__all__ = ["EdgepackSigner", "tuf_key"]

_ED25519 = "ed25519"


def tuf_key(public: PublicKey) -> SSlibKey:
    """The TUF key object (keytype and scheme ``ed25519``) for an edgepack public key."""
    keyval = {"public": public.raw.hex()}
    return SSlibKey(compute_default_keyid(_ED25519, _ED25519, keyval), _ED25519, _ED25519, keyval)


class EdgepackSigner(Signer):
    """A ``Signer`` over an in-memory edgepack ``SigningKey``."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self._public = tuf_key(key.public)

    @property
    def public_key(self) -> Key:
        return self._public

    @property
    def keyid(self) -> str:
        return self._public.keyid

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public.keyid, self._key.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> Signer:
        # Keys reach this signer as objects, never through a URI: a URI scheme
        # would let configuration point the server at an offline key file.
        raise NotImplementedError("EdgepackSigner is built from a SigningKey, not a URI")

    def __repr__(self) -> str:
        return f"EdgepackSigner(keyid={self.keyid[:12]}…)"
