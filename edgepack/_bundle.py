"""Bundle format v1: one zip holding manifest.json, signatures.json, artifacts/*,
golden/* and reports/*. See docs/bundle-format.md.

Reading is in two steps that never mix: ``open_bundle`` checks the archive's
structure and parses the manifest (enough for ``inspect``), and
``verify_bundle`` adds the trust checks in the contract's order: signature
threshold over the manifest, then every member's size and sha256, then expiry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._archive import ArchiveLimits, SafeZipReader, write_archive
from ._canonical import canonical_bytes, loads_strict
from ._errors import (
    ArtifactHashError,
    ArtifactSizeError,
    BundleError,
    ExpiredError,
    ManifestParseError,
    ManifestSchemaError,
    VerificationError,
)
from ._keys import SigningKey
from ._manifest import SCHEMA, ArtifactEntry, Manifest, check_member_path, format_time
from ._signing import Signature, sign_bytes, verify_threshold
from ._trust import Trust

__all__ = [
    "BundleBuilder",
    "OpenedBundle",
    "VerifiedBundle",
    "open_bundle",
    "sign_bundle",
    "verify_bundle",
]

MANIFEST = "manifest.json"
SIGNATURES = "signatures.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class OpenedBundle:
    """A structurally sound bundle whose manifest parsed. Nothing is trusted yet."""

    reader: SafeZipReader
    manifest_doc: dict[str, Any]
    signatures: list[Signature]

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_dict(self.manifest_doc)


def _load_canonical(raw: bytes, what: str) -> Any:
    doc = loads_strict(raw, what=what)
    try:
        same = canonical_bytes(doc) == raw
    except (ValueError, TypeError):
        same = False
    if not same:
        # One document, one encoding: nothing outside the signed form can vary.
        raise ManifestParseError(f"{what} is not canonical JSON", where=what,
                                 hint="bundles are written by edgepack; do not edit or re-encode them")
    return doc


def _parse_signatures(raw: bytes) -> list[Signature]:
    doc = _load_canonical(raw, SIGNATURES)
    if not isinstance(doc, dict) or not isinstance(doc.get("signatures"), list):
        raise ManifestSchemaError("signatures.json must be {\"signatures\": [...]}", where=SIGNATURES)
    return [Signature.from_dict(s) for s in doc["signatures"]]


def open_bundle(path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> OpenedBundle:
    """Check the archive structure and parse (but do not trust) the manifest.

    Raises:
        BundleError (and subclasses): for any structural or parse problem.
    """
    reader = SafeZipReader(path, limits)
    raw = reader.read_member(MANIFEST, reader.limits.max_manifest_bytes)
    doc = _load_canonical(raw, f"{reader.path}:{MANIFEST}")
    if not isinstance(doc, dict):
        raise ManifestSchemaError("the manifest must be a JSON object", where=MANIFEST)
    sigs = _parse_signatures(reader.read_member(SIGNATURES, reader.limits.max_manifest_bytes)) \
        if SIGNATURES in reader.infos else []
    return OpenedBundle(reader, doc, sigs)


@dataclass
class VerifiedBundle:
    """A bundle that passed every check. ``members`` holds the verified bytes
    (when asked to keep them), so callers load exactly what was hashed."""

    path: Path
    manifest: Manifest
    signed_by: list[str]
    members: dict[str, bytes] = field(default_factory=dict)

    def member(self, name: str) -> bytes:
        try:
            return self.members[name]
        except KeyError:
            raise BundleError(f"member {name!r} was not kept at verification",
                              hint="call verify_bundle(..., keep_members=True)") from None


def verify_bundle(
    path: str | os.PathLike[str],
    trust: Trust,
    *,
    now: dt.datetime | None = None,
    limits: ArchiveLimits | None = None,
    keep_members: bool = False,
) -> VerifiedBundle:
    """Verify a bundle: threshold signature, then sizes and hashes, then expiry.

    Raises:
        BundleError: structural problems (see ``open_bundle``).
        VerificationError: UnsignedError, BadSignatureError, UntrustedKeyError,
            ThresholdError, ArtifactSizeError, ArtifactHashError, ExpiredError.
    """
    opened = open_bundle(path, limits)
    where = str(opened.path)
    # The signature covers the parsed JSON document: schema checks come after it,
    # so nothing unsigned is interpreted (ARCHITECTURE: verification first).
    try:
        signed_by = verify_threshold(opened.manifest_doc, opened.signatures, trust.keys, trust.threshold)
    except VerificationError as e:
        e.where = e.where or where
        raise
    manifest = opened.manifest
    vouched = manifest.members()
    unexpected = set(opened.reader.names()) - set(vouched) - {MANIFEST, SIGNATURES}
    if unexpected:
        raise BundleError(f"members not listed in the manifest: {sorted(unexpected)}", where=where,
                          hint="a signed bundle carries nothing its manifest does not vouch for")
    kept: dict[str, bytes] = {}
    for name, (digest, size) in vouched.items():
        info = opened.reader.infos.get(name)
        if info is not None and info.size != size:
            raise ArtifactSizeError(f"{name} is {info.size} bytes; the manifest says {size}", where=where,
                                    hint="the artifact was replaced; rebuild or download the bundle again")
        h = hashlib.sha256()
        chunks = []
        for chunk in opened.reader.iter_member(name, size):
            h.update(chunk)
            if keep_members:
                chunks.append(chunk)
        if h.hexdigest() != digest:
            raise ArtifactHashError(f"{name} has sha256 {h.hexdigest()[:16]}…; the manifest says {digest[:16]}…",
                                    where=where, hint="the artifact was modified; do not use this bundle")
        if keep_members:
            kept[name] = b"".join(chunks)
    now = now or _utcnow()
    if manifest.expires <= now:
        raise ExpiredError(f"bundle {manifest.name} v{manifest.version} expired at {manifest.expires_at}",
                           where=where, hint="build or sign a fresh bundle with a later --expires")
    return VerifiedBundle(opened.path, manifest, signed_by, kept)


class BundleBuilder:
    """Collect artifacts, golden data and reports, then write a signed bundle.

    The builder fills in every ``sha256`` and ``size`` itself, so a manifest can
    never disagree with what it ships.
    """

    def __init__(
        self,
        name: str,
        version: int,
        *,
        io: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        expires_in: dt.timedelta = dt.timedelta(days=365),
        created_at: dt.datetime | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        created = created_at or _utcnow()
        self.name, self.version = name, version
        self.io, self.lineage = io or {}, lineage or {}
        self.created_at, self.expires_at = format_time(created), format_time(created + expires_in)
        self.extra = extra or {}
        self._members: dict[str, bytes] = {}
        self._artifacts: list[ArtifactEntry] = []
        self._golden: dict[str, Any] = {}
        self._reports: list[dict[str, Any]] = []

    def _add(self, path: str, data: bytes) -> None:
        check_member_path(path, path)
        if path in self._members or path in (MANIFEST, SIGNATURES):
            raise BundleError(f"member {path!r} added twice", where=path)
        self._members[path] = data

    def add_artifact(self, path: str, data: bytes, *, format: str, precision: str,
                     parity: dict[str, Any] | None = None, **extra: Any) -> ArtifactEntry:
        path = path if path.startswith("artifacts/") else f"artifacts/{path}"
        entry = ArtifactEntry(path, format, precision, sha256_hex(data), len(data), parity or {}, extra)
        self._add(path, data)
        self._artifacts.append(entry)
        return entry

    def set_golden(self, data: bytes, *, atol: float = 1e-4, rtol: float = 1e-3,
                   path: str = "golden/golden.npz", **extra: Any) -> None:
        self._add(path, data)
        self._golden = {**extra, "path": path, "sha256": sha256_hex(data), "size": len(data),
                        "atol": atol, "rtol": rtol}

    def add_report(self, name: str, data: bytes) -> None:
        path = f"reports/{name}"
        self._add(path, data)
        self._reports.append({"path": path, "sha256": sha256_hex(data), "size": len(data)})

    def manifest(self) -> Manifest:
        return Manifest(
            name=self.name, version=self.version, created_at=self.created_at, expires_at=self.expires_at,
            artifacts=list(self._artifacts), io=self.io, lineage=self.lineage, golden=self._golden,
            reports=list(self._reports), schema=SCHEMA, unrecognized=dict(self.extra),
        )

    def write(self, out: str | os.PathLike[str], keys: Iterable[SigningKey] = ()) -> Path:
        """Write the bundle to ``out`` atomically, signed by each of ``keys``."""
        doc = self.manifest().to_dict()
        return write_bundle_members(Path(out), doc, self._members, keys)


def write_bundle_members(out: Path, manifest_doc: dict[str, Any], members: dict[str, bytes],
                         keys: Iterable[SigningKey], signatures: Iterable[Signature] = ()) -> Path:
    message = canonical_bytes(manifest_doc)
    sigs = {s.keyid: s for s in signatures}
    for k in keys:
        sigs[k.keyid] = sign_bytes(k, message)
    sig_doc = {"signatures": [s.to_dict() for s in sigs.values()]}
    items = [(MANIFEST, message), (SIGNATURES, canonical_bytes(sig_doc)), *sorted(members.items())]
    return write_archive(out, items)


def sign_bundle(path: str | os.PathLike[str], key: SigningKey, *, out: str | os.PathLike[str] | None = None,
                limits: ArchiveLimits | None = None) -> Path:
    """Add ``key``'s signature to a bundle, keeping every other signature.

    The members are re-checked against the manifest first, so signing never
    vouches for an artifact that does not match it.

    Raises:
        BundleError, ArtifactSizeError, ArtifactHashError
    """
    opened = open_bundle(path, limits)
    manifest = opened.manifest
    members: dict[str, bytes] = {}
    for name, (digest, size) in manifest.members().items():
        data = opened.reader.read_member(name, size)
        if len(data) != size:
            raise ArtifactSizeError(f"{name} is {len(data)} bytes; the manifest says {size}", where=str(opened.path))
        if sha256_hex(data) != digest:
            raise ArtifactHashError(f"{name} does not match its manifest hash; refusing to sign",
                                    where=str(opened.path))
        members[name] = data
    return write_bundle_members(Path(out or path), opened.manifest_doc, members, [key], opened.signatures)
