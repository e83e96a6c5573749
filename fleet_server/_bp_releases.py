"""The admin API for releases: upload (verified against the release trust file), parameter updates, listing."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from ._auth import require_admin
from ._http import fleet
from ._models import Release
from ._param_releases import store_param_update
from ._releases import get_release, release_dict, store_release

__all__ = ["bp"]

bp = Blueprint("releases", __name__, url_prefix="/api/v1/admin/releases")


@bp.post("")
@require_admin
def upload():  # type: ignore[no-untyped-def]
    # The body is the .edgepack file itself, streamed to disk (never held in memory whole).
    return jsonify(store_release(fleet(), request.stream)), 201


@bp.get("")
@require_admin
def list_releases():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        return jsonify({"releases": [release_dict(r) for r in s.scalars(select(Release).order_by(Release.id))]})


@bp.get("/<int:release_id>")
@require_admin
def show(release_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        return jsonify(release_dict(get_release(s, release_id)))


@bp.post("/<int:release_id>/params")
@require_admin
def upload_params(release_id: int):  # type: ignore[no-untyped-def]
    # Either the .epu itself as the body, or multipart fields "update" and (optional) "delta".
    if request.mimetype == "multipart/form-data":
        full, delta = request.files.get("update"), request.files.get("delta")
        update = full.read() if full else b""
        delta_bytes = delta.read() if delta else None
    else:
        update, delta_bytes = request.get_data(cache=False), None
    return jsonify(store_param_update(fleet(), release_id, update, delta_bytes or None)), 201
