"""The fleet's tables (SQLAlchemy 2 declarative, typed ``Mapped`` columns).

Times are unix seconds (float) so SQLite and PostgreSQL agree without time-zone
conversions. Secrets (admin and enrollment tokens) are stored only as sha256
hashes; the tokens themselves are 256-bit random, so a fast hash is enough.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SCHEMA_VERSION",
    "AdminToken",
    "Alert",
    "Base",
    "Device",
    "EnrollmentToken",
    "Group",
    "Meta",
    "Nonce",
    "Release",
    "Report",
    "Rollout",
    "RolloutEvent",
]

#: bump when a table changes; the server refuses to start on a different one (see docs/fleet.md, migrations).
#: 2 added audit_log (with its append-only triggers) and rate_limits; ``Database.create_schema`` upgrades 1 -> 2.
#: 3 keys nonces by (signed timestamp, nonce), so expired ones are deleted as one contiguous range.
SCHEMA_VERSION = 3


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class AdminToken(Base):
    __tablename__ = "admin_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)


class Group(Base):
    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: the release every device of the group should run when no rollout says otherwise
    current_release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    used_by: Mapped[str | None] = mapped_column(String(64))


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="active")
    enrolled_at: Mapped[float] = mapped_column(Float, default=now)
    last_seen_at: Mapped[float | None] = mapped_column(Float)
    active_version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: what this device should run; None means "keep what you have"
    desired_release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), index=True)
    #: 0-based wave of ``rollout_id`` that assigned it
    wave: Mapped[int | None] = mapped_column(Integer)


class Nonce(Base):
    """Nonces of accepted signed requests, kept for the clock-skew window (replay defence).

    The key is (signed timestamp, nonce): a replay repeats both, since both are signed. Leading
    with the timestamp keeps the rows in time order, so the check-in path deletes expired ones
    as one contiguous range; keyed by the random nonce alone, every deletion dirtied a random
    index page (500 deletions held the write lock for 40 ms at 600,000 rows, the steady state
    at 1,000 check-ins/s with a 300 s window).
    """

    __tablename__ = "nonces"
    #: BIGINT: unix seconds overflow PostgreSQL's 32-bit INTEGER on 2038-01-19
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), default="bundle")
    base_version: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    signed_by: Mapped[list[Any]] = mapped_column(default=list)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id"), index=True)
    previous_release_id: Mapped[int | None] = mapped_column(ForeignKey("releases.id"))
    state: Mapped[str] = mapped_column(String(16), index=True)
    waves: Mapped[list[Any]] = mapped_column()
    wave_index: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float] = mapped_column(Float, default=now)
    #: when the current state ends on its own if nothing else happens
    deadline_at: Mapped[float | None] = mapped_column(Float)
    gates: Mapped[dict[str, Any]] = mapped_column()
    #: wave_deadline_s, pause_deadline_s, min_wave_s
    timing: Mapped[dict[str, Any]] = mapped_column()
    gate_status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # optimistic locking: two workers ticking the same rollout cannot both advance it
    revision: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": revision}


class RolloutEvent(Base):
    __tablename__ = "rollout_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    at: Mapped[float] = mapped_column(Float, default=now)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128), default="server")


class Report(Base):
    __tablename__ = "reports"
    __table_args__ = (Index("ix_reports_rollout_kind", "rollout_id", "kind"),
                      Index("ix_reports_device_at", "device_id", "received_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"))
    wave: Mapped[int | None] = mapped_column(Integer)
    release_version: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[float] = mapped_column(Float, default=now)


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now)
    level: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"))
    device_id: Mapped[str | None] = mapped_column(String(64))
    acknowledged_at: Mapped[float | None] = mapped_column(Float)
