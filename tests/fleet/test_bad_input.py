"""Every bad input answers 4xx with a JSON error and changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select


def _counts(fleet):
    from fleet_server._models import Device, Release, Report

    with fleet.db.read() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Device, Report, Release))


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"kind": "install", "kind": "crash", "ok": true}',
                                  b'{"kind": "install", "ok": NaN}', b"\xff\xfe", b""])
def test_malformed_json_report_is_400_and_nothing_is_stored(enroll, fleet, body):
    dev = enroll()
    before = _counts(fleet)
    from edgepack._device_auth import sign_request

    path = f"/api/v1/devices/{dev.id}/reports"
    r = dev.client.post(path, data=body, headers=sign_request(dev.key, dev.id, "POST", path, body),
                        content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "BadRequestError" and r.json["message"]
    assert _counts(fleet) == before


@pytest.mark.parametrize("body", [
    {"kind": "nonsense", "ok": True}, {"kind": "install"}, {"kind": "install", "ok": "yes"},
    {"kind": "install", "ok": True, "release_version": "2"}, {"kind": "install", "ok": True, "data": [1]},
])
def test_mistyped_report_fields_are_400(enroll, fleet, body):
    dev = enroll()
    before = _counts(fleet)
    r = dev.request("POST", f"/api/v1/devices/{dev.id}/reports", body)
    assert r.status_code == 400 and "error" in r.json
    assert _counts(fleet) == before


def test_oversized_body_is_413_json(enroll, fleet):
    dev = enroll()
    before = _counts(fleet)
    big = {"kind": "telemetry", "ok": True, "data": {"blob": "x" * (fleet.config.max_json_bytes + 10)}}
    r = dev.request("POST", f"/api/v1/devices/{dev.id}/reports", big)
    assert r.status_code == 413 and r.json["error"] == "PayloadTooLargeError"
    assert _counts(fleet) == before


def test_oversized_upload_is_413(admin, fleet_config, tmp_path):
    from dataclasses import replace

    from fleet_server import create_app
    from fleet_server._bp_admin import create_admin_token

    app = create_app(replace(fleet_config, max_upload_bytes=4096))
    token = create_admin_token(app.extensions["edgepack_fleet"].db, "t")
    r = app.test_client().post("/api/v1/admin/releases", data=b"x" * 10000,
                               headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 413 and r.json["error"] == "PayloadTooLargeError"


@pytest.mark.parametrize("field,value", [("name", "../../etc/passwd"), ("name", "a/b"), ("tags", {"../x": "1"})])
def test_path_traversal_in_enrollment_names_is_400(client, admin, fleet, field, value):
    from edgepack import generate_key

    before = _counts(fleet)
    body = {"token": admin.enroll_token(), "public_key": generate_key().public.raw.hex(), field: value}
    r = client.post("/api/v1/enroll", json=body)
    assert r.status_code == 400 and r.json["error"] == "BadRequestError"
    assert _counts(fleet) == before


@pytest.mark.parametrize("group", ["../admin", "a/b", ".hidden", "x" * 200])
def test_path_traversal_in_group_names_is_400(admin, group):
    r = admin.post("/enrollment-tokens", {"group": group})
    assert r.status_code == 400 and r.json["error"] == "BadRequestError"
    assert admin.post("/groups", {"name": group}).status_code == 400


@pytest.mark.parametrize("path", ["/tuf/targets/groups/default/..%2f..%2fsecret_key", "/tuf/targets/../secret_key",
                                  "/tuf/metadata/..%2fsecret_key", "/tuf/targets/groups//x"])
def test_path_traversal_in_delivery_paths_is_4xx_json(client, path):
    r = client.get(path)
    assert 400 <= r.status_code < 500
    assert r.is_json and "error" in r.json


def test_storage_refuses_keys_that_escape_its_root(tmp_path):
    from edgepack import PathTraversalError
    from fleet_server import LocalStorage

    st = LocalStorage(tmp_path / "store")
    for key in ("../x", "/etc/passwd", "a/../../b", "a\\b", ""):
        with pytest.raises(PathTraversalError):
            st.exists(key)


def test_unknown_routes_and_methods_answer_json(client):
    r = client.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.is_json
    r = client.delete("/api/v1/enroll")
    assert r.status_code == 405 and r.is_json


def test_security_headers_are_set(client):
    r = client.get("/login")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("route", ["heartbeat", "report"])
@pytest.mark.parametrize("version", [2**31, -(2**31) - 1, 2**63, 2**70])
def test_a_version_outside_the_database_integer_range_is_400_not_500(enroll, fleet, route, version):
    dev = enroll()
    before = _counts(fleet)
    if route == "heartbeat":  # answered by the fast path when accepted; a refusal must come from Flask as JSON
        r = dev.request("POST", f"/api/v1/devices/{dev.id}/heartbeat", {"active_version": version})
    else:
        r = dev.report("status", version)
    assert r.status_code == 400 and r.json["error"] == "BadRequestError", r.get_data()
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert _counts(fleet) == before


@pytest.mark.parametrize("route", ["heartbeat", "assignment"])
def test_a_timestamp_header_with_non_ascii_digits_is_401_not_500(enroll, route):
    """'1\\u00b2' passes str.isdigit() (a superscript two, a latin-1 character, so it survives HTTP
    header decoding) but int() refuses it: unauthenticated, it must be a 401, never a 500."""
    dev = enroll()
    method = "POST" if route == "heartbeat" else "GET"
    r = dev.request(method, f"/api/v1/devices/{dev.id}/{route}", {} if method == "POST" else None,
                    headers={"X-Edgepack-Timestamp": "1\u00b2"})
    assert r.status_code == 401 and r.json["error"] == "MissingAuthError", r.get_data()


@pytest.mark.parametrize("query", ["/devices?limit=\u00b2", "/audit?page=\u00b2", "/audit?per_page=\u00b2",
                                   "/audit?page=" + "9" * 5000])
def test_numeric_query_parameters_that_int_refuses_are_ignored_not_500(admin, query):
    """'\u00b2' passes str.isdigit() but not int(); so does a number past int()'s 4300-digit limit."""
    r = admin.get(query)
    assert r.status_code == 200, r.get_data()



def test_a_target_name_whose_version_overflows_the_integer_column_is_not_found_not_500(admin, make_bundle, enroll):
    """PostgreSQL's INTEGER is 32-bit: looking up version 999999999999 was a driver error, a 500."""
    lab = enroll("lab")
    assert admin.upload(make_bundle(1)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "lab", "waves": [100]})
    assert r.status_code == 201, r.json
    target = lab.assignment().json["release"]["target"]
    assert target.endswith("-1.edgepack"), target
    r = lab.request("GET", f"/tuf/targets/{target.removesuffix('-1.edgepack')}-{'9' * 12}.edgepack")
    assert r.status_code in (403, 404), (r.status_code, r.get_data())
