"""Signed device requests: the device<->fleet-server authentication contract.

Every request a device makes is signed by its Ed25519 identity key over

    b"edgepack-request-v1\\n" + METHOD + "\\n" + PATH + "\\n" + TIMESTAMP + "\\n"
    + NONCE + "\\n" + sha256hex(body)

where PATH is the request target as sent (path plus ``?query`` if any). The
signature travels in four headers (``X-Edgepack-Device``, ``-Timestamp``,
``-Nonce``, ``-Signature``). The server accepts a request only if the signature
is valid for the device's registered key, the timestamp is within ``max_skew``
seconds of its clock, and the nonce was never seen before; nonces are kept for
the skew window, so a replay is refused either as "seen" or as "expired".

Runtime-safe: only the standard library and ``edgepack._keys`` (cryptography).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._errors import VerificationError
from ._keys import PublicKey, SigningKey

__all__ = [
    "HEADER_DEVICE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_SKEW_S",
    "ClockSkewError",
    "MissingAuthError",
    "ReplayError",
    "RequestAuthError",
    "RequestSignatureError",
    "SignedHeaders",
    "parse_headers",
    "request_message",
    "sign_request",
    "verify_request",
]

HEADER_DEVICE = "X-Edgepack-Device"
HEADER_TIMESTAMP = "X-Edgepack-Timestamp"
HEADER_NONCE = "X-Edgepack-Nonce"
HEADER_SIGNATURE = "X-Edgepack-Signature"
MAX_SKEW_S = 300
_DOMAIN = b"edgepack-request-v1\n"
_NONCE_RE = re.compile(r"^[0-9a-f]{32}\Z")
_SIG_RE = re.compile(r"^[0-9a-f]{128}\Z")
_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_METHOD_RE = re.compile(r"^[A-Z]{1,16}\Z")


class RequestAuthError(VerificationError):
    """A device request failed authentication."""


class MissingAuthError(RequestAuthError):
    """A signature header is missing or malformed."""


class RequestSignatureError(RequestAuthError):
    """The signature does not match the request and the device's key."""


class ClockSkewError(RequestAuthError):
    """The request's timestamp is too far from the server's clock (expired or from the future)."""


class ReplayError(RequestAuthError):
    """The nonce was used before: this request is a replay."""


@dataclass(frozen=True)
class SignedHeaders:
    """The four authentication headers, parsed and syntax-checked (not yet verified)."""

    device_id: str
    timestamp: int
    nonce: str
    signature: bytes


def request_message(method: str, path: str, timestamp: int, nonce: str, body: bytes) -> bytes:
    """The exact bytes a device signs for one request."""
    if not _METHOD_RE.match(method):
        raise MissingAuthError(f"bad HTTP method {method!r}")
    if "\n" in path or "\r" in path:
        raise MissingAuthError("a request path cannot contain a newline")
    return (_DOMAIN + method.encode() + b"\n" + path.encode("utf-8") + b"\n" + str(timestamp).encode()
            + b"\n" + nonce.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode())


def sign_request(key: SigningKey, device_id: str, method: str, path_with_query: str, body: bytes = b"",
                 now: float | None = None) -> dict[str, str]:
    """Return the headers that authenticate one request as ``device_id``.

    Raises:
        MissingAuthError: if ``device_id`` or ``method`` is not well formed.
    """
    if not _DEVICE_RE.match(device_id):
        raise MissingAuthError(f"bad device id {device_id!r}", hint="use the id the server returned at enrollment")
    ts = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    sig = key.sign(request_message(method.upper(), path_with_query, ts, nonce, body))
    return {HEADER_DEVICE: device_id, HEADER_TIMESTAMP: str(ts), HEADER_NONCE: nonce,
            HEADER_SIGNATURE: sig.hex()}


def _header(headers: Mapping[str, str] | Any, name: str) -> str | None:
    getter = getattr(headers, "get", None)
    value = getter(name) if getter else None
    if value is None:  # plain dicts are case-sensitive; HTTP header names are not
        low = name.lower()
        for k, v in getattr(headers, "items", lambda: [])():
            if k.lower() == low:
                return v
    return value


def parse_headers(headers: Mapping[str, str] | Any) -> SignedHeaders:
    """Read and syntax-check the authentication headers.

    Raises:
        MissingAuthError: if a header is absent or malformed.
    """
    values = {n: _header(headers, n) for n in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)}
    missing = [n for n, v in values.items() if not v]
    if missing:
        raise MissingAuthError(f"missing authentication header(s): {', '.join(missing)}",
                               hint="sign the request with edgepack._device_auth.sign_request")
    device, ts, nonce, sig = (str(values[n]) for n in (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE,
                                                       HEADER_SIGNATURE))
    if not _DEVICE_RE.match(device):
        raise MissingAuthError("malformed device id header", where=HEADER_DEVICE)
    if not (ts.isascii() and ts.isdigit()) or len(ts) > 12:  # isdigit alone admits '²' and other scripts
        raise MissingAuthError("the timestamp must be unix seconds", where=HEADER_TIMESTAMP)
    if not _NONCE_RE.match(nonce):
        raise MissingAuthError("the nonce must be 32 lowercase hex digits", where=HEADER_NONCE)
    if not _SIG_RE.match(sig):
        raise MissingAuthError("the signature must be 128 lowercase hex digits", where=HEADER_SIGNATURE)
    return SignedHeaders(device, int(ts), nonce, bytes.fromhex(sig))


def verify_request(public_key: PublicKey, headers: Mapping[str, str] | Any, method: str, path: str, body: bytes,
                   now: float | None, seen_nonce: Callable[[str, int], bool],
                   max_skew: int = MAX_SKEW_S) -> SignedHeaders:
    """Verify one signed request; return its parsed headers.

    The checks run in an order that never lets an unauthenticated request write
    state: signature first, then the clock window, and only then the nonce
    (``seen_nonce(nonce, timestamp)`` records it and returns True if it was
    already known), so an attacker cannot fill the nonce store.

    Raises:
        MissingAuthError: headers absent or malformed.
        RequestSignatureError: the signature is not ``public_key``'s over this request.
        ClockSkewError: the timestamp is outside ``now ± max_skew``.
        ReplayError: the nonce was seen before.
    """
    h = parse_headers(headers)
    if not public_key.verify(h.signature, request_message(method.upper(), path, h.timestamp, h.nonce, body)):
        raise RequestSignatureError("the request signature does not match this device's key",
                                    where=f"device {h.device_id}",
                                    hint="sign method, path with query, timestamp, nonce and body hash "
                                         "with the key registered at enrollment")
    now_s = time.time() if now is None else now
    if abs(now_s - h.timestamp) > max_skew:
        raise ClockSkewError(f"clock skew: the request timestamp is {round(h.timestamp - now_s):+d} s off the "
                             f"server clock (limit ±{max_skew} s)", where=HEADER_TIMESTAMP,
                             hint="sync the device clock (NTP) and sign a fresh request")
    if seen_nonce(h.nonce, h.timestamp):
        raise ReplayError("this nonce was already used: the request is a replay", where=HEADER_NONCE,
                          hint="sign every request with a fresh nonce")
    return h
