"""Touch: a new expiry for a live entry, without sending its value again.

``cachegw_touch`` locks the live row, checks If-Match against its version, gives it a new expiry
and a new cache seq (as an invalidate does), and records an outbox row, in one transaction. The
version stays: the value and its content type, which the ETag names, did not change. The new
cache seq makes every cached copy (which carries the old expiry) too old to serve once the
write's announcement reaches a process, so every tier agrees on the new expiry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOUCH = """
CREATE FUNCTION cachegw_touch(p_namespace text, p_key text, p_ttl_ms bigint,
                              p_if_match bigint[], p_if_exists boolean)
RETURNS TABLE (r_outcome text, r_version bigint, r_seq bigint, r_expires_at_ms bigint,
               r_outbox_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cur_version bigint;
    cur_expires timestamptz;
    new_seq bigint;
    new_expires timestamptz;
    outbox_id bigint;
BEGIN
    SELECT e.version, e.expires_at INTO cur_version, cur_expires
      FROM entries e WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
    IF NOT FOUND OR (cur_expires IS NOT NULL AND cur_expires <= now()) THEN
        RETURN QUERY SELECT CASE WHEN p_if_match IS NULL AND NOT p_if_exists THEN 'not_found'
                                 ELSE 'precondition_failed' END,
            NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF p_if_match IS NOT NULL AND NOT (cur_version = ANY (p_if_match)) THEN
        RETURN QUERY SELECT 'precondition_failed'::text, cur_version, NULL::bigint,
            NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    new_seq := nextval('entry_version_seq');
    new_expires := now() + p_ttl_ms * interval '1 millisecond';
    UPDATE entries SET cache_seq = new_seq, expires_at = new_expires
     WHERE namespace = p_namespace AND key = p_key;
    INSERT INTO cache_outbox (namespace, key, seq) VALUES (p_namespace, p_key, new_seq)
    RETURNING id INTO outbox_id;
    RETURN QUERY SELECT 'ok'::text, cur_version, new_seq,
        (extract(epoch FROM new_expires) * 1000)::bigint, outbox_id;
END
$$;
"""


def upgrade() -> None:
    op.execute(TOUCH)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS cachegw_touch(text, text, bigint, bigint[], boolean)")
