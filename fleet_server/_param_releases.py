"""Parameter-update releases: a signed ``.epu`` (``edgepack._params``) for an existing release.

The update is verified before anything is stored: its envelope against the
parameter-update trust (the fleet's federated key, which is also the only key
TUF lets sign ``params/`` targets), its model and base version against the base
release, and, when the base is a bundle, by rebuilding every artifact it names
from the base bundle and checking the signed result hashes. An optional delta
encoding of the same update must rebuild the very same artifacts; the TUF
publisher serves it next to the full file only when it is smaller.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from edgepack import (
    BundleError,
    EdgepackError,
    Trust,
    UpdateError,
    VerificationError,
    load_signing_key,
    load_trust,
)
from edgepack._params import MAGIC, ParamUpdate, apply_param_update, parse_param_update

from ._errors import ConflictError, PayloadTooLargeError
from ._models import Release
from ._releases import UploadRejectedError, get_release, release_dict, upload_error

__all__ = ["param_trust", "store_param_update"]

UPDATE_TRUST_FILE = "update-trust.json"


def param_trust(fleet: Any) -> Trust:
    """The keys a parameter update must be signed by.

    ``INSTANCE/update-trust.json`` when present (the same file devices pin as
    their update trust), else the fleet's federated TUF key.

    Raises:
        ParamsDeliveryUnavailableError: neither exists (a fleet without TUF).
    """
    from ._publish import TUF_DIR, ParamsDeliveryUnavailableError

    inst = Path(fleet.config.instance_dir)
    if (inst / UPDATE_TRUST_FILE).exists():
        return load_trust(inst / UPDATE_TRUST_FILE)
    key = inst / TUF_DIR / "federated.key"
    if not key.exists():
        raise ParamsDeliveryUnavailableError(
            "this fleet has no TUF repository and no update-trust.json, so it cannot accept parameter updates",
            where="instance", hint="create the fleet with `edgepack fleet init --root-key ...`")
    return Trust.of([load_signing_key(key).public])


def _signers(data: bytes, trust: Trust) -> list[str]:
    # parse_param_update already checked the threshold; this only records who signed.
    (hlen,) = struct.unpack_from(">I", data, len(MAGIC))
    env = json.loads(data[len(MAGIC) + 4:len(MAGIC) + 4 + hlen])
    return sorted({s.get("keyid") for s in env.get("signatures", []) if s.get("keyid") in trust.keys})


def _base_artifacts(fleet: Any, base: Release) -> dict[str, bytes] | None:
    """The verified artifact bytes of a bundle release (None for any other kind)."""
    if base.kind != "bundle":
        return None
    from edgepack import verify_bundle

    tmp_dir = fleet.config.instance_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".base")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in fleet.storage.read_range(base.storage_key):
                f.write(chunk)
        vb = verify_bundle(name, load_trust(fleet.config.trust_path), keep_members=True)
        return dict(vb.members)
    finally:
        Path(name).unlink(missing_ok=True)


def _check(fleet: Any, data: bytes, trust: Trust, base: Release, arts: dict[str, bytes] | None,
           what: str) -> ParamUpdate:
    if len(data) > fleet.config.max_upload_bytes:
        raise PayloadTooLargeError(f"the {what} is over {fleet.config.max_upload_bytes} bytes")
    try:
        u, raw = parse_param_update(data, trust)
    except (UpdateError, VerificationError) as e:
        raise upload_error(e) from e
    if u.model != base.name or u.base_version != base.version:
        raise UploadRejectedError(f"the {what} is {u.model} v{u.version} on base v{u.base_version}; "
                                  f"release {base.id} is {base.name} v{base.version}", where=what,
                                  hint="upload it under the release it was encoded against")
    if arts is not None:
        try:
            apply_param_update(u, raw, arts)
        except (UpdateError, VerificationError, BundleError) as e:
            raise upload_error(e) from e
    return u


def _results(u: ParamUpdate) -> dict[str, Any]:
    return {p: a.get("result_sha256") for p, a in u.artifacts.items()}


def _put(fleet: Any, key: str, data: bytes) -> None:
    tmp_dir = fleet.config.instance_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".epu")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fleet.storage.put_file(key, Path(name))
    finally:
        Path(name).unlink(missing_ok=True)


def store_param_update(fleet: Any, base_release_id: int, update: bytes, delta: bytes | None) -> dict[str, Any]:
    """Verify a parameter update (and optional delta) for ``base_release_id`` and record it as a release.

    Raises:
        NotFoundError: no such base release.
        UploadRejectedError: not a valid, trusted, unexpired update for that base, or a delta that does
            not rebuild the same artifacts as the update.
        ConflictError: the model already has this or a later version.
        PayloadTooLargeError: over the upload limit.
        ParamsDeliveryUnavailableError: the fleet has no parameter-update trust.
    """
    if not update:
        raise UploadRejectedError("the upload is empty", hint="send the .epu file as the request body "
                                  "(or as the multipart field 'update')")
    trust = param_trust(fleet)
    with fleet.db.read() as s:
        base = get_release(s, base_release_id)
        s.expunge(base)
    try:
        arts = _base_artifacts(fleet, base)
    except EdgepackError as e:
        raise UploadRejectedError(f"the base release no longer verifies: {e.message}", where="release",
                                  hint="upload a new base bundle first") from e
    u = _check(fleet, update, trust, base, arts, "update")
    d = _check(fleet, delta, trust, base, arts, "delta") if delta else None
    if d is not None and (d.version != u.version or _results(d) != _results(u)):
        raise UploadRejectedError(f"the delta (v{d.version}) does not rebuild the same artifacts as the update "
                                  f"(v{u.version})", where="delta", hint="encode both from the same new weights")
    with fleet.db.read() as s:
        latest = s.scalar(select(func.max(Release.version)).where(Release.name == u.model))
    if latest is not None and u.version <= latest:
        raise ConflictError(f"{u.model} already has version {latest}; v{u.version} is not newer",
                            where="update.version", hint="versions only grow: encode the update with a higher version")
    sha = hashlib.sha256(update).hexdigest()
    key = f"releases/{u.model}/{u.model}-{u.version}-{sha[:16]}.epu"
    delivery: dict[str, Any] = {"delta": None}
    keys = [key]
    _put(fleet, key, update)
    if delta:
        dsha = hashlib.sha256(delta).hexdigest()
        dkey = f"releases/{u.model}/{u.model}-{u.version}.from-{u.base_version}-{dsha[:16]}.epu"
        _put(fleet, dkey, delta)
        keys.append(dkey)
        delivery["delta"] = {"base_version": u.base_version, "storage_key": dkey, "sha256": dsha,
                             "size": len(delta), "encoding": d.encoding if d else None}
    try:
        with fleet.db.write() as s:
            row = Release(name=u.model, version=u.version, kind="params", base_version=u.base_version, sha256=sha,
                          size=len(update), storage_key=key, signed_by=_signers(update, trust),
                          manifest={**u.to_dict(), "delivery": delivery})
            s.add(row)
            s.flush()
            out = release_dict(row)
    except IntegrityError as e:
        for k in keys:
            fleet.storage.delete(k)
        raise ConflictError(f"{u.model} v{u.version} was uploaded concurrently", where="update.version") from e
    dd = delivery["delta"]
    out["delta"] = {"base_version": dd["base_version"], "sha256": dd["sha256"], "size": dd["size"]} if dd else None
    return out
