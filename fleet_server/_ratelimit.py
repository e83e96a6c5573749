"""Rate limits on credential guessing: failed enrollments, dashboard logins and admin-token checks.

A fixed window per (scope, client IP), counted in the ``rate_limits`` table so
every gunicorn worker (and every server on one PostgreSQL) shares one count;
process memory would give each worker its own allowance. Only *failures*
count: a factory enrolling 10,000 devices from one address with valid tokens
is never slowed down, while a client guessing tokens is refused (429, with
``Retry-After``) for the rest of the window once it reaches the limit, even if
a later guess would be right, so a lockout leaks nothing.

The client is ``request.remote_addr``: behind a reverse proxy, make the proxy
set it (for example werkzeug's ``ProxyFix``), or every client shares one count.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from flask import request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from ._errors import RateLimitedError
from ._models_audit import RateLimit

__all__ = ["SCOPES", "Limit", "blocked_for", "check", "client_ip", "record_failure"]

#: scope -> the FleetConfig field holding its limit (a registry: a new scope needs a config field and a test)
SCOPES = {
    "enroll": "enroll_failure_limit",
    "login": "login_failure_limit",
    "admin": "admin_auth_failure_limit",
}


@dataclass(frozen=True)
class Limit:
    max_failures: int
    window_s: float


def _limit(fleet: object, scope: str) -> Limit:
    cfg = fleet.config  # type: ignore[attr-defined]
    return Limit(getattr(cfg, SCOPES[scope]), cfg.rate_limit_window_s)


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _key(scope: str, who: str) -> str:
    return f"{scope}:{who}"[:200]


def blocked_for(fleet: object, scope: str, who: str, now: float | None = None) -> int:
    """Seconds until ``who`` may try ``scope`` again (0: not blocked)."""
    lim = _limit(fleet, scope)
    if lim.max_failures == 0:
        return 0
    now = time.time() if now is None else now
    with fleet.db.read() as s:  # type: ignore[attr-defined]
        row = s.execute(select(RateLimit.window_start, RateLimit.count)
                        .where(RateLimit.key == _key(scope, who))).first()
    if row is None or row.count < lim.max_failures or now >= row.window_start + lim.window_s:
        return 0
    return max(1, math.ceil(row.window_start + lim.window_s - now))


def check(fleet: object, scope: str, who: str | None = None) -> None:
    """Refuse the request if its client is over the limit for ``scope``.

    Raises:
        RateLimitedError: with the seconds left in the window.
    """
    who = who or client_ip()
    wait = blocked_for(fleet, scope, who)
    if wait:
        raise RateLimitedError(f"too many failed {scope} attempts from this address; try again in {wait} s",
                               retry_after=wait, where=scope,
                               hint="check the credential; the limit resets at the end of the window")


def record_failure(fleet: object, scope: str, who: str | None = None, now: float | None = None) -> int:
    """Count one failure of ``who`` in ``scope``; returns the count in the current window."""
    from ._audit import record

    lim = _limit(fleet, scope)
    if lim.max_failures == 0:
        return 0
    who = who or client_ip()
    key = _key(scope, who)
    now = time.time() if now is None else now
    for attempt in range(2):
        try:
            with fleet.db.write() as s:  # type: ignore[attr-defined]
                row = s.get(RateLimit, key, with_for_update=True)
                if row is None:
                    s.add(RateLimit(key=key, window_start=now, count=1))
                    count = 1
                elif now >= row.window_start + lim.window_s:
                    row.window_start, row.count = now, 1
                    count = 1
                else:
                    row.count += 1
                    count = row.count
                if count == lim.max_failures:  # the moment a client is locked out is worth an audit row
                    record(s, "system", "ratelimit.block", key, f"{count} failed {scope} attempts in "
                           f"{lim.window_s:.0f} s", {"scope": scope, "client": who, "window_s": lim.window_s})
                if random.random() < 0.01:  # amortised clean-up of windows long over
                    s.execute(delete(RateLimit).where(RateLimit.window_start < now - 2 * lim.window_s))
            return count
        except IntegrityError:  # two workers inserted the first failure at once: the row exists now
            if attempt:
                raise
    return 0
