"""Entries, the version sequence, the cache outbox, and the write functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One transaction per write: lock the row (or insert it), check the preconditions against the live
# entry (an expired row counts as absent), take a version from the one sequence, record the cache
# update in the outbox. The loop handles a concurrent insert of the same key: the loser goes round
# and sees the winner's row, so "create only" stays exact.
PUT = """
CREATE FUNCTION cachegw_put(
    p_namespace text, p_key text, p_value bytea, p_content_type text, p_ttl_ms bigint,
    p_if_match bigint[], p_if_exists boolean, p_if_none_match boolean)
RETURNS TABLE (r_outcome text, r_version bigint, r_created boolean, r_expires_at_ms bigint,
               r_outbox_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cur_version bigint;
    cur_expires timestamptz;
    live boolean := false;
    new_version bigint;
    new_expires timestamptz;
    outbox_id bigint;
BEGIN
    IF p_ttl_ms IS NOT NULL THEN
        new_expires := now() + p_ttl_ms * interval '1 millisecond';
    END IF;
    LOOP
        SELECT e.version, e.expires_at INTO cur_version, cur_expires
          FROM entries e WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
        IF FOUND THEN
            live := cur_expires IS NULL OR cur_expires > now();
            IF (p_if_none_match AND live)
               OR ((p_if_exists OR p_if_match IS NOT NULL) AND NOT live)
               OR (p_if_match IS NOT NULL AND NOT (cur_version = ANY (p_if_match))) THEN
                RETURN QUERY SELECT 'precondition_failed'::text,
                    CASE WHEN live THEN cur_version END, false, NULL::bigint, NULL::bigint;
                RETURN;
            END IF;
            new_version := nextval('entry_version_seq');
            UPDATE entries SET value = p_value, content_type = p_content_type,
                   version = new_version, cache_seq = new_version,
                   expires_at = new_expires, updated_at = now()
             WHERE namespace = p_namespace AND key = p_key;
            EXIT;
        END IF;
        IF p_if_exists OR p_if_match IS NOT NULL THEN
            RETURN QUERY SELECT 'precondition_failed'::text, NULL::bigint, false,
                NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
        new_version := nextval('entry_version_seq');
        INSERT INTO entries (namespace, key, value, content_type, version, cache_seq,
                             expires_at, updated_at)
        VALUES (p_namespace, p_key, p_value, p_content_type, new_version, new_version,
                new_expires, now())
        ON CONFLICT (namespace, key) DO NOTHING;
        EXIT WHEN FOUND;
    END LOOP;
    INSERT INTO cache_outbox (namespace, key, seq) VALUES (p_namespace, p_key, new_version)
    RETURNING id INTO outbox_id;
    RETURN QUERY SELECT 'ok'::text, new_version, NOT live,
        (extract(epoch FROM new_expires) * 1000)::bigint, outbox_id;
END
$$;
"""

DELETE = """
CREATE FUNCTION cachegw_delete(p_namespace text, p_key text, p_if_match bigint[])
RETURNS TABLE (r_outcome text, r_version bigint, r_seq bigint, r_outbox_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cur_version bigint;
    cur_expires timestamptz;
    new_seq bigint;
    outbox_id bigint;
BEGIN
    SELECT e.version, e.expires_at INTO cur_version, cur_expires
      FROM entries e WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
    IF NOT FOUND OR (cur_expires IS NOT NULL AND cur_expires <= now()) THEN
        RETURN QUERY SELECT CASE WHEN p_if_match IS NULL THEN 'not_found'
                                 ELSE 'precondition_failed' END,
            NULL::bigint, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF p_if_match IS NOT NULL AND NOT (cur_version = ANY (p_if_match)) THEN
        RETURN QUERY SELECT 'precondition_failed'::text, cur_version, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    new_seq := nextval('entry_version_seq');
    DELETE FROM entries WHERE namespace = p_namespace AND key = p_key;
    INSERT INTO cache_outbox (namespace, key, seq) VALUES (p_namespace, p_key, new_seq)
    RETURNING id INTO outbox_id;
    RETURN QUERY SELECT 'ok'::text, cur_version, new_seq, outbox_id;
END
$$;
"""

INVALIDATE = """
CREATE FUNCTION cachegw_invalidate(p_namespace text, p_key text)
RETURNS TABLE (r_outcome text, r_version bigint, r_seq bigint, r_outbox_id bigint)
LANGUAGE plpgsql AS $$
DECLARE
    cur_version bigint;
    new_seq bigint;
    outbox_id bigint;
BEGIN
    UPDATE entries SET cache_seq = nextval('entry_version_seq')
     WHERE namespace = p_namespace AND key = p_key
       AND (expires_at IS NULL OR expires_at > now())
    RETURNING version, cache_seq INTO cur_version, new_seq;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::bigint, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO cache_outbox (namespace, key, seq) VALUES (p_namespace, p_key, new_seq)
    RETURNING id INTO outbox_id;
    RETURN QUERY SELECT 'ok'::text, cur_version, new_seq, outbox_id;
END
$$;
"""


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("entry_version_seq")))
    op.create_table(
        "entries",
        sa.Column("namespace", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("cache_seq", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index(
        "entries_expires_at_idx",
        "entries",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_table(
        "cache_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("namespace", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("cache_outbox_next_attempt_idx", "cache_outbox", ["next_attempt_at"])
    op.execute(PUT)
    op.execute(DELETE)
    op.execute(INVALIDATE)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS cachegw_invalidate(text, text)")
    op.execute("DROP FUNCTION IF EXISTS cachegw_delete(text, text, bigint[])")
    op.execute(
        "DROP FUNCTION IF EXISTS"
        " cachegw_put(text, text, bytea, text, bigint, bigint[], boolean, boolean)"
    )
    op.drop_index("cache_outbox_next_attempt_idx", table_name="cache_outbox")
    op.drop_table("cache_outbox")
    op.drop_index("entries_expires_at_idx", table_name="entries")
    op.drop_table("entries")
    op.execute(sa.schema.DropSequence(sa.Sequence("entry_version_seq")))
