"""Enrollment, device authentication and authorization, admin tokens, releases (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from edgepack import generate_key


def test_enrollment_token_is_one_time_and_puts_the_device_in_its_group(client, admin):
    token = admin.enroll_token("lab", tags={"site": "north"})
    key = generate_key()
    body = {"token": token, "public_key": key.public.raw.hex(), "name": "cam-1", "tags": {"floor": "2"}}
    first = client.post("/api/v1/enroll", json=body)
    assert first.status_code == 201 and first.json["group"] == "lab"
    again = client.post("/api/v1/enroll", json={**body, "public_key": generate_key().public.raw.hex()})
    assert again.status_code == 401 and again.json["error"] == "AuthError"
    dev = admin.get(f"/devices/{first.json['device_id']}").json
    assert dev["group"] == "lab" and dev["tags"] == {"site": "north", "floor": "2"}
    assert admin.get("/devices?tag=site:north").json["devices"][0]["id"] == dev["id"]


def test_expired_enrollment_token_is_refused(client, admin, fleet):
    from sqlalchemy import update

    from fleet_server._models import EnrollmentToken

    token = admin.enroll_token()
    with fleet.db.write() as s:
        s.execute(update(EnrollmentToken).values(expires_at=time.time() - 1))
    r = client.post("/api/v1/enroll", json={"token": token, "public_key": generate_key().public.raw.hex()})
    assert r.status_code == 401


def test_admin_api_needs_a_valid_token_and_tokens_are_stored_hashed(client, admin, admin_token, fleet):
    from sqlalchemy import select

    from fleet_server._models import AdminToken

    assert client.get("/api/v1/admin/devices").status_code == 401
    assert client.get("/api/v1/admin/devices", headers={"Authorization": "Bearer epa_wrong"}).status_code == 401
    assert admin.get("/devices").status_code == 200
    with fleet.db.read() as s:
        stored = list(s.scalars(select(AdminToken.token_hash)))
    assert admin_token not in stored and all(len(h) == 64 for h in stored)


def test_revoked_admin_token_stops_working(client, admin):
    new = admin.post("/tokens", {"name": "ci"}).json["token"]
    h = {"Authorization": f"Bearer {new}"}
    assert client.get("/api/v1/admin/groups", headers=h).status_code == 200
    from sqlalchemy import select

    from fleet_server._auth import hash_token
    from fleet_server._models import AdminToken

    with client.application.extensions["edgepack_fleet"].db.read() as s:
        tid = s.scalar(select(AdminToken.id).where(AdminToken.token_hash == hash_token(new)))
    assert admin.post(f"/tokens/{tid}/revoke").status_code == 200
    assert client.get("/api/v1/admin/groups", headers=h).status_code == 401


def test_signed_device_requests_and_heartbeat_update_the_device(enroll, admin):
    dev = enroll()
    r = dev.heartbeat(active_version=3)
    assert r.status_code == 200 and r.json["poll_after_s"] > 0
    info = admin.get(f"/devices/{dev.id}").json
    assert info["active_version"] == 3 and info["online"] and info["state"]["wifi"] is True


def test_replayed_request_is_refused(enroll, client):
    dev = enroll()
    from edgepack._device_auth import sign_request

    path = f"/api/v1/devices/{dev.id}/assignment"
    h = sign_request(dev.key, dev.id, "GET", path, b"")
    assert client.get(path, headers=h).status_code == 200
    again = client.get(path, headers=h)
    assert again.status_code == 401 and again.json["error"] == "ReplayError"


def test_expired_signed_request_is_refused(enroll):
    dev = enroll()
    r = dev.request("GET", f"/api/v1/devices/{dev.id}/assignment", now=time.time() - 3600)
    assert r.status_code == 401 and r.json["error"] == "ClockSkewError"


def test_device_cannot_read_or_write_as_another_device(enroll):
    a, b = enroll(name="a"), enroll(name="b")
    r = a.request("GET", f"/api/v1/devices/{b.id}/assignment")
    assert r.status_code == 403 and r.json["error"] == "ForbiddenError"
    r = a.request("POST", f"/api/v1/devices/{b.id}/reports", {"kind": "crash", "ok": False})
    assert r.status_code == 403
    # claiming to be b while signing with a's key fails the signature check
    r = a.request("GET", f"/api/v1/devices/{b.id}/assignment", as_id=b.id)
    assert r.status_code == 401 and r.json["error"] == "RequestSignatureError"


def test_unknown_device_is_refused(client):
    from edgepack._device_auth import sign_request

    path = "/api/v1/devices/d-nosuchdevice/assignment"
    r = client.get(path, headers=sign_request(generate_key(), "d-nosuchdevice", "GET", path, b""))
    assert r.status_code == 401 and r.json["error"] == "UnknownDeviceError"


def test_release_upload_verifies_the_bundle(admin, make_bundle):
    r = admin.upload(make_bundle(1))
    assert r.status_code == 201 and r.json["version"] == 1 and len(r.json["signed_by"]) == 1
    assert admin.get("/releases").json["releases"][0]["sha256"] == r.json["sha256"]
    dup = admin.upload(make_bundle(1))
    assert dup.status_code == 409


@pytest.mark.parametrize("case,error", [
    ("unsigned", "UnsignedError"),
    ("untrusted", "UntrustedKeyError"),
    ("expired", "ExpiredError"),
    ("tampered", "BadSignatureError"),
    ("not_a_bundle", "CorruptArchiveError"),
])
def test_bad_bundles_are_refused_and_nothing_is_stored(admin, make_bundle, fleet, tmp_path, case, error):
    if case == "unsigned":
        path = make_bundle(2, key=None)
    elif case == "untrusted":
        path = make_bundle(2, key=generate_key())
    elif case == "expired":
        path = make_bundle(2, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
                           expires_in=dt.timedelta(days=1))
    elif case == "tampered":
        from edgepack import open_bundle
        from edgepack._bundle import write_bundle_members

        opened = open_bundle(make_bundle(2))
        doc = dict(opened.manifest_doc, version=3)  # changed after signing; signatures kept
        members = {n: opened.reader.read_member(n, size) for n, (_, size) in opened.manifest.members().items()}
        path = write_bundle_members(tmp_path / "tampered.edgepack", doc, members, [], opened.signatures)
    else:
        path = tmp_path / "junk.edgepack"
        path.write_bytes(b"this is not a zip file" * 10)
    r = admin.upload(path)
    assert r.status_code == 422 and r.json["error"] == error, r.json
    assert admin.get("/releases").json["releases"] == []
    assert not any(p.is_file() for p in (fleet.config.artifacts_dir / "releases").rglob("*")) \
        if (fleet.config.artifacts_dir / "releases").exists() else True


def test_revoked_device_is_refused_and_moving_group_changes_its_assignment(enroll, admin, make_bundle):
    dev = enroll("lab")
    assert admin.upload(make_bundle(1)).status_code == 201
    assert admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "lab",
                                    "waves": [100]}).status_code == 201
    assert dev.assignment().json["release"]["target"] == "groups/lab/digits-1.edgepack"
    r = admin.client.patch(f"/api/v1/admin/devices/{dev.id}", json={"group": "other"}, headers=admin.headers)
    assert r.status_code == 200 and r.json["group"] == "other"
    assert dev.assignment().json == {"release": None, "rollout_id": None}
    admin.client.patch(f"/api/v1/admin/devices/{dev.id}", json={"status": "revoked"}, headers=admin.headers)
    r = dev.heartbeat()
    assert r.status_code == 401 and r.json["error"] == "UnknownDeviceError"


def test_two_racing_enrollments_with_one_token_only_one_wins(app, admin):
    import threading

    token = admin.enroll_token()
    results: list[int] = []

    def go() -> None:
        c = app.test_client()
        r = c.post("/api/v1/enroll", json={"token": token, "public_key": generate_key().public.raw.hex()})
        results.append(r.status_code)

    threads = [threading.Thread(target=go) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) == [201, 401, 401, 401]
