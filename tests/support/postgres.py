"""A throwaway PostgreSQL server for database tests: started once per test session
on a unix socket in a temp dir (initdb + pg_ctl, about 3 s), or taken from
``EDGEPACK_TEST_POSTGRES_URL``. Used by the root conftest's ``database_url``."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_counter = itertools.count()


def _pg_bin() -> Path:
    """Where initdb lives: Debian's newest /usr/lib/postgresql/<major>/bin (``make system-deps``
    installs the ``postgresql`` package), else the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else -1)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()


def start_postgres() -> tuple[str | None, str, object]:
    """Start a throwaway PostgreSQL on a unix socket; return (url, reason, stop)."""
    url = os.environ.get("EDGEPACK_TEST_POSTGRES_URL")
    if url:
        return url, "", lambda: None
    if not (PG_BIN / "initdb").exists():
        return None, ("no initdb (looked in /usr/lib/postgresql/*/bin and on PATH; 'make system-deps' installs "
                      "Debian's postgresql) and EDGEPACK_TEST_POSTGRES_URL is not set"), lambda: None
    base = Path(tempfile.mkdtemp(prefix="edgepack-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            return None, "running as root without runuser to drop to the postgres user", lambda: None
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    try:
        subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True, timeout=60)
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "20", "-l",
                        str(base / "log"), "-o", f"-k {base} -c listen_addresses='' -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=40)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(base, ignore_errors=True)
        return None, f"could not start a local PostgreSQL: {e}", lambda: None

    def stop() -> None:
        subprocess.run([*as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)

    return f"postgresql+psycopg://postgres@/postgres?host={base}", "", stop


@pytest.fixture(scope="session")
def postgres_server():
    url, reason, stop = start_postgres()
    yield url, reason
    stop()  # type: ignore[operator]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh empty database: SQLite in tmp_path, or a new PostgreSQL schema.

    Each PostgreSQL case gets its own schema, reached through ``search_path`` in the URL:
    ``CREATE SCHEMA`` takes well under a millisecond where ``CREATE DATABASE`` took 0.25-0.4 s
    per test on the shared 2-core machine (it copies the template database).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    url, reason = request.getfixturevalue("postgres_server")
    if url is None:
        pytest.skip(f"PostgreSQL not available: {reason}")
    import psycopg

    name = f"fleet_{os.getpid()}_{next(_counter)}"
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
