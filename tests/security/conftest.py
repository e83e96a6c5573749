"""Fixtures for the HTTP-surface security tests: a real app on a temp instance dir
(SQLite), an admin token, a signed release bundle and a logged-in dashboard client."""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pytest
from rounds.conftest import base_bundle, champion, digits, eval_npz  # noqa: F401  (a digits model with W, b and its eval set)
from support.fleet_app import admin_token, app, client, fleet, fleet_config, release_key, trust_file  # noqa: F401  (fixtures)

from edgepack import BundleBuilder


@pytest.fixture
def database_url(tmp_path):
    """The security tests check the HTTP surface, not the database: SQLite only."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"








@pytest.fixture
def bundle(tmp_path, release_key) -> Path:
    b = BundleBuilder("digits", 1, expires_in=dt.timedelta(days=30),
                      io={"inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}]})
    b.add_artifact("model.onnx", os.urandom(2048), format="onnx", precision="fp32")
    return b.write(tmp_path / "digits-1.edgepack", [release_key])














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
