"""The admin API for tokens, enrollment tokens, groups, devices and alerts (Bearer admin token)."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, g, jsonify, request
from sqlalchemy import func, select

from ._auth import hash_token, new_token, require_admin
from ._errors import BadRequestError, ConflictError, NotFoundError
from ._http import check_name, fleet, json_body, opt, small_uint, tags_of
from ._models import AdminToken, Alert, Device, EnrollmentToken, Group, Release

__all__ = ["bp", "create_admin_token", "create_enrollment_token", "device_dict", "ensure_group"]

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


def create_admin_token(db: Any, name: str) -> str:
    """Create an admin token; return it (the only time it exists in clear)."""
    token = new_token("epa")
    with db.write() as s:
        s.add(AdminToken(name=name, token_hash=hash_token(token)))
    return token


def ensure_group(s: Any, name: str) -> Group:
    group = s.scalar(select(Group).where(Group.name == name))
    if group is None:
        group = Group(name=name)
        s.add(group)
        s.flush()
    return group


def create_enrollment_token(fleet_: Any, group: str, tags: dict[str, str], ttl_s: float) -> dict[str, Any]:
    token = new_token("epe")
    expires = time.time() + ttl_s
    with fleet_.db.write() as s:
        grp = ensure_group(s, group)
        s.add(EnrollmentToken(token_hash=hash_token(token), group_id=grp.id, tags=tags, expires_at=expires))
    fleet_.publisher.ensure_group(group)
    return {"token": token, "group": group, "expires_at": expires}


def device_dict(s: Any, d: Device, online_after_s: float) -> dict[str, Any]:
    group = s.get(Group, d.group_id)
    desired = s.get(Release, d.desired_release_id) if d.desired_release_id else None
    return {"id": d.id, "name": d.name, "group": group.name, "tags": d.tags, "status": d.status,
            "public_key": d.public_key, "enrolled_at": d.enrolled_at, "last_seen_at": d.last_seen_at,
            "online": bool(d.last_seen_at and d.last_seen_at >= time.time() - online_after_s),
            "active_version": d.active_version, "state": d.state, "rollout_id": d.rollout_id,
            "desired": {"name": desired.name, "version": desired.version} if desired else None}


@bp.post("/tokens")
@require_admin
def new_admin_token():  # type: ignore[no-untyped-def]
    name = check_name(opt(json_body(), "name", str, required=True), "name")
    return jsonify({"name": name, "token": create_admin_token(fleet().db, name)}), 201


@bp.post("/tokens/<int:token_id>/revoke")
@require_admin
def revoke_admin_token(token_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.write() as s:
        row = s.get(AdminToken, token_id)
        if row is None:
            raise NotFoundError(f"no admin token {token_id}")
        live = s.scalar(select(func.count()).select_from(AdminToken).where(AdminToken.revoked_at.is_(None)))
        if row.revoked_at is None and live <= 1:
            raise ConflictError("cannot revoke the last admin token", hint="create another one first")
        row.revoked_at = row.revoked_at or time.time()
    return jsonify({"id": token_id, "revoked": True})


@bp.post("/enrollment-tokens")
@require_admin
def new_enrollment_token():  # type: ignore[no-untyped-def]
    doc = json_body()
    group = check_name(opt(doc, "group", str, "default"), "group")
    ttl = opt(doc, "expires_in_s", (int, float), 24 * 3600)
    if not 0 < ttl <= 30 * 86400:
        raise BadRequestError("expires_in_s must be between 1 s and 30 days", where="expires_in_s")
    return jsonify(create_enrollment_token(fleet(), group, tags_of(doc.get("tags")), ttl)), 201


@bp.get("/groups")
@require_admin
def groups():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        counts = dict(s.execute(select(Device.group_id, func.count()).group_by(Device.group_id)).all())
        out = []
        for grp in s.scalars(select(Group).order_by(Group.name)):
            cur = s.get(Release, grp.current_release_id) if grp.current_release_id else None
            out.append({"id": grp.id, "name": grp.name, "devices": counts.get(grp.id, 0),
                        "current_release": {"name": cur.name, "version": cur.version} if cur else None})
    return jsonify({"groups": out})


@bp.post("/groups")
@require_admin
def create_group():  # type: ignore[no-untyped-def]
    name = check_name(opt(json_body(), "name", str, required=True), "name")
    with fleet().db.write() as s:
        if s.scalar(select(Group.id).where(Group.name == name)) is not None:
            raise ConflictError(f"group {name!r} exists")
        grp = ensure_group(s, name)
        gid = grp.id
    fleet().publisher.ensure_group(name)
    return jsonify({"id": gid, "name": name}), 201


@bp.get("/devices")
@require_admin
def devices():  # type: ignore[no-untyped-def]
    f = fleet()
    q = select(Device).order_by(Device.enrolled_at)
    if request.args.get("group"):
        q = q.join(Group, Group.id == Device.group_id).where(Group.name == request.args["group"])
    tag = request.args.get("tag")
    asked = small_uint(request.args.get("limit"))
    limit = min(1000 if asked is None else asked, 10000)
    with f.db.read() as s:
        rows = list(s.scalars(q.limit(limit if not tag else 100000)))
        if tag:  # tags are JSON: filter here so SQLite and PostgreSQL behave the same
            k, _, v = tag.partition(":")
            rows = [d for d in rows if (d.tags or {}).get(k) == v][:limit]
        out = [device_dict(s, d, f.config.online_after_s) for d in rows]
    return jsonify({"devices": out})


@bp.get("/devices/<device_id>")
@require_admin
def device(device_id: str):  # type: ignore[no-untyped-def]
    f = fleet()
    with f.db.read() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFoundError(f"no device {device_id!r}")
        return jsonify(device_dict(s, d, f.config.online_after_s))


@bp.patch("/devices/<device_id>")
@require_admin
def patch_device(device_id: str):  # type: ignore[no-untyped-def]
    doc = json_body()
    f = fleet()
    with f.db.write() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFoundError(f"no device {device_id!r}")
        if "tags" in doc:
            d.tags = tags_of(doc["tags"])
        if "group" in doc:
            grp = ensure_group(s, check_name(doc["group"], "group"))
            if grp.id != d.group_id:
                d.group_id, d.rollout_id, d.wave = grp.id, None, None
                d.desired_release_id = grp.current_release_id
        if doc.get("status") is not None:
            if doc["status"] not in ("active", "revoked"):
                raise BadRequestError("status must be 'active' or 'revoked'", where="status")
            d.status = doc["status"]
        s.flush()
        return jsonify(device_dict(s, d, f.config.online_after_s))


@bp.get("/alerts")
@require_admin
def alerts():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        rows = s.scalars(select(Alert).order_by(Alert.id.desc()).limit(200))
        return jsonify({"alerts": [{"id": a.id, "at": a.at, "level": a.level, "kind": a.kind, "message": a.message,
                                    "rollout_id": a.rollout_id, "device_id": a.device_id,
                                    "acknowledged": a.acknowledged_at is not None} for a in rows]})


@bp.post("/alerts/<int:alert_id>/ack")
@require_admin
def ack_alert(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.write() as s:
        a = s.get(Alert, alert_id)
        if a is None:
            raise NotFoundError(f"no alert {alert_id}")
        a.acknowledged_at = a.acknowledged_at or time.time()
    return jsonify({"id": alert_id, "acknowledged": True, "by": g.admin})


@bp.get("/audit")
@require_admin
def audit():  # type: ignore[no-untyped-def]
    """The audit log, newest first: ``?actor=&action=&page=&per_page=`` (at most 500 a page)."""
    from ._audit import entry_dict, page

    a = request.args
    page_no = small_uint(a.get("page")) or 1
    per_page = min(small_uint(a.get("per_page")) or 100, 500)
    with fleet().db.read() as s:
        rows, total = page(s, actor=a.get("actor") or None, action=a.get("action") or None,
                           page_no=max(1, min(page_no, 1_000_000)), per_page=max(1, per_page))
        return jsonify({"total": total, "page": page_no, "entries": [entry_dict(e) for e in rows]})
