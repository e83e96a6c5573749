"""Device-controlled text on the dashboard is escaped, and the login redirect stays on this site."""

from __future__ import annotations

import json
import re
from urllib.parse import urljoin, urlsplit

import pytest

from edgepack import generate_key
from edgepack._device_auth import sign_request

PAYLOAD = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_a_report_reason_from_a_device_is_html_escaped_on_the_device_page(logged_in, admin_token):
    client, _ = logged_in
    h = {"Authorization": f"Bearer {admin_token}"}
    tok = client.post("/api/v1/admin/enrollment-tokens", json={"group": "default"}, headers=h).json["token"]
    key = generate_key()
    dev = client.post("/api/v1/enroll", json={"token": tok, "public_key": key.public.raw.hex(),
                                              "tags": {"site": PAYLOAD}}).json
    assert "device_id" in dev, dev
    dev = dev["device_id"]
    path = f"/api/v1/devices/{dev}/reports"
    body = json.dumps({"kind": "install", "release_version": 1, "ok": False, "reason": PAYLOAD, "data": {}}).encode()
    r = client.post(path, data=body, headers=sign_request(key, dev, "POST", path, body),
                    content_type="application/json")
    assert r.status_code in (200, 201, 202), r.json
    page = client.get(f"/devices/{dev}").get_data(as_text=True)
    assert "&lt;script&gt;" in page, "the reason is not shown at all, so escaping was not exercised"
    assert "<script>alert" not in page and "<img src=x" not in page
    for path in ("/devices", "/alerts", "/"):
        assert "<script>alert" not in client.get(path).get_data(as_text=True), path


@pytest.mark.parametrize("nxt", ["//evil.example/", "https://evil.example/", "http:evil.example", "/\\evil.example/",
                                 "/%5Cevil.example/", "\\\\evil.example/"])
def test_login_next_parameter_cannot_send_the_admin_to_another_site(client, admin_token, nxt):
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', client.get("/login").get_data(as_text=True)).group(1)
    r = client.post("/login", query_string={"next": nxt}, data={"token": admin_token, "csrf_token": token})
    loc = r.headers["Location"]
    # resolve as a browser would (which also reads a backslash as a slash): the host must stay ours
    resolved = urljoin("http://localhost/", loc.replace("\\", "/"))
    assert r.status_code == 302 and urlsplit(resolved).netloc == "localhost", loc
