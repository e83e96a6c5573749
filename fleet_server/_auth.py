"""Who is asking: admin tokens (hashed), and signed device requests.

Admin tokens and enrollment tokens are 256-bit random strings; only their
sha256 is stored, so a database leak does not leak credentials. Device
requests are verified with ``edgepack._device_auth`` against the key the device
registered at enrollment (cached per worker), and their nonces are recorded
in the same single transaction that re-checks the device is active and marks
it as seen (``_checkin``: the hot path, on the DBAPI connection).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request, session
from sqlalchemy import select

from edgepack import PublicKey
from edgepack._device_auth import parse_headers, verify_request

from . import _ratelimit as ratelimit
from ._checkin import DeviceRow, Heartbeat
from ._errors import AuthError, ForbiddenError, UnknownDeviceError
from ._http import fleet
from ._models import AdminToken, Device

__all__ = ["authenticate_device", "hash_token", "new_token", "require_admin", "signed_path"]

F = TypeVar("F", bound=Callable[..., Any])


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def admin_for_token(token: str) -> AdminToken | None:
    """The live admin token row for ``token``, or None; records its use."""
    if not token or len(token) > 256:
        return None
    digest = hash_token(token)
    with fleet().db.write() as s:
        row = s.scalar(select(AdminToken).where(AdminToken.token_hash == digest))
        # compare_digest keeps the final check constant-time even though the lookup is by hash
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
            return None
        row.last_used_at = time.time()
        return row


def require_admin(fn: F) -> F:
    """Allow the request only with ``Authorization: Bearer <admin token>``.

    Raises:
        AuthError: without a valid, unrevoked admin token.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        row = None
        if scheme.lower() == "bearer":  # only a presented token is a guess worth counting (_ratelimit)
            ratelimit.check(fleet(), "admin")
            row = admin_for_token(token.strip())
            if row is None:
                ratelimit.record_failure(fleet(), "admin")
        if row is None:
            raise AuthError("a valid admin token is required", where="Authorization",
                            hint="send 'Authorization: Bearer <token>'; 'edgepack fleet init' prints the first one")
        g.admin, g.admin_id = row.name, row.id
        return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def start_dashboard_session(row: AdminToken, token: str, now: float) -> None:
    """Put a fresh login into the (signed) session: the token's row id and hash, and the times that
    ``dashboard_session_expiry`` checks."""
    session.clear()
    session["admin_id"], session["admin_hash"] = row.id, hash_token(token)
    session["issued_at"] = session["seen_at"] = round(now, 3)


def _span(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def dashboard_session_expiry(now: float) -> str | None:
    """Why the logged-in dashboard session has expired, or None while it is live (or not logged in).

    The signed cookie carries its login time and last-seen time; the server, not the cookie's own
    expiry, decides: idle longer than ``dashboard_session_idle_s`` or older than
    ``dashboard_session_max_s`` ends it. A session without the times predates them and ends too.
    """
    if session.get("admin_id") is None:
        return None
    cfg = fleet().config
    issued, seen = session.get("issued_at"), session.get("seen_at")
    if not isinstance(issued, (int, float)) or not isinstance(seen, (int, float)):
        return "Your dashboard session has expired. Log in again."
    if now - issued > cfg.dashboard_session_max_s:
        return (f"Your dashboard session has expired: it reached its limit of "
                f"{_span(cfg.dashboard_session_max_s)} after login. Log in again.")
    if now - seen > cfg.dashboard_session_idle_s:
        return (f"Your dashboard session has expired after {_span(cfg.dashboard_session_idle_s)} "
                f"without activity. Log in again.")
    return None


def dashboard_admin() -> str | None:
    """The admin name of a logged-in, unexpired dashboard session, re-checked against the database."""
    token_id = session.get("admin_id")
    if token_id is None or dashboard_session_expiry(time.time()) is not None:
        return None
    with fleet().db.read() as s:
        row = s.get(AdminToken, token_id)
        if row is None or row.revoked_at is not None or row.token_hash != session.get("admin_hash"):
            return None
        return row.name


def signed_path() -> str:
    """The request target as the client sent it (path plus '?query'), which is what devices sign."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        return raw
    qs = request.query_string.decode("latin-1")
    return request.path + (f"?{qs}" if qs else "")


def authenticate_device(device_id: str | None, heartbeat: Heartbeat | None = None) -> DeviceRow:
    """Verify the signed request and return its device.

    The key comes from the per-worker cache (``_checkin``), so the signature and
    clock are checked before any transaction; then one transaction records the
    nonce, re-checks that the device is active (revocation is never cached) and
    updates last-seen (and ``heartbeat``'s fields, if given and changed).

    Args:
        device_id: the device named in the URL; the signer must be that device.
        heartbeat: a heartbeat's fields, written in the same transaction as the nonce.

    Raises:
        MissingAuthError, RequestSignatureError, ClockSkewError, ReplayError: from the signature check.
        UnknownDeviceError: the signer is not an active enrolled device.
        ForbiddenError: the signer is another device than the one in the URL.
    """
    f = fleet()
    h = parse_headers(request.headers)
    body = request.get_data(cache=True)
    now = time.time()
    if device_id is not None and device_id != h.device_id:
        with f.db.read() as s:
            dev = s.execute(select(Device.public_key, Device.status).where(Device.id == h.device_id)).first()
        if dev is None or dev.status != "active":
            raise UnknownDeviceError(f"unknown or revoked device {h.device_id!r}", where="X-Edgepack-Device",
                                     hint="enroll the device with a fresh enrollment token")
        # check the signature first so a forger learns nothing; then refuse the cross-device access
        verify_request(PublicKey(bytes.fromhex(dev.public_key)), request.headers, request.method, signed_path(),
                       body, now, lambda n, t: False, f.config.max_skew_s)
        raise ForbiddenError("a device may read and write only its own resources",
                             where=f"device {device_id}", hint="use your own device id in the URL")
    key = f.checkins.public_key(h.device_id)
    found: list[DeviceRow] = []

    def seen(nonce: str, ts: int) -> bool:
        row = f.checkins.check_in(h.device_id, key, nonce, ts, now, heartbeat)
        if row is None:
            return True
        found.append(row)
        return False

    verify_request(key, request.headers, request.method, signed_path(), body, now, seen, f.config.max_skew_s)
    g.device_id = h.device_id
    return found[0]
