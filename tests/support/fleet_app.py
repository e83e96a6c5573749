"""Fleet-server fixtures shared by tests/fleet, tests/rounds and tests/security:
a release key and trust file, the app on a temp instance dir (database from the
root conftest's ``database_url``), its test client and an admin token.
Import them into a folder's conftest to use them there."""

from __future__ import annotations

import pytest

from edgepack import Trust, generate_key

__all__ = ["admin_token", "app", "client", "fleet", "fleet_config", "release_key", "trust_file"]


@pytest.fixture(scope="session")
def release_key():
    return generate_key()


@pytest.fixture(scope="session")
def trust_file(tmp_path_factory, release_key):
    p = tmp_path_factory.mktemp("trust") / "trust.json"
    Trust.of([release_key.public]).save(p)
    return p


@pytest.fixture
def fleet_config(tmp_path, database_url, trust_file):
    from fleet_server import FleetConfig

    return FleetConfig(instance_dir=tmp_path / "instance", database_url=database_url,
                       secret_key="s" * 48, release_trust=trust_file, tick_interval_s=0, report_tick_interval_s=0,
                       testing=True)


@pytest.fixture
def app(fleet_config):
    from fleet_server import create_app

    app = create_app(fleet_config)
    yield app
    app.extensions["edgepack_fleet"].db.dispose()


@pytest.fixture
def fleet(app):
    return app.extensions["edgepack_fleet"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin_token(fleet):
    from fleet_server._bp_admin import create_admin_token

    return create_admin_token(fleet.db, "test-admin")
