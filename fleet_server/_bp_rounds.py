"""The rounds API: admin create/list/status/close, and the device's round and update upload.

See docs/federated.md ("Rounds"). Device routes are signed requests; the update
body is the binary signed device update (``edgepack.federated.encode_update``).
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from ._auth import authenticate_device, require_admin
from ._errors import NotFoundError
from ._http import fleet, json_body, opt
from ._models_rounds import FLRound
from ._rounds import close_round, create_round, device_round, round_dict, submit_update

__all__ = ["bp"]

bp = Blueprint("rounds", __name__, url_prefix="/api/v1")


@bp.post("/admin/rounds")
@require_admin
def create():  # type: ignore[no-untyped-def]
    doc = json_body()
    out = create_round(
        fleet(), model=opt(doc, "model", str, required=True), base_version=opt(doc, "base_version", int, required=True),
        params=opt(doc, "params", list, required=True), artifact=opt(doc, "artifact", str),
        fraction=float(opt(doc, "fraction", (int, float), 1.0)), min_clients=opt(doc, "min_clients", int, 1),
        quorum=opt(doc, "quorum", int), deadline_s=float(opt(doc, "deadline_s", (int, float), 3600)),
        eligibility=opt(doc, "eligibility", dict, {"charging": True, "idle": True, "wifi": True}),
        codecs=opt(doc, "codecs", list, ["none"]), policy=opt(doc, "policy", dict, {}),
        group=opt(doc, "group", str), evaluation=opt(doc, "evaluation", dict), rollout=opt(doc, "rollout", dict))
    return jsonify(out), 201


@bp.get("/admin/rounds")
@require_admin
def list_rounds():  # type: ignore[no-untyped-def]
    model = request.args.get("model")
    with fleet().db.read() as s:
        q = select(FLRound).order_by(FLRound.created_at)
        if model:
            q = q.where(FLRound.model == model)
        return jsonify([round_dict(s, r, updates=False) for r in s.scalars(q).all()])


@bp.get("/admin/rounds/<round_id>")
@require_admin
def status(round_id: str):  # type: ignore[no-untyped-def]
    f = fleet()
    close_round(f, round_id)  # a round past its deadline closes on first look, even without the ticker
    with f.db.read() as s:
        r = s.get(FLRound, round_id)
        if r is None:
            raise NotFoundError(f"no round {round_id!r}", where="round_id")
        return jsonify(round_dict(s, r))


@bp.post("/admin/rounds/<round_id>/close")
@require_admin
def close(round_id: str):  # type: ignore[no-untyped-def]
    return jsonify(close_round(fleet(), round_id, force=True))


@bp.get("/devices/<device_id>/round")
def device_get(device_id: str):  # type: ignore[no-untyped-def]
    dev = authenticate_device(device_id)
    return jsonify({"round": device_round(fleet(), dev.id)})


@bp.post("/devices/<device_id>/rounds/<round_id>/update")
def device_update(device_id: str, round_id: str):  # type: ignore[no-untyped-def]
    dev = authenticate_device(device_id)
    code, body = submit_update(fleet(), dev, round_id, request.get_data(cache=True), time.time())
    return jsonify(body), code
