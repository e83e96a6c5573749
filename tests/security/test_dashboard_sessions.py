"""Dashboard sessions end server-side: after ``dashboard_session_idle_s`` without a dashboard
request, and ``dashboard_session_max_s`` after login whatever the activity (residual risk R11 of
docs/threat-model.md, closed). Real time values: the test config sets lifetimes of under a second."""

from __future__ import annotations

import dataclasses
import time

import pytest

from edgepack import ConfigError

from .conftest import csrf_of


@pytest.fixture
def short_client(fleet_config, admin_token):
    """A client of an app whose sessions last ``idle`` / ``max`` seconds; returns a login function."""
    from fleet_server import create_app

    apps = []

    def make(idle: float, max_s: float):
        app = create_app(dataclasses.replace(fleet_config, dashboard_session_idle_s=idle,
                                             dashboard_session_max_s=max_s))
        apps.append(app)
        c = app.test_client()
        r = c.post("/login", data={"token": admin_token, "csrf_token": csrf_of(c.get("/login").get_data(True))})
        assert r.status_code == 302, r.get_data(True)
        assert c.get("/").status_code == 200
        return c

    yield make
    for app in apps:
        app.extensions["edgepack_fleet"].db.dispose()


def _cookie(client) -> str:
    return client.get_cookie("edgepack_session").value


def _expired_to_login(client, path: str, words: str) -> None:
    r = client.get(path)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next="), (r.status_code, r.headers)
    page = client.get("/login").get_data(as_text=True)
    assert "Your dashboard session has expired" in page and words in page, page


def test_an_idle_session_expires_and_its_stolen_cookie_is_refused_afterwards(short_client):
    c = short_client(1.0, 60)
    for _ in range(4):  # activity keeps it alive past the idle limit in total (4 x 0.3 s > 1 s)
        time.sleep(0.3)
        assert c.get("/devices").status_code == 200
    stolen = _cookie(c)
    time.sleep(1.3)
    _expired_to_login(c, "/devices", "without activity")
    assert c.get("/").status_code == 302  # the session was cleared: no way back without the token
    c.set_cookie("edgepack_session", stolen)  # a copy taken while it was live is just as expired
    _expired_to_login(c, "/", "without activity")


def test_an_active_session_still_ends_at_its_absolute_limit(short_client):
    c = short_client(1.0, 2.0)
    start = time.time()
    while time.time() - start < 1.7:  # never idle for more than 0.3 s
        assert c.get("/").status_code == 200
        time.sleep(0.3)
    time.sleep(max(0.0, 2.2 - (time.time() - start)))
    _expired_to_login(c, "/", "limit of 2 s after login")


def test_an_expired_session_cannot_post_a_dashboard_form(short_client):
    c = short_client(0.3, 60)
    csrf = csrf_of(c.get("/").get_data(as_text=True))
    time.sleep(0.5)
    r = c.post("/logout", data={"csrf_token": csrf})
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")


def test_a_session_without_its_login_time_is_refused(client, admin_token, fleet):
    """A cookie signed before sessions carried their times (or without them) is not a session."""
    from fleet_server._auth import hash_token
    from fleet_server._models import AdminToken

    with fleet.db.read() as s:
        row = s.query(AdminToken).filter_by(token_hash=hash_token(admin_token)).one()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["admin_hash"] = row.id, row.token_hash
    _expired_to_login(client, "/", "Log in again")


def test_lifetimes_default_to_8_h_idle_and_24_h_and_come_from_the_environment(tmp_path, monkeypatch):
    from fleet_server import FleetConfig, load_config

    assert (FleetConfig().dashboard_session_idle_s, FleetConfig().dashboard_session_max_s) == (8 * 3600, 24 * 3600)
    monkeypatch.setenv("EDGEPACK_DASHBOARD_SESSION_IDLE_S", "900")
    monkeypatch.setenv("EDGEPACK_DASHBOARD_SESSION_MAX_S", "3600")
    cfg = load_config(tmp_path)
    assert (cfg.dashboard_session_idle_s, cfg.dashboard_session_max_s) == (900, 3600)
    monkeypatch.setenv("EDGEPACK_DASHBOARD_SESSION_IDLE_S", "0")
    with pytest.raises(ConfigError, match="dashboard_session_idle_s must be positive"):
        load_config(tmp_path)
