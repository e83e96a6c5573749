"""Ed25519 keys: generation, files on disk, key ids.

A key id is the sha256 of the raw 32-byte public key, in hex, so it is the same
wherever the key is loaded from. Private keys are PKCS#8 PEM, created with mode
0600 from the first byte (never chmod-after-write), optionally encrypted.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ._atomic import atomic_write
from ._canonical import canonical_bytes, loads_strict
from ._errors import EdgepackError, KeyFileError

__all__ = [
    "PASSPHRASE_ENV",
    "PublicKey",
    "SigningKey",
    "generate_key",
    "load_public_key",
    "load_signing_key",
    "save_key_pair",
]

PASSPHRASE_ENV = "EDGEPACK_KEY_PASSPHRASE"


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, with its key id."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError("an Ed25519 public key is 32 bytes", hint="check the key file")

    @property
    def keyid(self) -> str:
        return key_id(self.raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True if ``signature`` is this key's signature over ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_dict(self) -> dict[str, str]:
        return {"keytype": "ed25519", "scheme": "ed25519", "public": self.raw.hex()}

    @classmethod
    def from_dict(cls, d: object, *, where: str = "public key") -> PublicKey:
        if not isinstance(d, dict) or d.get("keytype") != "ed25519" or not isinstance(d.get("public"), str):
            raise KeyFileError("not an ed25519 public key object", where=where,
                               hint='expected {"keytype": "ed25519", "public": "<64 hex>"}')
        try:
            raw = bytes.fromhex(d["public"])
        except ValueError as e:
            raise KeyFileError("public key is not hex", where=where) from e
        return cls(raw)


class SigningKey:
    """An Ed25519 private key. Its bytes never appear in ``repr`` or logs."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self.keyid[:12]}…)"

    def private_pem(self, passphrase: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def generate_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    if path.exists():
        raise KeyFileError(f"{path} already exists", where=str(path),
                           hint="choose another --name or --out; keys are never overwritten")
    atomic_write(path, data, mode)


def save_key_pair(key: SigningKey, out_dir: Path, name: str, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub.json`` into ``out_dir``.

    Raises:
        KeyFileError: if either file exists or the directory cannot be written.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        priv = out_dir / f"{name}.key"
        pub = out_dir / f"{name}.pub.json"
        for p in (priv, pub):
            if p.exists():
                raise KeyFileError(f"{p} already exists", where=str(p),
                                   hint="choose another --name or --out; keys are never overwritten")
        _write_new(priv, key.private_pem(passphrase), 0o600)
        pub_doc = dict(key.public.to_dict(), keyid=key.keyid)
        _write_new(pub, canonical_bytes(pub_doc) + b"\n", 0o644)
    except OSError as e:
        raise KeyFileError(f"cannot write keys: {e.strerror}", where=str(out_dir),
                           hint="choose a writable --out directory") from e
    return priv, pub


def _passphrase_for(path: Path) -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Passphrase for {path}: ").encode()
    raise KeyFileError("the private key is encrypted and no passphrase was given", where=str(path),
                       hint=f"set {PASSPHRASE_ENV} or run in a terminal to be prompted")


def load_signing_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> SigningKey:
    """Load a private key file written by ``edgepack keys new``.

    Raises:
        KeyFileError: if it is missing, group/world readable, not Ed25519, or the passphrase is wrong.
    """
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read private key: {e.strerror}", where=str(p),
                           hint="pass the .key file made by 'edgepack keys new'") from e
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError("private key file is readable by others", where=str(p),
                           hint=f"chmod 600 {p}")
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    pw = (passphrase or _passphrase_for(p)) if encrypted else None
    try:
        key = serialization.load_pem_private_key(data, password=pw)
    except (ValueError, TypeError) as e:
        raise KeyFileError("cannot decrypt or parse the private key", where=str(p),
                           hint=f"check the passphrase in {PASSPHRASE_ENV} and that this is a .key file") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("the private key is not Ed25519", where=str(p))
    return SigningKey(key)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Load a ``.pub.json`` file.

    Raises:
        KeyFileError: if it is unreadable or not an Ed25519 public key.
    """
    p = Path(path)
    try:
        doc = loads_strict(p.read_bytes(), what=str(p))
    except OSError as e:
        raise KeyFileError(f"cannot read public key: {e.strerror}", where=str(p)) from e
    except EdgepackError as e:
        raise KeyFileError(e.message, where=str(p)) from e
    return PublicKey.from_dict(doc, where=str(p))
