"""Schema migrations (Alembic): every revision runs on SQLite and PostgreSQL, and the result is the models' schema."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

import fleet_server._db  # noqa: F401  (imports every model module into Base.metadata)
from edgepack import ConfigError
from fleet_server._migrate import _config, current_revision, head_revision, upgrade
from fleet_server._models import Base


@pytest.fixture
def engine(database_url):
    eng = create_engine(database_url)
    yield eng
    eng.dispose()


def _diff(engine) -> list:
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), Base.metadata)


def test_migrating_an_empty_database_gives_exactly_the_models_schema(engine) -> None:
    assert upgrade(engine) == (None, head_revision())
    assert _diff(engine) == []


def test_upgrading_twice_changes_nothing(engine) -> None:
    upgrade(engine)
    assert upgrade(engine) == (head_revision(), head_revision())


def test_every_revision_downgrades_and_upgrades_again(engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        command.downgrade(_config(conn), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert _diff(engine) == []


def test_a_schema_1_database_from_before_migrations_is_stamped_and_upgraded_keeping_its_rows(engine) -> None:
    with engine.begin() as conn:  # what `edgepack fleet init` of the first release left behind
        command.upgrade(_config(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(text("INSERT INTO groups (id, name, created_at) VALUES (1, 'field', 0)"))
    assert upgrade(engine) == ("0001", head_revision())
    assert _diff(engine) == []
    with engine.begin() as conn:
        assert conn.execute(text("SELECT name FROM groups")).scalars().all() == ["field"]
        assert current_revision(conn) == head_revision()


def test_the_upgraded_audit_log_refuses_update_and_delete(engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_log (seq, at, actor, action, target, reason, details, prev_hash, hash) "
                          "VALUES (1, 0, 'cli', 'x', 't', '', '{}', :z, :h)"), {"z": "0" * 64, "h": "1" * 64})
    for stmt in ("UPDATE audit_log SET reason = 'rewritten'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(stmt))


def test_a_database_stamped_by_a_newer_release_is_refused_untouched(engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(ConfigError, match="9999"):
        upgrade(engine)
    with engine.begin() as conn:
        assert current_revision(conn) == "9999"


def test_tables_from_before_migrations_with_an_unknown_schema_version_are_refused(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256))"))
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', '7')"))
    with pytest.raises(ConfigError, match="schema version '7'"):
        upgrade(engine)
