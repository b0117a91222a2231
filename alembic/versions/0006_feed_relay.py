"""The feed relay: writers may skip the per-row NOTIFY, one elected process announces in batches.

A NOTIFY makes its transaction's commit take an instance-wide lock held through the WAL flush,
so a NOTIFY from every write serialises every write of the fleet (issue 13). The trigger now
fires only where the session has not set ``cachegw.feed_notify = off``: gateways in relay mode
set it on their pool connections, and one process (the relay, elected by an advisory lock) reads
the outbox rows of newly committed transactions and announces them with a few NOTIFYs per round
(``cachegw_feed_publish``). ``cache_feed_relay`` keeps the last position the relay announced, so
the next relay starts from it. A session that does not know the setting (an older gateway, a
manual write) still notifies per row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER_0002 = (
    "CREATE TRIGGER cache_outbox_notify AFTER INSERT ON cache_outbox "
    "FOR EACH ROW EXECUTE FUNCTION cachegw_notify_invalidation()"
)
TRIGGER = (
    "CREATE TRIGGER cache_outbox_notify AFTER INSERT ON cache_outbox FOR EACH ROW "
    "WHEN (current_setting('cachegw.feed_notify', true) IS DISTINCT FROM 'off') "
    "EXECUTE FUNCTION cachegw_notify_invalidation()"
)
# One statement (one round trip, one transaction): the payloads in order, then the position they
# complete. The position is recorded only with its announcements: a relay that starts from it
# never skips a row that was not announced.
PUBLISH = """
CREATE FUNCTION cachegw_feed_publish(p_channel text, p_payloads text[], p_snapshot text,
                                     p_at float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOREACH payload IN ARRAY p_payloads LOOP
        PERFORM pg_notify(p_channel, payload);
    END LOOP;
    IF p_snapshot IS NOT NULL THEN
        INSERT INTO cache_feed_relay (id, snapshot, at) VALUES (1, p_snapshot, to_timestamp(p_at))
        ON CONFLICT (id) DO UPDATE SET snapshot = EXCLUDED.snapshot, at = EXCLUDED.at;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS cache_outbox_notify ON cache_outbox")
    op.execute(TRIGGER)
    op.create_table(
        "cache_feed_relay",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("snapshot", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="cache_feed_relay_one_row"),
    )
    op.execute(PUBLISH)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS cachegw_feed_publish(text, text[], text, float8)")
    op.drop_table("cache_feed_relay")
    op.execute("DROP TRIGGER IF EXISTS cache_outbox_notify ON cache_outbox")
    op.execute(TRIGGER_0002)
