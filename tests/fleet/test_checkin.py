"""The check-in hot path (fleet_server._checkin): one transaction per signed request, a per-worker
key cache that never caches revocation, replays refused across workers, nothing acknowledged lost.

Two apps on one database stand for two gunicorn workers (each has its own key cache and
connections); the last test runs the real thing: gunicorn with two workers on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from support.server import CLI, Server, http_json

from edgepack import generate_key
from edgepack._device_auth import sign_request
from fleet_server._models import Nonce
from fleet_server._publish import release_target


@pytest.fixture
def second_worker(fleet_config):
    """Another app on the same database: what a second gunicorn worker is."""
    from fleet_server import create_app

    app = create_app(fleet_config)
    yield app
    app.extensions["edgepack_fleet"].db.dispose()


def _heartbeat(device, active_version=1, state=None):
    path = f"/api/v1/devices/{device.id}/heartbeat"
    body = json.dumps({"active_version": active_version,
                       "state": state or {"charging": True, "idle": True, "wifi": True}}).encode()
    return path, body, {"Content-Type": "application/json", **sign_request(device.key, device.id, "POST", path, body)}


def _nonces(fleet) -> int:
    with fleet.db.read() as s:
        return s.scalar(select(func.count()).select_from(Nonce))


def _device(admin, device_id):
    r = admin.get(f"/devices/{device_id}")
    assert r.status_code == 200, r.json
    return r.json


def test_a_replay_is_refused_by_another_worker(client, enroll, second_worker):
    dev = enroll()
    path, body, h = _heartbeat(dev)
    assert client.post(path, data=body, headers=h).status_code == 200
    r = second_worker.test_client().post(path, data=body, headers=h)
    assert r.status_code == 401 and r.json["error"] == "ReplayError"


def test_revocation_takes_effect_at_once_in_a_worker_with_the_key_cached(client, fleet, admin, enroll,
                                                                          second_worker):
    dev = enroll()
    assert dev.heartbeat(1).status_code == 200
    assert dev.id in fleet.checkins._keys  # this worker now verifies without reading the key
    other = second_worker.test_client()
    r = other.patch(f"/api/v1/admin/devices/{dev.id}", json={"status": "revoked"}, headers=admin.headers)
    assert r.status_code == 200 and r.json["status"] == "revoked"
    before = _nonces(fleet)
    for call in (lambda: dev.heartbeat(1), dev.assignment, lambda: dev.report("status", 1)):
        r = call()
        assert r.status_code == 401 and r.json["error"] == "UnknownDeviceError", r.json
    assert _nonces(fleet) == before  # a revoked device's requests write nothing
    other.patch(f"/api/v1/admin/devices/{dev.id}", json={"status": "active"}, headers=admin.headers)
    assert dev.heartbeat(1).status_code == 200


def test_heartbeat_fields_are_stored_and_an_unchanged_heartbeat_writes_nothing_new(fleet, enroll, admin):
    fleet.checkins._seen_every_s = 3600  # last-seen is not due again during this test, however slow the machine
    dev = enroll()
    assert dev.heartbeat(3).status_code == 200
    d = _device(admin, dev.id)
    assert d["active_version"] == 3 and d["state"] == {"charging": True, "idle": True, "wifi": True}
    seen = d["last_seen_at"]
    assert seen is not None
    assert dev.heartbeat(3).status_code == 200  # same fields, within seen_every_s: no device write
    assert _device(admin, dev.id)["last_seen_at"] == seen
    r = dev.request("POST", f"/api/v1/devices/{dev.id}/heartbeat",
                    {"active_version": 4, "state": {"charging": False, "idle": True, "wifi": False}})
    assert r.status_code == 200
    d = _device(admin, dev.id)
    assert d["active_version"] == 4 and d["state"] == {"charging": False, "idle": True, "wifi": False}
    assert d["last_seen_at"] >= seen


def test_a_checkin_is_one_transaction_with_one_commit(fleet, enroll):
    if not fleet.db.is_sqlite:
        pytest.skip("statement tracing uses sqlite3's trace callback")
    dev = enroll()
    assert dev.heartbeat(1).status_code == 200  # warms the key cache and this thread's connection
    statements: list[str] = []
    fleet.checkins._connection().set_trace_callback(statements.append)
    fleet.checkins._seen_every_s = 0  # force the last-seen write too: the worst case
    fleet.checkins._prune_at = float("inf")  # the prune (every 0.5 s) has its own test
    try:
        assert dev.heartbeat(2).status_code == 200
    finally:
        fleet.checkins._connection().set_trace_callback(None)
    verbs = [s.split()[0].upper() for s in statements]
    assert verbs == ["BEGIN", "INSERT", "SELECT", "UPDATE", "COMMIT"], statements


def test_assignment_reads_the_release_in_the_checkin(client, admin, enroll, make_bundle):
    dev = enroll()
    assert dev.assignment().json == {"release": None, "rollout_id": None}
    assert admin.upload(make_bundle(1)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default", "waves": [100]})
    assert r.status_code == 201, r.json
    a = dev.assignment().json
    assert a["rollout_id"] == r.json["id"]
    assert (a["release"]["name"], a["release"]["version"], a["release"]["kind"]) == ("digits", 1, "bundle")
    assert a["release"]["target"] == release_target("default", SimpleNamespace(kind="bundle", name="digits",
                                                                              version=1))


def test_a_malformed_heartbeat_is_refused_after_authentication(client, enroll):
    dev = enroll()
    path = f"/api/v1/devices/{dev.id}/heartbeat"
    r = client.post(path, data=b"{not json", content_type="application/json")
    assert r.status_code == 401  # unsigned: authentication first, the body is never judged
    h = sign_request(dev.key, dev.id, "POST", path, b"{not json")
    r = client.post(path, data=b"{not json", headers=h, content_type="application/json")
    assert r.status_code == 400 and r.json["error"] == "BadRequestError"


def test_a_bad_signature_and_an_unknown_device_write_no_nonce(client, fleet, enroll):
    dev = enroll()
    before = _nonces(fleet)
    path, body, h = _heartbeat(dev)
    h["X-Edgepack-Signature"] = sign_request(generate_key(), dev.id, "POST", path, body)["X-Edgepack-Signature"]
    assert client.post(path, data=body, headers=h).status_code == 401
    ghost = generate_key()
    gpath = "/api/v1/devices/d-0000000000000000/heartbeat"
    r = client.post(gpath, data=body, headers={"Content-Type": "application/json",
                                               **sign_request(ghost, "d-0000000000000000", "POST", gpath, body)})
    assert r.status_code == 401 and r.json["error"] == "UnknownDeviceError"
    assert _nonces(fleet) == before


def test_nonces_past_their_window_are_pruned(fleet, enroll):
    dev = enroll()
    now = int(time.time())
    window = fleet.config.max_skew_s + 1
    with fleet.db.write() as s:  # signed 1 s too long ago to be accepted (or replayed) any more
        s.add_all([Nonce(ts=now - window - 1, nonce=f"{i:032x}", device_id=dev.id) for i in range(50)])
        s.add(Nonce(ts=now - window + 30, nonce="f" * 32, device_id=dev.id))  # still inside the window
    fleet.checkins._prune_at = 0.0
    assert dev.heartbeat(1).status_code == 200
    with fleet.db.read() as s:
        left = set(s.scalars(select(Nonce.nonce)))
    assert "f" * 32 in left and not any(n.startswith("0" * 28) for n in left)
    assert len(left) == 2  # the live one planted above and this heartbeat's


@pytest.mark.slow
def test_the_same_signed_request_to_two_gunicorn_workers_is_accepted_once(tmp_path):
    inst = tmp_path / "instance"
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    auth = {"Authorization": f"Bearer {json.loads(out.stdout)['admin_token']}", "Content-Type": "application/json"}
    server = Server(inst, workers=2, threads=2)
    server.start()
    try:
        assert len(server.pids()) == 3  # master + 2 workers
        key = generate_key()
        _, tok = http_json("POST", f"{server.url}/api/v1/admin/enrollment-tokens", b"{}", auth)
        st, d = http_json("POST", f"{server.url}/api/v1/enroll",
                          json.dumps({"token": tok["token"], "public_key": key.public.raw.hex()}).encode(),
                          {"Content-Type": "application/json"})
        assert st == 201
        did = d["device_id"]
        path = f"/api/v1/devices/{did}/heartbeat"
        body = b'{"active_version": 1}'
        h = {"Content-Type": "application/json", **sign_request(key, did, "POST", path, body)}
        results: list[tuple[int, object]] = []
        lock = threading.Lock()

        def send() -> None:  # a fresh connection each: the kernel spreads them over both workers
            r = http_json("POST", server.url + path, body, h, timeout=60)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=send) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(st for st, _ in results) == [200] + [401] * 23
        assert all(b["error"] == "ReplayError" for st, b in results if st == 401)
    finally:
        server.stop()


def _count_view_calls(app, endpoint: str = "device.heartbeat") -> list[int]:
    calls = [0]
    view = app.view_functions[endpoint]

    def counted(*a, **kw):
        calls[0] += 1
        return view(*a, **kw)

    app.view_functions[endpoint] = counted
    return calls


def test_the_fast_path_answers_an_accepted_heartbeat_and_flask_answers_errors(app, client, enroll):
    dev = enroll()
    calls = _count_view_calls(app)
    before = _heartbeats_counted(client)
    path, body, h = _heartbeat(dev)
    assert client.post(path, data=body, headers=h).status_code == 200
    assert calls[0] == 0  # answered before Flask
    r = client.post(path, data=body, headers=h)
    assert r.status_code == 401 and r.json["error"] == "ReplayError" and calls[0] == 1
    assert _heartbeats_counted(client) == before + 1  # the fast path's answer is in the metrics too


def _heartbeats_counted(client) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    m = re.search(r'^edgepack_http_requests_total\{endpoint="device.heartbeat",status="200"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_heartbeat_the_fast_path_declines_reaches_flask_with_its_body(app, client, enroll, admin):
    dev = enroll()
    calls = _count_view_calls(app)
    path = f"/api/v1/devices/{dev.id}/heartbeat?from=test"  # a query string: not the fast path's shape
    body = b'{"active_version": 7}'
    r = client.post(path, data=body, headers={"Content-Type": "application/json",
                                              **sign_request(dev.key, dev.id, "POST", path, body)})
    assert r.status_code == 200 and calls[0] == 1  # the signature covers the body: Flask got all of it
    assert _device(admin, dev.id)["active_version"] == 7


def test_the_fast_path_answers_exactly_like_flask(fleet_config, client, enroll):
    import dataclasses

    from fleet_server import create_app

    slow = create_app(dataclasses.replace(fleet_config, checkin_fast_path=False))
    try:
        dev = enroll()
        answers = []
        for c in (client, slow.test_client()):
            path, body, h = _heartbeat(dev)
            r = c.post(path, data=body, headers=h)
            answers.append((r.status_code, r.get_data(), sorted(r.headers.items())))
        assert answers[0] == answers[1]
    finally:
        slow.extensions["edgepack_fleet"].db.dispose()


def test_a_database_connection_lost_under_the_fast_path_is_answered_by_flask(app, fleet, client, enroll):
    """A dead DBAPI connection (PostgreSQL restarted, failed over, or an admin's pg_terminate_backend)
    makes the check-in raise a driver error, not an EdgepackError. The middleware must hand the
    request to Flask, which retries on a fresh connection, instead of letting the exception escape
    to the WSGI server (a bare 500 without JSON or security headers)."""
    if fleet.db.is_sqlite:
        pytest.skip("an embedded SQLite has no server side that can drop the connection")
    dev = enroll()
    assert dev.heartbeat(1).status_code == 200  # warms the key cache and this thread's connection
    pid = fleet.checkins._connection().info.backend_pid
    with fleet.db.engine.connect() as other:
        other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    calls = _count_view_calls(app)
    path, body, h = _heartbeat(dev, active_version=2)
    r = client.post(path, data=body, headers=h)
    assert r.status_code == 200 and r.json == {"poll_after_s": fleet.config.poll_after_s}
    assert calls[0] == 1 and r.headers["X-Frame-Options"] == "DENY"


def test_a_connection_closed_while_idle_is_replaced_instead_of_failing_every_later_check_in(fleet, client, enroll):
    """``cursor()`` on a closed connection raises before the transaction starts; the connection must
    be dropped there too, or every later check-in on that worker thread fails the same way."""
    dev = enroll()
    assert dev.heartbeat(1).status_code == 200  # this thread now holds a connection
    fleet.checkins._connection().close()  # closed behind the store's back (server restart, idle timeout)
    codes = []
    for v in (2, 3):
        path, body, h = _heartbeat(dev, active_version=v)
        codes.append(client.post(path, data=body, headers=h).status_code)
    assert codes[-1] == 200, codes


def test_a_check_in_signed_after_2038_is_stored(fleet, enroll):
    """Unix seconds pass 2**31 on 2038-01-19; the nonce's timestamp column must hold them (PostgreSQL's
    INTEGER is 32-bit: the insert was an out-of-range driver error, so every check-in would fail)."""
    dev = enroll()
    t = 2**31 + 60
    row = fleet.checkins.check_in(dev.id, dev.key.public, "c" * 32, t, float(t))
    assert row is not None and row.id == dev.id
    assert fleet.checkins.check_in(dev.id, dev.key.public, "c" * 32, t, float(t)) is None  # still a replay
