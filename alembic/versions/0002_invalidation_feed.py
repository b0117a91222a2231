"""The invalidation feed (NOTIFY from each write's transaction) and outbox retention.

Every write, delete and invalidate inserts an outbox row in its own transaction; a trigger on
that insert sends ``NOTIFY cachegw_invalidation`` with
``seq<TAB>sent_at_ms<TAB>namespace<TAB>key``, which Postgres delivers to every listening gateway
process when (and only if) the transaction commits.
Outbox rows are kept for a while after they were applied (``applied_at``), so that a Redis
failover that lost recent writes can be repaired by replaying them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY = r"""
CREATE FUNCTION cachegw_notify_invalidation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cachegw_invalidation',
        NEW.seq::text || E'\t'
        || floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint::text || E'\t'
        || NEW.namespace || E'\t' || NEW.key);
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.add_column(
        "cache_outbox", sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index("cache_outbox_created_at_idx", "cache_outbox", ["created_at"])
    op.execute(NOTIFY)
    op.execute(
        "CREATE TRIGGER cache_outbox_notify AFTER INSERT ON cache_outbox "
        "FOR EACH ROW EXECUTE FUNCTION cachegw_notify_invalidation()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS cache_outbox_notify ON cache_outbox")
    op.execute("DROP FUNCTION IF EXISTS cachegw_notify_invalidation()")
    op.drop_index("cache_outbox_created_at_idx", table_name="cache_outbox")
    op.drop_column("cache_outbox", "applied_at")
