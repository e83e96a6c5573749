"""edgepack._device_auth: signatures bind method, path, body, time and nonce."""

from __future__ import annotations

import pytest

from edgepack import generate_key
from edgepack._device_auth import (
    ClockSkewError,
    MissingAuthError,
    ReplayError,
    RequestSignatureError,
    sign_request,
    verify_request,
)


def _store():
    seen: set[str] = set()

    def seen_nonce(nonce: str, ts: int) -> bool:
        if nonce in seen:
            return True
        seen.add(nonce)
        return False
    return seen_nonce


def test_signed_request_verifies_and_returns_the_device():
    k = generate_key()
    h = sign_request(k, "d-1", "POST", "/api/v1/x?a=1", b"{}", now=1000)
    assert verify_request(k.public, h, "POST", "/api/v1/x?a=1", b"{}", 1000, _store()).device_id == "d-1"


@pytest.mark.parametrize("field,value", [("method", "PUT"), ("path", "/api/v1/y?a=1"), ("body", b'{"a":1}')])
def test_changing_any_signed_part_breaks_the_signature(field, value):
    k = generate_key()
    h = sign_request(k, "d-1", "POST", "/api/v1/x?a=1", b"{}", now=1000)
    args = {"method": "POST", "path": "/api/v1/x?a=1", "body": b"{}", field: value}
    with pytest.raises(RequestSignatureError):
        verify_request(k.public, h, args["method"], args["path"], args["body"], 1000, _store())


def test_another_key_is_refused():
    h = sign_request(generate_key(), "d-1", "GET", "/p", b"", now=1000)
    with pytest.raises(RequestSignatureError):
        verify_request(generate_key().public, h, "GET", "/p", b"", 1000, _store())


def test_replayed_nonce_is_refused():
    k, store = generate_key(), _store()
    h = sign_request(k, "d-1", "GET", "/p", b"", now=1000)
    verify_request(k.public, h, "GET", "/p", b"", 1000, store)
    with pytest.raises(ReplayError):
        verify_request(k.public, h, "GET", "/p", b"", 1001, store)


@pytest.mark.parametrize("delta", [-301, 301])
def test_timestamp_outside_the_skew_window_is_refused(delta):
    k = generate_key()
    h = sign_request(k, "d-1", "GET", "/p", b"", now=1000)
    with pytest.raises(ClockSkewError):
        verify_request(k.public, h, "GET", "/p", b"", 1000 + delta, _store())


@pytest.mark.parametrize("header,value", [("X-Edgepack-Nonce", "xyz"), ("X-Edgepack-Timestamp", "-5"),
                                          ("X-Edgepack-Timestamp", "1\u00b2"),  # str.isdigit, but int() fails
                                          ("X-Edgepack-Timestamp", "\u0661\u0660\u0660\u0660"),  # Arabic-Indic 1000
                                          ("X-Edgepack-Signature", "00"), ("X-Edgepack-Device", "../etc")])
def test_malformed_headers_are_refused_before_any_crypto(header, value):
    k = generate_key()
    h = sign_request(k, "d-1", "GET", "/p", b"", now=1000)
    h[header] = value
    with pytest.raises(MissingAuthError):
        verify_request(k.public, h, "GET", "/p", b"", 1000, _store())


def test_bad_signature_does_not_consume_the_nonce():
    k, calls = generate_key(), []
    h = sign_request(k, "d-1", "GET", "/p", b"", now=1000)
    with pytest.raises(RequestSignatureError):
        verify_request(generate_key().public, h, "GET", "/p", b"", 1000, lambda n, t: calls.append(n) or False)
    assert calls == []
