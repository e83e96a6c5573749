"""Rate limits on credential guessing (issue 8 item 6): enrollment, dashboard login and
admin-token checks, per client IP, in a fixed window that resets, configurable (0 = off)."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest

from edgepack import generate_key

A = {"REMOTE_ADDR": "10.0.0.1"}
B = {"REMOTE_ADDR": "10.0.0.2"}


@pytest.fixture
def make_app(fleet_config):
    """make_app(**config overrides) -> a real app on its own SQLite database."""
    from fleet_server import create_app

    apps = []

    def make(**kw):
        app = create_app(dataclasses.replace(fleet_config, **kw))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["edgepack_fleet"].db.dispose()


def _bad_enroll(client, env, i=0):
    return client.post("/api/v1/enroll", json={"token": f"ept_guess{i}", "public_key": "ab" * 32},
                       environ_base=env)


def _enroll_token(app) -> str:
    from fleet_server._bp_admin import create_enrollment_token

    return create_enrollment_token(app.extensions["edgepack_fleet"], "default", {}, 3600)["token"]


def test_the_enrollment_window_resets(make_app):
    app = make_app(enroll_failure_limit=3, rate_limit_window_s=1.0)
    c = app.test_client()
    assert [_bad_enroll(c, A, i).status_code for i in range(4)] == [401, 401, 401, 429]
    r = _bad_enroll(c, A)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert _bad_enroll(c, A).status_code == 401  # a new window: counted afresh, not refused
    assert [_bad_enroll(c, A, i).status_code for i in range(3)] == [401, 401, 429]


def test_limits_are_per_client_ip(make_app):
    app = make_app(enroll_failure_limit=3)
    c = app.test_client()
    assert [_bad_enroll(c, A, i).status_code for i in range(4)] == [401, 401, 401, 429]
    assert _bad_enroll(c, B).status_code == 401  # the other client is not locked out ...
    r = c.post("/api/v1/enroll", json={"token": _enroll_token(app), "public_key": generate_key().public.raw.hex()},
               environ_base=B)
    assert r.status_code == 201, r.json  # ... and its valid enrollment goes through
    r = c.post("/api/v1/enroll", json={"token": _enroll_token(app), "public_key": generate_key().public.raw.hex()},
               environ_base=A)
    assert r.status_code == 429  # while the locked-out client is refused even with a valid token


def test_successful_enrollments_from_one_ip_are_never_limited(make_app):
    """A factory line enrolls many devices from one address (benchmarks/bench_fleet.py: 10,000)."""
    app = make_app(enroll_failure_limit=2)
    c = app.test_client()
    for _ in range(25):
        r = c.post("/api/v1/enroll", json={"token": _enroll_token(app),
                                           "public_key": generate_key().public.raw.hex()}, environ_base=A)
        assert r.status_code == 201, r.json
    assert _bad_enroll(c, A).status_code == 401  # and its first failure is still only a failure


def test_malformed_enrollments_are_not_counted_as_guesses(make_app):
    app = make_app(enroll_failure_limit=2)
    c = app.test_client()
    for _ in range(5):
        assert c.post("/api/v1/enroll", json={"token": 5}, environ_base=A).status_code == 400
    assert _bad_enroll(c, A).status_code == 401


def test_wrong_admin_tokens_are_limited_but_missing_ones_are_not_counted(make_app):
    from fleet_server._bp_admin import create_admin_token

    app = make_app(admin_auth_failure_limit=3)
    real = create_admin_token(app.extensions["edgepack_fleet"].db, "ok")
    c = app.test_client()
    for _ in range(10):  # no credential at all is not a guess
        assert c.get("/api/v1/admin/devices", environ_base=A).status_code == 401
    codes = [c.get("/api/v1/admin/devices", headers={"Authorization": f"Bearer epa_wrong{i}"},
                   environ_base=A).status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    r = c.get("/api/v1/admin/devices", headers={"Authorization": f"Bearer {real}"}, environ_base=A)
    assert r.status_code == 429 and r.is_json and int(r.headers["Retry-After"]) > 0
    r = c.get("/api/v1/admin/devices", headers={"Authorization": f"Bearer {real}"}, environ_base=B)
    assert r.status_code == 200


def test_scopes_are_counted_separately(make_app):
    app = make_app(enroll_failure_limit=2, login_failure_limit=2)
    c = app.test_client()
    assert [_bad_enroll(c, A, i).status_code for i in range(3)] == [401, 401, 429]
    html = c.get("/login", environ_base=A).get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)
    r = c.post("/login", data={"token": "epa_wrong", "csrf_token": csrf}, environ_base=A)
    assert r.status_code == 401  # a locked-out enrollment does not lock the dashboard


def test_a_limit_of_zero_turns_the_limit_off(make_app):
    app = make_app(enroll_failure_limit=0)
    c = app.test_client()
    assert {_bad_enroll(c, A, i).status_code for i in range(30)} == {401}


def test_the_lockout_is_an_audit_entry(make_app):
    from sqlalchemy import select

    from fleet_server._models_audit import AuditEntry

    app = make_app(enroll_failure_limit=2)
    c = app.test_client()
    for i in range(5):
        _bad_enroll(c, A, i)
    with app.extensions["edgepack_fleet"].db.read() as s:
        rows = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "ratelimit.block")))
    assert len(rows) == 1 and rows[0].target == "enroll:10.0.0.1" and rows[0].actor == "system"


def test_limits_come_from_the_environment(monkeypatch, tmp_path):
    from fleet_server import load_config

    monkeypatch.setenv("EDGEPACK_ENROLL_FAILURE_LIMIT", "7")
    monkeypatch.setenv("EDGEPACK_LOGIN_FAILURE_LIMIT", "0")
    monkeypatch.setenv("EDGEPACK_ADMIN_AUTH_FAILURE_LIMIT", "9")
    monkeypatch.setenv("EDGEPACK_RATE_LIMIT_WINDOW_S", "30")
    cfg = load_config(tmp_path)
    assert (cfg.enroll_failure_limit, cfg.login_failure_limit, cfg.admin_auth_failure_limit,
            cfg.rate_limit_window_s) == (7, 0, 9, 30.0)


@pytest.mark.parametrize("field,value", [("enroll_failure_limit", -1), ("rate_limit_window_s", 0)])
def test_bad_limits_are_refused(fleet_config, field, value):
    from edgepack import ConfigError

    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(fleet_config, **{field: value})
