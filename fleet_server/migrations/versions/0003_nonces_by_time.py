"""Schema version 3: nonces keyed by (signed timestamp, nonce) instead of the nonce alone.

Rows then sit in time order, so the check-in path deletes expired nonces as one
contiguous range (see ``Nonce`` and docs/fleet.md, "Check-in hot path"). Nonces live
only for the clock-skew window, but the rows are carried over so a request signed just
before the upgrade still cannot be replayed after it: the old rows stored
``expires_at = ts + 301`` (the default 300 s skew + 1), from which ``ts`` is recovered.
With a non-default ``max_skew_s`` the recovered ``ts`` is off by the difference, and
replays of requests signed before the upgrade are caught only by the clock window.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DEFAULT_WINDOW = 301  # max_skew_s 300 + 1: what 0001's expires_at was set to


def _new_table(name: str) -> None:
    op.create_table(name,
    sa.Column('ts', sa.BigInteger(), autoincrement=False, nullable=False),  # unix seconds pass 2**31 in 2038
    sa.Column('nonce', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('ts', 'nonce')
    )


def _old_table(name: str) -> None:
    op.create_table(name,
    sa.Column('nonce', sa.String(length=32), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('nonce')
    )


def upgrade() -> None:
    _new_table('nonces_v3')
    op.execute(f"INSERT INTO nonces_v3 (ts, nonce, device_id) "
               f"SELECT CAST(expires_at AS INTEGER) - {_DEFAULT_WINDOW}, nonce, device_id FROM nonces")
    op.drop_index(op.f('ix_nonces_expires_at'), table_name='nonces')
    op.drop_table('nonces')
    _new_table('nonces')
    op.execute("INSERT INTO nonces (ts, nonce, device_id) SELECT ts, nonce, device_id FROM nonces_v3")
    op.drop_table('nonces_v3')


def downgrade() -> None:
    _old_table('nonces_v2')
    # two rows may share a nonce under different timestamps now; the old key keeps one of them
    op.execute(f"INSERT INTO nonces_v2 (nonce, device_id, expires_at) "
               f"SELECT nonce, MIN(device_id), MAX(ts) + {_DEFAULT_WINDOW} FROM nonces GROUP BY nonce")
    op.drop_table('nonces')
    _old_table('nonces')
    op.create_index(op.f('ix_nonces_expires_at'), 'nonces', ['expires_at'], unique=False)
    op.execute("INSERT INTO nonces (nonce, device_id, expires_at) SELECT nonce, device_id, expires_at FROM nonces_v2")
    op.drop_table('nonces_v2')
