"""TUF over HTTP: ``/tuf/metadata/<file>`` and ``/tuf/targets/<path>``.

Top-level metadata (root, timestamp, snapshot, targets, federated) is public:
TUF signatures, not secrecy, protect it. ``params/`` targets are model weights,
so, like bundles, they go only to a signed request from an enrolled device.
A group's delegated role (``group-<g>.json``) and its ``groups/<g>/`` targets
are served only to a signed request from a device of that group, so a device
reads only its own group's role. Targets support ``Range`` (resume) and a
strong ``ETag`` (the sha256) with ``If-None-Match``.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, request, stream_with_context
from sqlalchemy import select

from edgepack import PathTraversalError

from ._auth import authenticate_device
from ._errors import ApiError, ForbiddenError, NotFoundError
from ._http import fleet
from ._models import Group

__all__ = ["bp"]

bp = Blueprint("delivery", __name__, url_prefix="/tuf")
_GROUP_META = re.compile(r"^(?:\d{1,10}\.)?group-([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.json\Z")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")


class RangeNotSatisfiableError(ApiError):
    """The requested byte range lies outside the target (HTTP 416)."""

    status_code = 416


def _require_group_member(group: str) -> None:
    dev = authenticate_device(None)
    with fleet().db.read() as s:
        grp = s.scalar(select(Group).where(Group.name == group))
    if grp is None or grp.id != dev.group_id:
        raise ForbiddenError(f"device {dev.id} is not in group {group!r}",
                             hint="a device reads only its own group's role and targets")


@bp.get("/metadata/<name>")
def metadata(name: str):  # type: ignore[no-untyped-def]
    m = _GROUP_META.match(name)
    if m:
        _require_group_member(m.group(1))
    try:
        data = fleet().publisher.metadata(name)
    except FileNotFoundError:
        raise NotFoundError(f"no metadata file {name!r}", where="tuf/metadata") from None
    return Response(data, mimetype="application/json", headers={"Cache-Control": "no-cache"})


def _parse_range(header: str, size: int) -> tuple[int, int]:
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiableError(f"unsupported Range {header!r}", hint="send one range: bytes=START-[END]")
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiableError(f"range {header!r} is outside the {size}-byte target",
                                       hint="resume from an offset below the target's length")
    return start, end


@bp.get("/targets/<path:url_path>")
def targets(url_path: str):  # type: ignore[no-untyped-def]
    parts = url_path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise PathTraversalError(f"unsafe target path {url_path!r}", where="tuf/targets")
    if parts[0] == "groups" and len(parts) >= 2:
        _require_group_member(parts[1])
    elif parts[0] == "params":
        authenticate_device(None)  # weights are the owner's IP: enrolled devices only
    try:
        blob = fleet().publisher.target(url_path)
    except FileNotFoundError:
        raise NotFoundError(f"no target {url_path!r}", where="tuf/targets") from None
    headers = {"ETag": blob.etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
    if blob.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return Response(status=304, headers=headers)
    start, end, status = 0, blob.size - 1, 200
    rng = request.headers.get("Range")
    if rng and blob.size > 0 and (not request.headers.get("If-Range")
                                  or request.headers.get("If-Range") == blob.etag):
        start, end = _parse_range(rng, blob.size)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
    headers["Content-Length"] = str(end - start + 1 if blob.size else 0)
    body = blob.read_range(start, end) if blob.size else iter(())
    return Response(stream_with_context(body), status=status, headers=headers,
                    mimetype="application/octet-stream", direct_passthrough=True)
