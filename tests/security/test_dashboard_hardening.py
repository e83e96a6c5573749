"""Dashboard hardening: security headers on every page, CSRF refusal on every POST
form, request size limits answered as 413 JSON (issue 8 item 6)."""

from __future__ import annotations

import re

import pytest


def _csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert m, "the page has no CSRF token field"
    return m.group(1)


DASHBOARD_GET = ["/login", "/", "/devices", "/alerts", "/rounds", "/audit"]


def _dashboard_post_rules(app):
    return [r for r in app.url_map.iter_rules()
            if "POST" in r.methods and not r.rule.startswith(("/api/", "/tuf/"))]


def _fill(rule) -> str:
    return (rule.rule.replace("<int:rollout_id>", "1").replace("<int:alert_id>", "1")
            .replace("<action>", "pause"))


def _assert_headers(r, where: str) -> None:
    h = r.headers
    csp = h.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, (where, csp)
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, (where, csp)
    assert "frame-ancestors 'none'" in csp or h.get("X-Frame-Options") == "DENY", where
    assert h.get("X-Content-Type-Options") == "nosniff", where
    assert h.get("Referrer-Policy") in ("no-referrer", "same-origin", "strict-origin"), where


def test_every_dashboard_page_sends_the_security_headers(logged_in):
    client, _ = logged_in
    for path in DASHBOARD_GET:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code)
        _assert_headers(r, path)
        assert r.headers.get("Cache-Control") == "no-store", path


def test_redirects_and_errors_carry_the_headers_too(client):
    for path in ["/", "/devices/d-x", "/no-such-page"]:
        _assert_headers(client.get(path), path)


def test_session_cookie_is_httponly_and_samesite_strict(client, admin_token):
    token = _csrf_of(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"token": admin_token, "csrf_token": token})
    cookie = next(c for c in r.headers.getlist("Set-Cookie") if c.startswith("edgepack_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    assert admin_token not in cookie  # the session holds the token's hash, never the token


def test_login_refuses_a_wrong_token_with_401_and_no_session(client, admin_token):
    token = _csrf_of(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"token": admin_token + "x", "csrf_token": token})
    assert r.status_code == 401
    assert client.get("/").status_code == 302


def test_every_dashboard_post_form_refuses_a_missing_or_wrong_csrf_token(app, logged_in):
    client, good = logged_in
    rules = _dashboard_post_rules(app)
    assert {r.endpoint for r in rules} >= {"dashboard.login", "dashboard.logout", "dashboard.ack",
                                          "dashboard.rollout_action"}
    wrong = ("0" if good[0] != "0" else "1") + good[1:]
    # logout last: it ends the session the other checks need
    for rule in sorted(rules, key=lambda r: r.endpoint == "dashboard.logout"):
        url = _fill(rule)
        for data in ({}, {"csrf_token": ""}, {"csrf_token": wrong}, {"csrf_token": good[:-4]}):
            r = client.post(url, data=data)
            assert r.status_code == 400, (url, data, r.status_code)
            assert "CSRF" in r.json["message"], (url, r.json)
    # the session survived every refused POST, and the real token is accepted
    assert client.get("/").status_code == 200
    r = client.post("/logout", data={"csrf_token": good})
    assert r.status_code == 302 and client.get("/").status_code == 302


def test_a_csrf_token_from_another_session_is_refused(app, logged_in, admin_token):
    client, mine = logged_in
    other = app.test_client()
    theirs = _csrf_of(other.get("/login").get_data(as_text=True))
    assert theirs != mine
    r = client.post("/logout", data={"csrf_token": theirs})
    assert r.status_code == 400 and client.get("/").status_code == 200


@pytest.mark.parametrize("path,kw", [
    ("/api/v1/enroll", {"content_type": "application/json"}),
    ("/api/v1/admin/groups", {"content_type": "application/json"}),
    ("/login", {"content_type": "application/x-www-form-urlencoded"}),
])
def test_a_body_over_the_json_limit_is_413_json(app, client, admin_token, path, kw):
    limit = app.extensions["edgepack_fleet"].config.max_json_bytes
    r = client.post(path, data=b"{" + b" " * limit + b"}", headers={"Authorization": f"Bearer {admin_token}"}, **kw)
    assert r.status_code == 413 and r.is_json, (path, r.status_code)
    assert r.json["error"] == "PayloadTooLargeError"


def test_a_signed_device_body_over_the_json_limit_is_413_json(app, client, admin_token):
    """Unsigned oversize bodies to device routes get 401 before the body is read; a signed one gets 413."""
    from edgepack import generate_key
    from edgepack._device_auth import sign_request

    h = {"Authorization": f"Bearer {admin_token}"}
    tok = client.post("/api/v1/admin/enrollment-tokens", json={"group": "default"}, headers=h).json["token"]
    key = generate_key()
    dev = client.post("/api/v1/enroll", json={"token": tok, "public_key": key.public.raw.hex()}).json["device_id"]
    limit = app.extensions["edgepack_fleet"].config.max_json_bytes
    path = f"/api/v1/devices/{dev}/heartbeat"
    body = b"{" + b" " * limit + b"}"
    r = client.post(path, data=body, headers=sign_request(key, dev, "POST", path, body),
                    content_type="application/json")
    assert r.status_code == 413 and r.json["error"] == "PayloadTooLargeError", r.status_code


def test_a_body_just_under_the_limit_is_not_413(app, client, admin_token):
    limit = app.extensions["edgepack_fleet"].config.max_json_bytes
    body = b'{"name": "g1"' + b" " * (limit - 64) + b"}"
    r = client.post("/api/v1/admin/groups", data=body, content_type="application/json",
                    headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code != 413, r.status_code


def test_an_upload_over_the_upload_limit_is_413_json(tmp_path, trust_file):
    from fleet_server import FleetConfig, create_app
    from fleet_server._bp_admin import create_admin_token

    cfg = FleetConfig(instance_dir=tmp_path / "i", database_url=f"sqlite:///{tmp_path / 'f.db'}", secret_key="s" * 48,
                      release_trust=trust_file, tick_interval_s=0, testing=True, max_upload_bytes=4096)
    app = create_app(cfg)
    try:
        tok = create_admin_token(app.extensions["edgepack_fleet"].db, "a")
        r = app.test_client().post("/api/v1/admin/releases", data=b"\0" * 5000,
                                   content_type="application/octet-stream",
                                   headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 413 and r.json["error"] == "PayloadTooLargeError"
    finally:
        app.extensions["edgepack_fleet"].db.dispose()
