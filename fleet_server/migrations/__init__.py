"""Alembic migrations for the fleet database (SQLite and PostgreSQL); run by ``fleet_server._migrate``."""
