"""The application factory: ``create_app(config)``.

One blueprint per resource; every error is JSON (``ApiError.to_dict()``) on the
API and a plain page on the dashboard; a body-size limit on every request
(uploads get a larger one); security headers on every response.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from flask import Flask, g, jsonify, request
from sqlalchemy import select
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from edgepack import (
    BundleError,
    ConfigError,
    EdgepackError,
    ManifestParseError,
    PathTraversalError,
    VerificationError,
)
from edgepack._device_auth import RequestAuthError

from ._checkin import CheckinStore
from ._config import FleetConfig, load_config
from ._db import Database
from ._errors import ApiError
from ._fastpath import API_HEADERS, HeartbeatFastPath
from ._http import small_uint
from ._metrics import FleetMetrics
from ._models import Group, Release
from ._publish import Publisher, open_publisher
from ._storage import LocalStorage, Storage

__all__ = ["Fleet", "create_app"]

log = logging.getLogger("fleet_server")

#: HTTP status for edgepack errors that are not ApiErrors (most specific class first in the MRO walk)
STATUS_FOR = {
    RequestAuthError: 401,
    PathTraversalError: 400,
    ManifestParseError: 400,
    BundleError: 422,
    VerificationError: 422,
    ConfigError: 503,
}
UPLOAD_ENDPOINTS = {"releases.upload", "releases.upload_params", "rounds.device_update"}


class Fleet:
    """The server's services: config, database, artifact storage, publisher, metrics."""

    def __init__(self, config: FleetConfig, storage: Storage | None = None) -> None:
        self.config = config
        self.db = Database(config.db_url, sqlite_synchronous=config.sqlite_synchronous)
        self.storage = storage or LocalStorage(config.artifacts_dir)
        self.publisher: Publisher = open_publisher(config.instance_dir, self.storage, self._published_release)
        self.metrics = FleetMetrics(self)
        self.checkins = CheckinStore(self.db, nonce_window_s=config.max_skew_s + 1)
        self._last_tick: dict[int, float] = {}

    def _published_release(self, group: str, filename: str) -> tuple[str, str] | None:
        """(storage key, sha256) of ``<name>-<version>.edgepack`` if the group was ever assigned it."""
        from ._models import Device, Rollout

        name, _, rest = filename.rpartition("-")
        version = small_uint(rest.removesuffix(".edgepack"))  # fits the INTEGER column, or None
        if not name or version is None or not rest.endswith(".edgepack"):
            return None
        with self.db.read() as s:
            rel = s.scalar(select(Release).where(Release.name == name, Release.version == version))
            grp = s.scalar(select(Group).where(Group.name == group))
            if rel is None or grp is None:
                return None
            used = (grp.current_release_id == rel.id
                    or s.scalar(select(Rollout.id).where(Rollout.group_id == grp.id, Rollout.release_id == rel.id))
                    or s.scalar(select(Device.id).where(Device.group_id == grp.id,
                                                        Device.desired_release_id == rel.id).limit(1)))
            return (rel.storage_key, rel.sha256) if used else None

    def tick_soon(self, rollout_id: int, urgent: bool) -> None:
        """Re-evaluate a rollout after a report (at most once a second unless the report was bad)."""
        from ._rollouts import tick

        now = time.monotonic()
        if urgent or now - self._last_tick.get(rollout_id, -1e9) >= self.config.report_tick_interval_s:
            self._last_tick[rollout_id] = now
            tick(self, rollout_id)

    def background_tick(self, now: dt.datetime | None = None) -> list[str]:
        """Advance rollouts and enforce deadlines, then re-sign TUF metadata that is due (tufup #36)."""
        from ._rollouts import tick_all
        from ._rounds import tick_rounds

        tick_all(self, now.timestamp() if now else None)
        try:
            tick_rounds(self, now.timestamp() if now else None)
        except EdgepackError:  # a broken round must not stop rollouts or TUF re-signing; logged, retried next tick
            log.exception("round tick failed")
        return self.publisher.refresh(now)


def _ticker(fleet: Fleet, stop: threading.Event) -> None:
    while not stop.wait(fleet.config.tick_interval_s):
        try:
            fleet.background_tick()
        except Exception:  # noqa: BLE001 (a failed tick must not kill the thread; the next one retries)
            log.exception("rollout tick failed")


