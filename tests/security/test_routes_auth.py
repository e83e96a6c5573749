"""Every route in the app's URL map refuses an unauthenticated request, except a
small explicit allow-list (issue 8 item 6: authentication on every route)."""

from __future__ import annotations

import pytest

#: (rule, method) -> why it may answer without credentials. Keep this short; every entry is reviewed.
PUBLIC = {
    ("/login", "GET"): "the login form itself",
    ("/login", "POST"): "submits the admin token (CSRF-checked, see test_csrf)",
    ("/static/<path:filename>", "GET"): "CSS/JS of the dashboard, no data",
    ("/healthz", "GET"): "liveness probe for load balancers; answers only ok + publisher kind",
    ("/metrics", "GET"): "Prometheus scrape; SECURITY GAP: fleet-wide counts are public (see threat model)",
    ("/tuf/metadata/<name>", "GET"): "top-level TUF roles are signed public metadata; group-<g>.json needs a "
                                     "signed device request (test_group_tuf_paths_need_a_device_signature)",
}
#: routes that authenticate by a credential in the body rather than a header
ENROLL = ("/api/v1/enroll", "POST")

#: a value for each URL converter/argument name, so every rule can be built
ARGS = {"alert_id": 1, "device_id": "d-0000000000000000", "release_id": 1, "rollout_id": 1, "action": "pause",
        "round_id": "r-1", "token_id": 1, "name": "timestamp.json", "filename": "style.css",
        "url_path": "groups/default/x.edgepack"}


def _routes(app):
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((rule, method))
    return out


def _url(rule) -> str:
    url = rule.rule
    for arg in rule.arguments:
        url = url.replace(f"<{arg}>", str(ARGS[arg]))
        for conv in ("int", "path"):
            url = url.replace(f"<{conv}:{arg}>", str(ARGS[arg]))
    assert "<" not in url, f"add a value for {rule.rule} to ARGS"
    return url


def _is_api(rule) -> bool:
    return rule.rule.startswith(("/api/", "/tuf/"))


def test_the_url_map_is_what_this_suite_knows(app):
    """A new route must be classified here (public with a reason, API or dashboard) before it ships."""
    for rule, method in _routes(app):
        assert set(rule.arguments) <= set(ARGS), f"unknown URL argument in {rule.rule}"
        key = (rule.rule, method)
        assert key in PUBLIC or key == ENROLL or _is_api(rule) or rule.endpoint.startswith(
            ("dashboard.", "rounds_dashboard.")), f"unclassified route {method} {rule.rule} ({rule.endpoint})"


def test_every_non_public_route_refuses_an_unauthenticated_request(app, client):
    checked = 0
    for rule, method in _routes(app):
        key = (rule.rule, method)
        if key in PUBLIC:
            continue
        url = _url(rule)
        kw = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
        if key == ENROLL:  # a well-formed body whose credential (the one-time token) is wrong
            kw = {"json": {"token": "ept_not-a-real-token", "public_key": "ab" * 32}}
        r = client.open(url, method=method, **kw)
        where = f"{method} {url} ({rule.endpoint})"
        if _is_api(rule) or key == ENROLL:
            assert r.status_code in (401, 403), f"{where} answered {r.status_code} without credentials"
            assert r.is_json and r.json["error"], f"{where} refused without a JSON error"
        else:
            assert r.status_code == 302 and r.headers["Location"].startswith("/login"), (
                f"{where} answered {r.status_code} without a dashboard session")
        checked += 1
    assert checked >= 35, checked  # the map has ~45 route/method pairs; a collapse here means routes went missing


def test_admin_api_refuses_a_wrong_or_malformed_bearer_token(app, client, admin_token):
    bad = [{"Authorization": "Bearer " + admin_token[:-1] + ("A" if admin_token[-1] != "A" else "B")},
           {"Authorization": admin_token}, {"Authorization": "Basic " + admin_token},
           {"Authorization": "Bearer " + "x" * 5000}]
    for rule, method in _routes(app):
        if not rule.rule.startswith("/api/v1/admin"):
            continue
        for h in bad:
            r = client.open(_url(rule), method=method, headers=h, json={} if method != "GET" else None)
            assert r.status_code == 401 and r.json["error"] == "AuthError", (method, rule.rule, h, r.status_code)
    r = client.get("/api/v1/admin/devices", headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200  # the same route does accept the real token


def test_a_dashboard_session_is_not_an_api_credential(logged_in):
    client, _ = logged_in
    assert client.get("/").status_code == 200
    r = client.get("/api/v1/admin/devices")
    assert r.status_code == 401 and r.json["error"] == "AuthError"


def test_group_tuf_paths_need_a_device_signature(client):
    for url in ("/tuf/metadata/group-default.json", "/tuf/metadata/3.group-default.json",
                "/tuf/targets/groups/default/abc.digits-1.edgepack"):
        r = client.get(url)
        assert r.status_code == 401 and r.is_json, (url, r.status_code)


def test_enrollment_with_a_wrong_token_is_refused(client):
    r = client.post("/api/v1/enroll", json={"token": "ept_nope", "public_key": "ab" * 32})
    assert r.status_code == 401 and r.json["error"] == "AuthError"


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_public_probes_answer_without_credentials(client, path):
    """Pins the allow-list: if these start needing auth, update PUBLIC and the threat model."""
    assert client.get(path).status_code == 200


def test_parameter_update_targets_need_a_device_signature(client):
    """Parameter updates are model weights: like bundles, only enrolled devices may fetch them.
    The auth check comes before the lookup, so an unsigned caller cannot even probe which exist."""
    r = client.get("/tuf/targets/params/digits/digits-2.epu")
    assert r.status_code == 401, r.status_code


def test_admin_and_device_credentials_do_not_cross_over(app, client, admin_token):
    """A signed device request is not an admin credential, and an admin token is not a device one."""
    from edgepack import generate_key
    from edgepack._device_auth import sign_request

    bearer = {"Authorization": f"Bearer {admin_token}"}
    tok = client.post("/api/v1/admin/enrollment-tokens", json={"group": "default"}, headers=bearer).json["token"]
    key = generate_key()
    dev = client.post("/api/v1/enroll", json={"token": tok, "public_key": key.public.raw.hex()}).json["device_id"]
    n = 0
    for rule, method in _routes(app):
        url = _url(rule).replace(ARGS["device_id"], dev)
        body = b"{}" if method != "GET" else b""
        if rule.rule.startswith("/api/v1/admin"):
            r = client.open(url, method=method, data=body, content_type="application/json",
                            headers=sign_request(key, dev, method, url, body))
        elif rule.rule.startswith("/api/v1/devices/"):
            r = client.open(url, method=method, data=body, content_type="application/json", headers=bearer)
        else:
            continue
        assert r.status_code == 401, (method, url, r.status_code)
        n += 1
    assert n >= 25, n
