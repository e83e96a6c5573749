"""Alembic environment: always given a live connection by ``fleet_server._migrate`` (no URL in any ini).

``render_as_batch`` makes column changes work on SQLite, which has no ALTER COLUMN:
Alembic copies the table instead (https://alembic.sqlalchemy.org/en/latest/batch.html).
"""

from __future__ import annotations

from alembic import context

import fleet_server._db  # noqa: F401  (imports every model module into Base.metadata)
from fleet_server._models import Base


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise SystemExit("run migrations with `edgepack fleet init` or `fleet serve`, which pass the connection")
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file with its ``context`` proxy set up; a plain import (tools that walk
# every module of the package) finds no ``context.config`` and does nothing.
if hasattr(context, "config"):
    run_migrations()
