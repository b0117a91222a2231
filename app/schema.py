"""The tables as SQLAlchemy metadata: what alembic compares the migrations against.

Only alembic (``alembic/env.py``) imports this module; the request path talks to Postgres through
asyncpg in ``app/store.py`` and never loads SQLAlchemy.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()


class Xid8(sa.types.UserDefinedType[int]):
    """Postgres's 64-bit transaction id (``xid8``), for the models alembic compares."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"


entries = sa.Table(
    "entries",
    metadata,
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
    sa.Index(
        "entries_expires_at_idx", "expires_at", postgresql_where=sa.text("expires_at IS NOT NULL")
    ),
)

cache_outbox = sa.Table(
    "cache_outbox",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("namespace", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column(
        "next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("xid", Xid8(), nullable=True, server_default=sa.text("pg_current_xact_id()")),
    sa.Index("cache_outbox_next_attempt_idx", "next_attempt_at"),
    sa.Index("cache_outbox_xid_idx", "xid"),
    sa.Index("cache_outbox_created_at_idx", "created_at"),
    sa.Index(
        "cache_outbox_pending_idx", "created_at", postgresql_where=sa.text("applied_at IS NULL")
    ),
)

# The relay's last announced position (one row; ``alembic/versions/0006_feed_relay.py``).
cache_feed_relay = sa.Table(
    "cache_feed_relay",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("snapshot", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("id = 1", name="cache_feed_relay_one_row"),
)

version_sequence = sa.Sequence("entry_version_seq", metadata=metadata)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("prefix", sa.Text, nullable=False, unique=True),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("namespace", sa.Text, nullable=False),
    sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
    sa.Column("rate_per_s", sa.Float, nullable=True),
    sa.Column("burst", sa.Integer, nullable=True),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
