"""Schema migrations with Alembic, run in-process on the server's own engine.

Revisions live in ``fleet_server/migrations/versions`` (0001 is schema version 1,
the first release's). ``upgrade`` brings any database to the newest revision:

- an empty database gets every revision in order;
- a database created before migrations existed (``meta.schema_version`` = 1 and no
  ``alembic_version`` table) holds exactly revision 0001, so it is stamped there first;
- a database stamped with a revision this release does not know (made by a newer
  edgepack) is refused, never touched.

Everything runs in one transaction: PostgreSQL rolls back DDL on failure; on SQLite,
Alembic's batch mode copies a table before changing it, so a failed step leaves the
old table in place.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from edgepack import ConfigError

__all__ = ["LEGACY_REVISION", "current_revision", "head_revision", "upgrade"]

LEGACY_REVISION = "0001"
"""The revision a database made before migrations existed (schema version 1) is stamped at."""

_SCRIPTS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock that serializes concurrent upgrades (gunicorn workers start at once);
#: SQLite needs none: the server's write engine opens every transaction with BEGIN IMMEDIATE.
_PG_LOCK = 0x6570_6d69_6772_61  # "epmigra"


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this release knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None  # there is always at least 0001
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, *, where: str = "database") -> tuple[str | None, str]:
    """Upgrade the database to :func:`head_revision`; returns ``(from_revision, to_revision)``.

    Raises:
        ConfigError: if the database is stamped with a revision this release does not
            know, or holds tables from before migrations that are not schema version 1.
    """
    scripts = ScriptDirectory.from_config(_config())
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        before = current_revision(conn)
        if before is None and inspect(conn).has_table("meta"):
            version = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
            if version != "1":
                raise ConfigError(f"the database has schema version {version!r} but no migration history",
                                  where=where, hint="restore it from a backup made by `edgepack fleet backup`")
            command.stamp(_config(conn), LEGACY_REVISION)
            before = LEGACY_REVISION
        if before is not None and before not in {s.revision for s in scripts.walk_revisions()}:
            raise ConfigError(f"the database is at schema revision {before}, which this edgepack does not know",
                              where=where, hint="it was upgraded by a newer edgepack; run that release")
        command.upgrade(_config(conn), "head")
        return before, head_revision()
