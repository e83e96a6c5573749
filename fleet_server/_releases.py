"""Releases: a bundle becomes a release only after it verifies against the release trust file.

The upload is streamed to a temp file, verified with ``edgepack.verify_bundle``
(threshold signature, artifact hashes and sizes, expiry), and only then moved
into storage and recorded. Versions only grow per model name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from edgepack import (
    BundleError,
    ConfigError,
    EdgepackError,
    VerificationError,
    load_trust,
    verify_bundle,
)

from ._errors import ApiError, ConflictError, NotFoundError, PayloadTooLargeError
from ._http import NAME_RE
from ._models import Release

__all__ = ["UploadRejectedError", "get_release", "release_dict", "store_release", "upload_error"]


class UploadRejectedError(ApiError):
    """The uploaded file is not a valid, trusted, unexpired bundle."""

    status_code = 422


def upload_error(e: EdgepackError) -> UploadRejectedError:
    return UploadRejectedError(f"bundle refused: {e.message}", where=e.where and os.path.basename(e.where),
                               hint=e.hint, error=type(e).__name__)


def release_dict(r: Release) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "version": r.version, "kind": r.kind, "base_version": r.base_version,
            "sha256": r.sha256, "size": r.size, "signed_by": r.signed_by, "created_at": r.created_at,
            "expires_at": (r.manifest or {}).get("expires_at")}


def _spool(stream: IO[bytes], tmp_dir: Path, limit: int) -> tuple[Path, str, int]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".upload")
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as f:
        while chunk := stream.read(1 << 16):
            size += len(chunk)
            if size > limit:
                break
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return Path(name), h.hexdigest(), size


def store_release(fleet: Any, stream: IO[bytes]) -> dict[str, Any]:
    """Verify an uploaded bundle and record it as a release.

    Raises:
        UploadRejectedError: not a bundle, unsigned, badly signed, untrusted, tampered or expired.
        ConflictError: the name already has this or a later version.
        ConfigError: the server has no release trust file.
    """
    trust_path = fleet.config.trust_path
    try:
        trust = load_trust(trust_path)
    except EdgepackError as e:
        raise ConfigError(f"the server has no usable release trust file: {e.message}", where=str(trust_path),
                          hint="copy trust.json to the instance as release-trust.json or set EDGEPACK_RELEASE_TRUST") from e
    tmp, sha, size = _spool(stream, fleet.config.instance_dir / "tmp", fleet.config.max_upload_bytes)
    try:
        if size > fleet.config.max_upload_bytes:
            raise PayloadTooLargeError(f"the upload is over {fleet.config.max_upload_bytes} bytes")
        if size == 0:
            raise UploadRejectedError("the upload is empty", hint="send the .edgepack file as the request body")
        try:
            vb = verify_bundle(tmp, trust)
        except (BundleError, VerificationError) as e:
            raise upload_error(e) from e
        m = vb.manifest
        if not NAME_RE.match(m.name):
            raise UploadRejectedError(f"bundle name {m.name!r} is not a valid release name")
        with fleet.db.read() as s:
            latest = s.scalar(select(func.max(Release.version)).where(Release.name == m.name))
        if latest is not None and m.version <= latest:
            raise ConflictError(f"{m.name} already has version {latest}; v{m.version} is not newer",
                                where="manifest.version", hint="versions only grow: build with a higher version")
        # the hash in the key keeps two racing uploads of one version from overwriting each other
        key = f"releases/{m.name}/{m.name}-{m.version}-{sha[:16]}.edgepack"
        fleet.storage.put_file(key, tmp)
        try:
            with fleet.db.write() as s:
                row = Release(name=m.name, version=m.version, kind="bundle", sha256=sha, size=size,
                              storage_key=key, signed_by=list(vb.signed_by), manifest=m.to_dict())
                s.add(row)
                s.flush()
                out = release_dict(row)
        except IntegrityError as e:
            fleet.storage.delete(key)  # the row did not commit: do not keep an orphan artifact
            raise ConflictError(f"{m.name} v{m.version} was uploaded concurrently", where="manifest.version") from e
        return out
    finally:
        tmp.unlink(missing_ok=True)


def get_release(s: Any, ident: Any) -> Release:
    """A release by id, or by ``{"name": ..., "version": ...}``.

    Raises:
        NotFoundError: no such release.
    """
    row = None
    if isinstance(ident, int) and not isinstance(ident, bool):
        row = s.get(Release, ident)
    elif isinstance(ident, dict):
        row = s.scalar(select(Release).where(Release.name == ident.get("name"),
                                             Release.version == ident.get("version")))
    if row is None:
        raise NotFoundError(f"no release {ident!r}", where="release",
                            hint="pass a release id or {name, version} from GET /api/v1/admin/releases")
    return row
