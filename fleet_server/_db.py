"""Database engine and transactions (SQLAlchemy 2).

SQLite (the embedded default) runs in WAL mode so readers never block the
writer, with ``busy_timeout`` so concurrent gunicorn workers queue instead of
failing. Write transactions start with ``BEGIN IMMEDIATE``: a deferred
transaction that reads and then writes can hit SQLITE_BUSY_SNAPSHOT when
another worker commits in between, which busy_timeout does not retry.
Every write happens inside ``with db.write() as s:`` so a crash (even SIGKILL)
leaves either the whole transaction or none of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgepack import ConfigError

from . import _models_audit, _models_rounds  # noqa: F401  (their tables join Base.metadata, which the migrations are checked against)
from ._audit import record
from ._migrate import upgrade as migrate
from ._models import SCHEMA_VERSION, Meta

#: older schema versions this release upgrades in place (``create_schema``); anything else is refused
UPGRADABLE = tuple(str(v) for v in range(1, SCHEMA_VERSION))

__all__ = ["Database"]


def _sqlite_engine(url: str, synchronous: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Two session factories over one database: ``read()`` and ``write()``."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        try:
            if self.is_sqlite:
                path = url.split("///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine = _sqlite_engine(url, sqlite_synchronous, immediate=True)
                self._read_engine = _sqlite_engine(url, sqlite_synchronous, immediate=False)
            else:
                if url.startswith("postgresql://"):
                    url = "postgresql+psycopg://" + url[len("postgresql://"):]
                self.engine = create_engine(url, pool_pre_ping=True)
                self._read_engine = self.engine
        except (SQLAlchemyError, ImportError) as e:
            raise ConfigError(f"cannot open database {self.safe_url}: {e}", where="EDGEPACK_DATABASE_URL") from e
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.RLock()
        self._on_dispose: list[Callable[[], None]] = []
        self._read = sessionmaker(self._read_engine, expire_on_commit=False)

    @property
    def write_lock(self) -> Any:
        """The per-process lock SQLite writers queue on (see ``write``); the check-in hot path uses it too."""
        return self._write_lock

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        head, sep, tail = self.url.partition("@")
        return (head.split(":")[0] + "://***@" + tail) if sep else self.url

    def create_schema(self) -> None:
        """Run the Alembic migrations up to this release's head, record the schema version.

        A fresh database gets every revision; one from before migrations existed
        (schema version 1) is stamped at revision 0001 and upgraded (``_migrate``).
        The 1 -> 2 upgrade adds the audit log with its triggers, and the upgrade
        itself is the log's first row. See docs/fleet.md ("Schema versions").

        Raises:
            ConfigError: if the database holds a schema version or revision this release cannot upgrade.
        """
        migrate(self.engine, where=self.safe_url)
        with self.write() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif row.value in UPGRADABLE:
                record(s, "system", "schema.upgrade", "database", f"schema {row.value} -> {SCHEMA_VERSION}",
                       {"from": int(row.value), "to": SCHEMA_VERSION})
                row.value = str(SCHEMA_VERSION)
            elif row.value != str(SCHEMA_VERSION):
                raise ConfigError(f"the database has schema version {row.value}; this server needs {SCHEMA_VERSION}",
                                  where=self.safe_url, hint="use the edgepack release that matches this database")

    def check_schema(self, *, upgrade: bool = True) -> None:
        """Raises ConfigError unless the database was initialised with this schema version.

        With ``upgrade`` (the default), a known older version is upgraded in place first.
        """
        try:
            with self.read() as s:
                value = s.scalar(select(Meta.value).where(Meta.key == "schema_version"))
        except SQLAlchemyError:
            value = None  # no meta table: never initialised
        if upgrade and value is not None:
            self.create_schema()  # migrates a known older revision to head; refuses an unknown one
            value = str(SCHEMA_VERSION)
        if value != str(SCHEMA_VERSION):
            raise ConfigError("the database is not initialised or has another schema version",
                              where=self.safe_url, hint="run 'edgepack fleet init'")

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any exception."""
        if self.is_sqlite:
            # One writer per process at a time: threads queue on a cheap lock instead of
            # SQLite's busy handler, which sleeps in coarse steps (1, 2, 5, 10 ... ms).
            with self._write_lock, self._write() as s, s.begin():
                yield s
        else:
            with self._write() as s, s.begin():
                yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as s, s.begin():
            yield s

    def on_dispose(self, close: Callable[[], None]) -> None:
        """Call ``close`` in ``dispose``: for connections kept outside the pools (the check-in path)."""
        self._on_dispose.append(close)

    def dispose(self) -> None:
        for close in self._on_dispose:
            close()
        self.engine.dispose()
        self._read_engine.dispose()
