"""Tables for federated rounds (same declarative ``Base``, so ``create_schema`` creates them).

A round's sums live in an atomic accumulator file under the instance dir
(``rounds/<id>/acc.state``); these rows are the audit trail and the cohort.
New tables only: older databases gain them on start-up via ``create_all``,
so ``SCHEMA_VERSION`` does not change.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ._models import Base, now

__all__ = ["FLRound", "FLUpdate"]


class FLRound(Base):
    __tablename__ = "fl_rounds"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    base_version: Mapped[int] = mapped_column(Integer)
    base_release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    #: open -> closed (quorum met, candidate built) | failed (quorum missed or aggregation error)
    state: Mapped[str] = mapped_column(String(16), index=True)
    artifact: Mapped[str] = mapped_column(String(512))
    spec: Mapped[dict[str, Any]] = mapped_column()
    selected: Mapped[list[Any]] = mapped_column()
    quorum: Mapped[int] = mapped_column(Integer)
    cohort: Mapped[dict[str, Any]] = mapped_column()
    codecs: Mapped[list[Any]] = mapped_column()
    policy: Mapped[dict[str, Any]] = mapped_column()
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    deadline_at: Mapped[float] = mapped_column(Float)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    closed_at: Mapped[float | None] = mapped_column(Float)


class FLUpdate(Base):
    """One upload to a round: accepted (folded exactly once) or rejected with its reason."""

    __tablename__ = "fl_updates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[str] = mapped_column(ForeignKey("fl_rounds.id"), index=True)
    device_id: Mapped[str | None] = mapped_column(String(64))
    update_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    num_samples: Mapped[int | None] = mapped_column(Integer)
    norm: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[float] = mapped_column(Float, default=now)
