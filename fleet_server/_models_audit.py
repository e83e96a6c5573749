"""Tables for the audit trail and the rate limiter (same declarative ``Base``).

``audit_log`` is append-only: the app has no code path that updates or
deletes a row, and database triggers (installed by migration 0002)
refuse UPDATE and DELETE on SQLite and PostgreSQL. Each row stores
``hash = sha256(prev_hash + canonical row)``, so an edit made behind the
triggers' back (a superuser dropping them) is still detected by ``verify``.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ._models import Base

__all__ = ["AuditEntry", "RateLimit"]


class AuditEntry(Base):
    __tablename__ = "audit_log"
    #: assigned by ``_audit.record`` (last seq + 1, under a lock), never by the database: a gap is tampering
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[float] = mapped_column(Float)
    #: "admin:<name>#<token id>", "dashboard:<name>#<token id>", "device:<id>", "cli" or "system"
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(256))
    reason: Mapped[str] = mapped_column(Text)
    #: canonical JSON text, hashed as stored
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class RateLimit(Base):
    """One fixed-window counter per (scope, client): shared by every worker because it lives in the database."""

    __tablename__ = "rate_limits"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
