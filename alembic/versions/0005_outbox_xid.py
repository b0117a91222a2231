"""The transaction id of every outbox row, so that the feed catches up by position, not by time.

A listening process that lost its connection knows the snapshot of its last round trip on it:
every transaction visible in that snapshot was announced to it. What it may have missed is
exactly the outbox rows of transactions that snapshot does not see (``pg_visible_in_snapshot``),
found through this column's index whatever the clocks, the lock waits or the detection delay.

The column is added without a value for existing rows (no rewrite of the table), then given its
default: rows written before this migration are older than any snapshot a process will take.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE cache_outbox ADD COLUMN xid xid8")
    op.execute("ALTER TABLE cache_outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    op.execute("CREATE INDEX cache_outbox_xid_idx ON cache_outbox (xid)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS cache_outbox_xid_idx")
    op.execute("ALTER TABLE cache_outbox DROP COLUMN IF EXISTS xid")
