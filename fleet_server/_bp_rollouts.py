"""The admin API for rollouts: start one, read it, and pause/resume/abort/rollback it."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select

from ._auth import require_admin
from ._errors import BadRequestError, NotFoundError
from ._http import check_name, fleet, json_body, opt
from ._models import Group, Rollout
from ._publish import publish_release
from ._releases import get_release
from ._rollouts import act, create_rollout, rollout_dict, tick, tick_all

__all__ = ["bp"]

bp = Blueprint("rollouts", __name__, url_prefix="/api/v1/admin/rollouts")


@bp.post("")
@require_admin
def start():  # type: ignore[no-untyped-def]
    doc = json_body()
    ident = doc.get("release")
    group_name = check_name(opt(doc, "group", str, required=True), "group")
    f = fleet()
    with f.db.read() as s:
        rel = get_release(s, ident)
        grp = s.scalar(select(Group).where(Group.name == group_name))
        if grp is None:
            raise NotFoundError(f"no group {group_name!r}", where="group")
    # publish first: if TUF signing fails, no device is ever assigned a target it cannot fetch
    publish_release(f.publisher, group_name, rel)
    with f.db.write() as s:
        r = create_rollout(f, s, s.get(type(rel), rel.id), s.get(Group, grp.id), waves=doc.get("waves"),
                           gates=doc.get("gates"), timing=doc.get("timing"), actor=g.admin)
        s.flush()
        rid = r.id
    tick(f, rid)  # a group small enough may already be ready, or empty
    with f.db.read() as s:
        return jsonify(rollout_dict(s, s.get(Rollout, rid), events=True)), 201


@bp.get("")
@require_admin
def list_rollouts():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        return jsonify({"rollouts": [rollout_dict(s, r) for r in
                                     s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(200))]})


@bp.get("/<int:rollout_id>")
@require_admin
def show(rollout_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise NotFoundError(f"no rollout {rollout_id}")
        return jsonify(rollout_dict(s, r, events=True))


@bp.post("/<int:rollout_id>/<action>")
@require_admin
def action(rollout_id: int, action: str):  # type: ignore[no-untyped-def]
    doc = json_body() if request.get_data(cache=True) else {}
    reason = opt(doc, "reason", str, "")
    if len(reason) > 1000:
        raise BadRequestError("reason is longer than 1000 characters", where="reason")
    return jsonify(act(fleet(), rollout_id, action, g.admin, reason))


@bp.post("/tick")
@require_admin
def tick_now():  # type: ignore[no-untyped-def]
    """Evaluate every active rollout now (the background ticker does this on a timer)."""
    return jsonify({"rollouts": {str(k): v for k, v in tick_all(fleet()).items()}})