def _status_for(e: EdgepackError) -> int:
    if isinstance(e, ApiError):
        return e.status_code
    for cls in type(e).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 400


def _error_body(e: EdgepackError) -> dict[str, Any]:
    if isinstance(e, ApiError):
        return e.to_dict()
    return {"error": type(e).__name__, "message": e.message, "hint": e.hint}


def _register_errors(app: Flask) -> None:
    @app.errorhandler(EdgepackError)
    def _edgepack(e: EdgepackError):  # type: ignore[no-untyped-def]
        status = _status_for(e)
        if status >= 500:
            log.error("server error: %s", e.one_line())
        return jsonify(_error_body(e)), status, getattr(e, "headers", None) or {}

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e: RequestEntityTooLarge):  # type: ignore[no-untyped-def]
        limit = request.max_content_length
        return jsonify({"error": "PayloadTooLargeError", "message": f"the request body is over {limit} bytes",
                        "hint": "send a smaller body"}), 413

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):  # type: ignore[no-untyped-def]
        return jsonify({"error": type(e).__name__, "message": e.description, "hint": None}), e.code or 500

    @app.errorhandler(Exception)
    def _internal(e: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error")
        return jsonify({"error": "InternalError", "message": "internal server error",
                        "hint": "see the server log"}), 500


def _register_hooks(app: Flask, fleet: Fleet) -> None:
    @app.before_request
    def _limits() -> None:
        g.t0 = time.perf_counter()
        if request.endpoint not in UPLOAD_ENDPOINTS:
            request.max_content_length = fleet.config.max_json_bytes

    @app.after_request
    def _headers(resp):  # type: ignore[no-untyped-def]
        h = resp.headers
        for name, value in API_HEADERS:
            h.setdefault(name, value)
        if not request.path.startswith(("/tuf/", "/static/")):
            h.setdefault("Cache-Control", "no-store")
        if "t0" in g:
            fleet.metrics.observe(request.endpoint or "unknown", resp.status_code, time.perf_counter() - g.t0)
        return resp


def create_app(config: FleetConfig | None = None, *, storage: Storage | None = None) -> Flask:
    """Build the fleet server.

    Args:
        config: defaults to ``load_config()`` (instance dir, ``fleet.json``, ``EDGEPACK_*``).
        storage: an artifact store; defaults to ``LocalStorage(config.artifacts_dir)``.

    Raises:
        ConfigError: no secret key, or a database that is not initialised / has another schema.
    """
    from . import (
        _audit,
        _bp_admin,
        _bp_device,
        _bp_releases,
        _bp_rollouts,
        _bp_rounds,
        _dashboard,
        _dashboard_rounds,
        _delivery,
    )

    config = config or load_config()
    app = Flask("fleet_server", instance_path=str(config.instance_dir.resolve()), static_folder=None)
    app.config.update(
        SECRET_KEY=config.require_secret_key(), MAX_CONTENT_LENGTH=config.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=config.session_cookie_secure, SESSION_COOKIE_NAME="edgepack_session",
        TESTING=config.testing, JSON_SORT_KEYS=False,
    )
    fleet = Fleet(config, storage)
    fleet.db.create_schema()
    app.extensions["edgepack_fleet"] = fleet
    for bp in (_bp_device.bp, _bp_admin.bp, _bp_releases.bp, _bp_rollouts.bp, _bp_rounds.bp, _delivery.bp,
               _dashboard.bp, _dashboard_rounds.bp):
        app.register_blueprint(bp)

    @app.get("/metrics")
    def metrics():  # type: ignore[no-untyped-def]
        return fleet.metrics.render(), 200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify({"ok": True, "publisher": fleet.publisher.kind})

    _register_errors(app)
    _register_hooks(app, fleet)
    if config.checkin_fast_path:
        app.wsgi_app = HeartbeatFastPath(app.wsgi_app, fleet)  # type: ignore[method-assign]
    _audit.register(app, fleet)
    if config.tick_interval_s > 0:
        stop = threading.Event()
        threading.Thread(target=_ticker, args=(fleet, stop), name="rollout-ticker", daemon=True).start()
        app.extensions["edgepack_ticker_stop"] = stop
    return app
