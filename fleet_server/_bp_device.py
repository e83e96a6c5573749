"""The device API: enrollment, assignment, reports and heartbeat (see docs/fleet-api.md).

Every route but enrollment is a signed request (``_auth.authenticate_device``),
and a device can only name itself in the URL.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import Blueprint, jsonify
from sqlalchemy import select, update

from . import _ratelimit as ratelimit
from ._audit import record
from ._auth import authenticate_device, hash_token
from ._checkin import Heartbeat, heartbeat_from_doc
from ._errors import AuthError, BadRequestError, ConflictError
from ._http import check_name, fleet, json_body, opt, tags_of
from ._models import Alert, Device, EnrollmentToken, Group, Release, Report, Rollout
from ._publish import release_target

__all__ = ["bp"]

bp = Blueprint("device", __name__, url_prefix="/api/v1")
REPORT_KINDS = ("install", "health", "telemetry", "crash", "status")
_MAX_DATA_KEYS = 64


@bp.post("/enroll")
def enroll():  # type: ignore[no-untyped-def]
    ratelimit.check(fleet(), "enroll")
    try:
        return _enroll(json_body())
    except AuthError:
        ratelimit.record_failure(fleet(), "enroll")  # a wrong token is a guess; counted per client IP
        raise


def _enroll(doc: dict[str, Any]):  # type: ignore[no-untyped-def]
    token = opt(doc, "token", str, required=True)
    public_key = opt(doc, "public_key", str, required=True).lower()
    if len(public_key) != 64 or any(c not in "0123456789abcdef" for c in public_key):
        raise BadRequestError("public_key must be 64 hex digits (a raw Ed25519 public key)", where="public_key")
    name = check_name(opt(doc, "name", str, "device"), "name")
    tags = tags_of(doc.get("tags"))
    f = fleet()
    now = time.time()
    device_id = "d-" + secrets.token_hex(8)
    with f.db.write() as s:
        # one conditional UPDATE: of two racing enrollments with the same token, exactly one wins
        used = s.execute(update(EnrollmentToken)
                         .where(EnrollmentToken.token_hash == hash_token(token), EnrollmentToken.used_at.is_(None),
                                EnrollmentToken.expires_at > now)
                         .values(used_at=now, used_by=device_id))
        if used.rowcount != 1:
            raise AuthError("the enrollment token is unknown, used or expired", where="token",
                            hint="ask an admin for a new one (POST /api/v1/admin/enrollment-tokens)")
        if s.scalar(select(Device.id).where(Device.public_key == public_key)) is not None:
            raise ConflictError("this public key is already enrolled", where="public_key",
                                hint="generate a fresh identity key for each device")
        et = s.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token)))
        group = s.get(Group, et.group_id)
        s.add(Device(id=device_id, name=name, public_key=public_key, group_id=group.id,
                     tags={**et.tags, **tags}, desired_release_id=group.current_release_id, enrolled_at=now))
        record(s, f"device:{device_id}", "device.enroll", f"device:{device_id}", f"enrolled into group {group.name}",
               {"group": group.name, "name": name, "enrollment_token_id": et.id}, at=now)
    return jsonify({"device_id": device_id, "group": group.name, "poll_after_s": f.config.poll_after_s}), 201


@bp.get("/devices/<device_id>/assignment")
def assignment(device_id: str):  # type: ignore[no-untyped-def]
    dev = authenticate_device(device_id)  # read with the device's group and desired release, in its check-in
    rel = dev.release
    if rel is None:
        return jsonify({"release": None, "rollout_id": None})
    return jsonify({
        "release": {"name": rel.name, "version": rel.version, "target": release_target(dev.group_name, rel),
                    "sha256": rel.sha256, "size": rel.size, "kind": rel.kind, "base_version": rel.base_version},
        "rollout_id": dev.rollout_id,
    })


def _report_fields(doc: dict[str, Any]) -> tuple[str, int | None, bool, str | None, dict[str, Any]]:
    kind = opt(doc, "kind", str, required=True)
    if kind not in REPORT_KINDS:
        raise BadRequestError(f"unknown report kind {kind!r}", where="kind", hint=f"one of {list(REPORT_KINDS)}")
    version = opt(doc, "release_version", int)
    ok = opt(doc, "ok", bool, required=True)
    reason = opt(doc, "reason", str)
    data = opt(doc, "data", dict, {})
    if len(data) > _MAX_DATA_KEYS:
        raise BadRequestError(f"data has more than {_MAX_DATA_KEYS} keys", where="data")
    if reason is not None and len(reason) > 2000:
        raise BadRequestError("reason is longer than 2000 characters", where="reason")
    return kind, version, ok, reason, data


@bp.post("/devices/<device_id>/reports")
def report(device_id: str):  # type: ignore[no-untyped-def]
    dev = authenticate_device(device_id)
    kind, version, ok, reason, data = _report_fields(json_body())
    f = fleet()
    rollout_id = None
    with f.db.write() as s:
        d = s.get(Device, dev.id)
        if d.rollout_id is not None:
            r = s.get(Rollout, d.rollout_id)
            rel = s.get(Release, r.release_id)
            if version == rel.version:
                rollout_id = r.id if r.state in ("running", "paused") else None
                wave = d.wave
        s.add(Report(device_id=d.id, rollout_id=rollout_id, wave=wave if rollout_id else None,
                     release_version=version, kind=kind, ok=ok, reason=reason, data=data))
        if kind == "install" and ok and version is not None:
            d.active_version = version
        if kind == "crash" or (not ok and kind in ("install", "health")):
            s.add(Alert(level="warning", kind=f"device-{kind}", device_id=d.id, rollout_id=rollout_id,
                        message=f"device {d.name} ({d.id}) reported {kind} "
                                f"{'failure' if not ok else ''} on v{version}: {reason or 'no reason given'}"))
    # the report is committed before we answer 202: an accepted report survives a crash
    f.metrics.reports.labels(kind).inc()
    if rollout_id is not None:
        f.tick_soon(rollout_id, urgent=not ok or kind == "crash")
    return jsonify({"accepted": True}), 202


def _heartbeat_fields() -> Heartbeat:
    return heartbeat_from_doc(json_body())


@bp.post("/devices/<device_id>/heartbeat")
def heartbeat(device_id: str):  # type: ignore[no-untyped-def]
    # Most heartbeats are answered by _fastpath before Flask; this route answers the rest (and
    # every error). The body is parsed first so its fields are written in the check-in's own
    # transaction; a malformed body is still refused only after authentication (401 before 400).
    try:
        hb, bad = _heartbeat_fields(), None
    except BadRequestError as e:
        hb, bad = None, e
    authenticate_device(device_id, heartbeat=hb)
    if bad is not None:
        raise bad
    return jsonify({"poll_after_s": fleet().config.poll_after_s})
