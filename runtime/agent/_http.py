"""HTTP for the device: the fleet API (signed JSON requests) and a TUF fetcher.

Only the standard library (``urllib.request``): the device's dependency budget
is numpy, the inference runtimes, cryptography and tuf. tuf 7 pulls in urllib3
for its default fetcher, but one HTTP stack for metadata, targets and API
calls keeps timeouts and error mapping in one place.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface

from edgepack import SigningKey, loads_strict
from edgepack._device_auth import sign_request

from ._errors import ServerRefusedError, ServerUnreachableError

__all__ = ["Auth", "FleetClient", "UrllibFetcher", "auth_headers", "open_url"]

USER_AGENT = "edgepack-agent/1"
log = logging.getLogger("edgepack.agent")

#: (method, path with query) -> headers that authenticate the request as this device
Auth = Callable[[str, str], dict[str, str]]


def auth_headers(auth: Auth | None, method: str, url: str) -> dict[str, str]:
    """The device's signed-request headers for ``url`` (none without ``auth``).

    The fleet server serves a group's TUF role and targets only to that group's
    devices, so metadata and target fetches are signed like API calls.
    """
    if auth is None:
        return {}
    parts = urllib.parse.urlsplit(url)
    return auth(method, parts.path + (f"?{parts.query}" if parts.query else ""))


def open_url(url: str, headers: dict[str, str] | None = None, *, timeout: float,
             method: str = "GET", body: bytes | None = None) -> Any:
    """Open ``url``; HTTP errors come back as ``urllib.error.HTTPError``.

    Raises:
        ServerUnreachableError: connection refused, DNS failure or timeout.
    """
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (scheme checked by FleetClient)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as e:
        raise ServerUnreachableError(f"cannot reach {url}: {getattr(e, 'reason', e)}", where=url,
                                     hint="the agent keeps serving its current model and retries") from e


class UrllibFetcher(FetcherInterface):
    """A python-tuf fetcher over ``urllib.request`` (metadata downloads)."""

    def __init__(self, timeout: float = 30.0, chunk_size: int = 64 * 1024, auth: Auth | None = None) -> None:
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.auth = auth

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            resp = open_url(url, auth_headers(self.auth, "GET", url), timeout=self.timeout)
        except urllib.error.HTTPError as e:
            e.close()
            raise tuf_exc.DownloadHTTPError(f"HTTP {e.code} for {url}", e.code) from e
        except ServerUnreachableError as e:
            if isinstance(e.__cause__, (socket.timeout, TimeoutError)):
                raise tuf_exc.SlowRetrievalError(str(e)) from e
            raise tuf_exc.DownloadError(str(e)) from e
        return self._chunks(resp)

    def _chunks(self, resp: Any) -> Iterator[bytes]:
        try:
            while chunk := resp.read(self.chunk_size):
                yield chunk
        except TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"read timed out: {e}") from e
        finally:
            resp.close()


def _server_time(e: urllib.error.HTTPError) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(e.headers.get("Date", "")).timestamp()
    except (TypeError, ValueError):
        return None


class FleetClient:
    """The fleet server's device API, with every request signed by the device key.

    ``clock`` is the device's clock; ``now()`` adds ``clock_offset_s``, which a
    ``ClockSkewError`` refusal sets from the server's ``Date`` header (at most
    ``max_clock_correction_s``; see ``AgentConfig``) before the request is retried once.
    """

    def __init__(self, server_url: str, *, timeout: float = 15.0, max_response_bytes: int = 1 << 20,
                 max_clock_correction_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        parts = urllib.parse.urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServerRefusedError(f"bad server URL {server_url!r}", where="--server",
                                     hint="use http(s)://HOST:PORT")
        self.base = server_url.rstrip("/")
        self._prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.max_clock_correction_s = max_clock_correction_s
        self.clock = clock
        self.clock_offset_s = 0.0

    def now(self) -> float:
        """The time to sign requests with: the device clock, corrected by the last skew refusal."""
        return self.clock() + self.clock_offset_s

    def _learn_offset(self, e: urllib.error.HTTPError, detail: str) -> bool:
        """After a ClockSkewError refusal, adopt the server's clock if it is within bounds."""
        server = _server_time(e)
        if e.code != 401 or "ClockSkewError" not in detail or server is None:
            return False
        offset = server - self.clock()
        if abs(offset) > self.max_clock_correction_s or abs(offset - self.clock_offset_s) < 2:
            return False
        log.warning("device clock is %+.0f s off the server's; signing requests with the server's time", -offset)
        self.clock_offset_s = offset
        return True

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             key: SigningKey | None = None, device_id: str | None = None) -> tuple[int, Any]:
        """Send one JSON request; return (status, parsed JSON body).

        Raises:
            ServerUnreachableError: the server cannot be reached.
            ServerRefusedError: it answered 4xx/5xx (the JSON error is in the message; a clock
                outside the server's window says ``ClockSkewError``).
        """
        data = json.dumps(body, sort_keys=True).encode() if body is not None else b""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self._call(method, path, data, headers, body is not None, key, device_id, retry=True)

    def _call(self, method: str, path: str, data: bytes, headers: dict[str, str], has_body: bool,
              key: SigningKey | None, device_id: str | None, *, retry: bool) -> tuple[int, Any]:
        if key is not None and device_id is not None:
            headers = {**headers, **sign_request(key, device_id, method, self._prefix + path, data, now=self.now())}
        url = self.base + path
        try:
            with open_url(url, headers, timeout=self.timeout, method=method,
                          body=data if has_body else None) as resp:
                raw = resp.read(self.max_response_bytes + 1)
                status = resp.status
        except urllib.error.HTTPError as e:
            detail = e.read(4096).decode("utf-8", "replace")
            e.close()
            if retry and key is not None and self._learn_offset(e, detail):
                return self._call(method, path, data, headers, has_body, key, device_id, retry=False)
            try:
                doc = json.loads(detail)
                msg = f"{doc.get('error', 'error')}: {doc.get('message', '')}"
            except ValueError:
                msg = detail[:200]
            raise ServerRefusedError(f"{method} {path} -> HTTP {e.code}: {msg}", status=e.code,
                                     where=url) from e
        except TimeoutError as e:
            raise ServerUnreachableError(f"{method} {path} timed out", where=url) from e
        if len(raw) > self.max_response_bytes:
            raise ServerRefusedError(f"{method} {path}: response over {self.max_response_bytes} bytes",
                                     where=url)
        return status, (loads_strict(raw, what=f"response of {method} {path}") if raw else None)
