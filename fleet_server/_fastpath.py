"""The heartbeat fast path: a WSGI middleware in front of Flask for the one hot route.

``POST /api/v1/devices/<id>/heartbeat`` is what every device sends every ``poll_after_s``;
at 1,000/s Flask's per-request machinery (contexts, session, routing, hooks, header
objects) cost about as much CPU as the signature check and the transaction together
(benchmarks/RESULTS.md, "signed check-ins"). This middleware answers a heartbeat that
is well formed *and* accepted with the same checks and the same transaction as the
Flask route (``_auth`` / ``_checkin``) and the same response (body, security headers,
metrics). Everything else goes to Flask unchanged, including **every error**: a
request that fails any check here (size, JSON, headers, unknown device, signature,
clock, replay, revoked) has written nothing, so Flask can run it again and answer
with its usual JSON error. The body, read here, is handed back to Flask intact.

Anything that must see every heartbeat (an audit hook, a rate limit) belongs in
``_checkin`` or here as well: Flask's before/after-request hooks do not run for the
heartbeats this path answers. ``FleetConfig.checkin_fast_path = False`` turns it off.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgepack import EdgepackError, loads_strict
from edgepack._device_auth import (
    HEADER_DEVICE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    parse_headers,
    verify_request,
)

from ._checkin import Heartbeat, heartbeat_from_doc

__all__ = ["API_HEADERS", "HeartbeatFastPath"]

log = logging.getLogger("fleet_server")

#: the headers ``_app`` adds to every API answer (the fast path adds the same)
API_HEADERS = (
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
_PATH = re.compile(r"^/api/v1/devices/([A-Za-z0-9][A-Za-z0-9._-]{0,127})/heartbeat\Z")
_ENVIRON = {n: "HTTP_" + n.upper().replace("-", "_")
            for n in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)}
_ENDPOINT = "device.heartbeat"


class HeartbeatFastPath:
    """Wraps ``app.wsgi_app``; answers accepted heartbeats itself, passes everything else on."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], fleet: Any) -> None:
        self.wsgi_app = wsgi_app
        self.fleet = fleet
        cfg = fleet.config
        self._max_body = cfg.max_json_bytes
        self._body = (json.dumps({"poll_after_s": cfg.poll_after_s}, separators=(",", ":")) + "\n").encode()
        self._headers = [("Content-Type", "application/json"), ("Content-Length", str(len(self._body))),
                         *API_HEADERS, ("Cache-Control", "no-store")]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            m = _PATH.match(environ.get("PATH_INFO", ""))
            if m is not None:
                t0 = time.perf_counter()
                if self._accept(environ, m.group(1)):
                    self.fleet.metrics.observe(_ENDPOINT, 200, time.perf_counter() - t0)
                    start_response("200 OK", list(self._headers))
                    return [self._body]
        return self.wsgi_app(environ, start_response)

    def _accept(self, environ: dict[str, Any], device_id: str) -> bool:
        """True if this heartbeat was authenticated and recorded; False (nothing written) to let Flask answer."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        if not 0 < length <= self._max_body or environ.get("QUERY_STRING"):
            return False
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # Flask reads it again if we pass the request on
        environ["CONTENT_LENGTH"] = str(len(body))
        headers = {name: environ.get(key) for name, key in _ENVIRON.items()}
        try:
            doc = loads_strict(body, what="request body")
            hb: Heartbeat = heartbeat_from_doc(doc if isinstance(doc, dict) else None)
            signed = parse_headers(headers)
            if signed.device_id != device_id:
                return False
            checkins = self.fleet.checkins
            key = checkins.public_key(device_id)
            now = time.time()
            skew = self.fleet.config.max_skew_s
            raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
            path = raw if raw and raw.startswith("/") else environ["PATH_INFO"]  # as _auth.signed_path()
            recorded: list[bool] = []

            def seen(nonce: str, ts: int) -> bool:
                row = checkins.check_in(device_id, key, nonce, ts, now, hb)
                recorded.append(row is not None)
                return row is None

            verify_request(key, headers, "POST", path, body, now, seen, skew)
        except EdgepackError:
            return False  # Flask repeats the checks and answers with the proper error
        except Exception as e:  # noqa: BLE001 (a driver error, a lost connection: nothing committed)
            # Never let it reach the WSGI server (a bare 500, no JSON, no security headers): Flask
            # runs the request again on a fresh connection and answers, or logs and answers 500.
            log.warning("heartbeat fast path declined after %s: %s", type(e).__name__, e)
            return False
        return recorded == [True]
