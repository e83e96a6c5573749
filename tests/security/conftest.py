"""Fixtures for the HTTP-surface security tests: a real app on a temp instance dir
(SQLite), an admin token, a signed release bundle and a logged-in dashboard client."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest

from edgepack import BundleBuilder, Trust, generate_key


@pytest.fixture(scope="session")
def release_key():
    return generate_key()


@pytest.fixture(scope="session")
def trust_file(tmp_path_factory, release_key):
    p = tmp_path_factory.mktemp("trust") / "trust.json"
    Trust.of([release_key.public]).save(p)
    return p


@pytest.fixture
def bundle(tmp_path, release_key) -> Path:
    b = BundleBuilder("digits", 1, expires_in=dt.timedelta(days=30),
                      io={"inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}]})
    b.add_artifact("model.onnx", os.urandom(2048), format="onnx", precision="fp32")
    return b.write(tmp_path / "digits-1.edgepack", [release_key])


@pytest.fixture
def fleet_config(tmp_path, trust_file):
    from fleet_server import FleetConfig

    return FleetConfig(instance_dir=tmp_path / "instance", database_url=f"sqlite:///{tmp_path / 'fleet.db'}",
                       secret_key="s" * 48, release_trust=trust_file, tick_interval_s=0, report_tick_interval_s=0,
                       testing=True)


@pytest.fixture
def app(fleet_config):
    from fleet_server import create_app

    app = create_app(fleet_config)
    yield app
    app.extensions["edgepack_fleet"].db.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin_token(app):
    from fleet_server._bp_admin import create_admin_token

    return create_admin_token(app.extensions["edgepack_fleet"].db, "sec-admin")


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert m, "the page has no CSRF token field"
    return m.group(1)


@pytest.fixture
def logged_in(client, admin_token):
    """A test client with a dashboard session; returns (client, csrf token of the session)."""
    token = csrf_of(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"token": admin_token, "csrf_token": token})
    assert r.status_code == 302, r.get_data(as_text=True)
    return client, csrf_of(client.get("/").get_data(as_text=True))
