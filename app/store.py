"""The authoritative store: Postgres through an asyncpg pool.

Writes go through SQL functions created by the migrations (``cachegw_put``, ``cachegw_delete``,
``cachegw_invalidate``, ``cachegw_touch``): each runs in one transaction that takes a version (or
a cache seq) from one sequence, changes the entry and records an outbox row, so one round trip
makes a write durable together with the promise to update the caches. asyncpg and its errors
are used only in this module.

The tables are described for alembic in ``app/schema.py``; nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg

from app import telemetry, tracing
from app.breaker import Breaker
from app.codec import Entry, now_ms
from app.errors import (
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
    WriteOutcomeUnknownError,
)
from app.settings import PostgresSettings
from app.source import PutResult, RemoveResult, TouchResult

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

_LIVE = "(expires_at IS NULL OR expires_at > now())"
_EXPIRES_MS = "(extract(epoch FROM expires_at) * 1000)::bigint"

SQL_GET = f"""
SELECT value, content_type, version, cache_seq, {_EXPIRES_MS}
  FROM entries WHERE namespace = $1 AND key = $2 AND {_LIVE}
"""
# The reads that arrive in one turn of the event loop, in one statement: the live entries of the
# (namespace, key) pairs, each with its position in the arrays (1-based).
SQL_GET_MANY = """
SELECT k.i, e.value, e.content_type, e.version, e.cache_seq,
       (extract(epoch FROM e.expires_at) * 1000)::bigint
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(namespace, key, i)
  JOIN entries e ON e.namespace = k.namespace AND e.key = k.key
 WHERE e.expires_at IS NULL OR e.expires_at > now()
"""
GET_MANY_MAX = 500  # keys per statement at most
SQL_PUT = "SELECT * FROM cachegw_put($1, $2, $3, $4, $5, $6, $7, $8)"
SQL_DELETE = "SELECT * FROM cachegw_delete($1, $2, $3)"
SQL_INVALIDATE = "SELECT * FROM cachegw_invalidate($1, $2)"
SQL_TOUCH = "SELECT * FROM cachegw_touch($1, $2, $3, $4, $5)"
SQL_OUTBOX_CLAIM = """
UPDATE cache_outbox o
   SET attempts = o.attempts + 1,
       next_attempt_at = now() + least($3::float8, 0.25 * 2 ^ least(o.attempts, 20))
                                 * interval '1 second'
 WHERE o.id IN (SELECT id FROM cache_outbox
                 WHERE applied_at IS NULL AND next_attempt_at <= now()
                   AND created_at <= now() - $2::float8 * interval '1 second'
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING o.id, o.namespace, o.key, o.seq
"""
SQL_OUTBOX_DONE = "UPDATE cache_outbox SET applied_at = now() WHERE id = ANY($1::bigint[])"
# A row applied before the horizon was created before it too: the created_at index finds the
# candidates (rows still pending among them are few and are kept). Locked rows are skipped, so
# the prunes of many processes share the work instead of queueing on the same rows. The ids are
# collected once (an InitPlan), whatever the table's statistics say.
SQL_OUTBOX_PRUNE = """
DELETE FROM cache_outbox WHERE id = ANY (ARRAY(
    SELECT id FROM cache_outbox
     WHERE created_at < now() - $1::float8 * interval '1 second'
       AND applied_at < now() - $1::float8 * interval '1 second'
     LIMIT $2 FOR UPDATE SKIP LOCKED))
"""
SQL_OUTBOX_RECENT = """
SELECT DISTINCT ON (namespace, key) id, namespace, key, seq FROM cache_outbox
 WHERE created_at >= now() - $1::float8 * interval '1 second'
 ORDER BY namespace, key, seq DESC
 LIMIT $2
"""
# Rows of the transactions a snapshot does not see: committed after it (or in progress then).
SQL_OUTBOX_MISSED = """
SELECT DISTINCT ON (namespace, key) id, namespace, key, seq FROM cache_outbox
 WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
   AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
 ORDER BY namespace, key, seq DESC
 LIMIT $2
"""
SQL_POSITION = "SELECT pg_current_snapshot()::text, extract(epoch FROM now())::float8"
# The relay's read: one statement, so the snapshot it answers is the one its rows were read in
# (``pg_current_snapshot`` is the statement's snapshot): every row of a transaction that snapshot
# sees and ``$1`` does not is among them. The newest row per key, from the key after ($2, $3)
# (a page), with its creation time (ms): one row with the position alone when there is none.
_RELAY_READ = """
SELECT s.snapshot, s.at, m.namespace, m.key, m.seq, m.created_ms
  FROM (SELECT pg_current_snapshot()::text AS snapshot,
               extract(epoch FROM now())::float8 AS at) s
  LEFT JOIN LATERAL (
    SELECT DISTINCT ON (namespace, key) namespace, key, seq,
           (extract(epoch FROM created_at) * 1000)::bigint AS created_ms
      FROM cache_outbox
     WHERE {since} AND ($2::text IS NULL OR (namespace, key) > ($2::text, $3::text))
     ORDER BY namespace, key, seq DESC
     LIMIT $4) m ON true
 ORDER BY m.namespace, m.key
"""
SQL_RELAY_READ = _RELAY_READ.format(
    since="xid >= pg_snapshot_xmin($1::text::pg_snapshot)"
    " AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)"
)
# A first relay (no position recorded): what was written within the outbox's retention.
SQL_RELAY_READ_RECENT = _RELAY_READ.format(
    since="created_at >= now() - $1::float8 * interval '1 second'"
)
SQL_RELAY_PERSISTED = (
    "SELECT snapshot, extract(epoch FROM at)::float8 FROM cache_feed_relay WHERE id = 1"
)
SQL_RELAY_PUBLISH = "SELECT cachegw_feed_publish($1, $2::text[], $3, $4)"
SQL_TRY_LOCK = "SELECT pg_try_advisory_lock($1)"
# Now, and the creation time of the oldest row whose cache update has not reached Redis (now, if
# none): what a primary's marker records.
SQL_MARK_TIMES = """
SELECT extract(epoch FROM now())::float8,
       extract(epoch FROM coalesce(
           (SELECT min(created_at) FROM cache_outbox WHERE applied_at IS NULL), now()))::float8
"""
SQL_OUTBOX_SINCE = """
SELECT DISTINCT ON (namespace, key) id, namespace, key, seq FROM cache_outbox
 WHERE created_at >= to_timestamp($1::float8)
 ORDER BY namespace, key, seq DESC
 LIMIT $2
"""
SQL_OUTBOX_PENDING = """
SELECT namespace, key, max(seq) FROM cache_outbox WHERE applied_at IS NULL
 GROUP BY namespace, key LIMIT $1
"""
SQL_OUTBOX_STATS = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
  FROM cache_outbox WHERE applied_at IS NULL
"""
SQL_API_KEYS = """
SELECT prefix, secret_hash, namespace, scopes, rate_per_s, burst, description, created_at,
       revoked_at FROM api_keys ORDER BY id
"""
SQL_API_KEY_BY_PREFIX = """
SELECT prefix, secret_hash, namespace, scopes, rate_per_s, burst, description, created_at,
       revoked_at FROM api_keys WHERE prefix = $1
"""
SQL_API_KEY_CREATE = """
INSERT INTO api_keys (prefix, secret_hash, namespace, scopes, rate_per_s, burst, description)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
SQL_API_KEY_REVOKE = """
UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL
"""
SQL_OUTBOX_FAILED = "UPDATE cache_outbox SET last_error = $2 WHERE id = ANY($1::bigint[])"
# The rows are locked (and skipped when a write holds them) before they are deleted, and their
# expiry is checked again on the row deleted: a PUT that revives an expired row (a new row
# version) keeps it, whatever the Postgres version (a TID scan's recheck once did nothing, so a
# bare ctid list let a purge delete the new version). Joined by ctid, the plan stays a nested
# loop of TID lookups however stale the table's statistics (a join on the primary key can turn
# into a join filter that costs O(expired rows x batch)); concurrent purges share the work.
SQL_PURGE_EXPIRED = """
DELETE FROM entries e
 USING (SELECT ctid FROM entries WHERE expires_at <= now()
         LIMIT $1 FOR UPDATE SKIP LOCKED) x
 WHERE e.ctid = x.ctid AND e.expires_at <= now()
"""


# What asyncpg raises when the connection fails (InternalClientError is not an InterfaceError, and
# leaks from a connection in a bad state): a statement sent on it may have run, or not.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
_NO_REPLY: tuple[type[Exception], ...] = (TimeoutError, *CONNECTION_ERRORS)
# The longest a statement (or a lock wait, or an idle transaction) may take on a pool connection.
STATEMENT_TIMEOUT_MS = 5000
# The operations whose outcome is unknown when their reply does not come.
WRITES = frozenset({"put", "delete", "invalidate"})
# Which breaker a request-path statement goes under; None: none (background work, probes).
Route = Literal["read", "write"] | None


T = TypeVar("T")
Connection: TypeAlias = "PoolConnectionProxy[asyncpg.Record]"


@contextlib.contextmanager
def map_asyncpg_errors(
    operation: str, *, sent: bool = False, deadline_means: str = "timed out"
) -> Iterator[None]:
    """asyncpg's exceptions, and the deadline's ``TimeoutError``, raised inside as
    ``StoreUnavailableError`` (``from`` the original); anything else passes through unchanged:
    a bug of ours is not an outage of the store.

    ``sent``: a write's statement is on its way. Its reply not coming (the deadline, a broken
    connection) means it may have committed: ``WriteOutcomeUnknownError``, never "nothing
    changed". A statement Postgres refused was rolled back, sent or not.
    """
    try:
        yield
    except asyncpg.PostgresError as exc:
        raise StoreUnavailableError(f"{operation}: {type(exc).__name__}") from exc
    except _NO_REPLY as exc:
        what = deadline_means if isinstance(exc, TimeoutError) else type(exc).__name__
        if sent:
            raise WriteOutcomeUnknownError(
                f"{operation} sent, no reply ({what}): it may have committed"
            ) from exc
        raise StoreUnavailableError(f"{operation}: {what}") from exc


def _outcome(error: StoreError) -> Literal["timeout", "error"]:
    """The ``cachegw_store_queries_total`` outcome of a mapped error."""
    return "timeout" if isinstance(error.__cause__, TimeoutError) else "error"


async def _no_reset(_conn: object) -> None:
    """asyncpg's reset on release is a round trip (``RESET ALL``, ``UNLISTEN *``, ...) that the
    gateway does not need: its pool connections keep no session state (listening is done on a
    connection of its own; the startup settings, ``cachegw.feed_notify`` among them, are the
    session's defaults, which a reset keeps). asyncpg still rolls back a transaction left open."""


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """An API key as stored: never the secret, only its hash."""

    prefix: str
    secret_hash: bytes
    namespace: str
    scopes: tuple[str, ...]
    rate_per_s: float | None
    burst: int | None
    description: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Position:
    """A point in the store's commit order: a snapshot (``pg_snapshot`` text) and its time."""

    snapshot: str
    at: float  # Postgres's clock, seconds since the epoch


@dataclass(frozen=True, slots=True)
class FeedRow:
    """An announcement: a key's newest seq, and when its outbox row was written (ms, the store's
    clock at the start of the writing transaction)."""

    namespace: str
    key: str
    seq: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    namespace: str
    key: str
    seq: int


class Store:
    """Postgres access. Every call is bounded by the caller's deadline (event-loop time)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        # Set by the gateway. Reads go under ``read_breaker`` (failures and slowness: the router
        # then serves what caches hold), writes under ``write_breaker`` (failures only: a slow
        # write is still a write, and nothing else could take it); background queries, probes
        # and the key table go under neither.
        self._releases: set[asyncio.Task[None]] = set()
        self.read_breaker: Breaker | None = None
        self.write_breaker: Breaker | None = None
        self._reads: list[_Read] = []  # request-path reads of this loop turn, sent together
        self._tasks: set[asyncio.Task[None]] = set()
        parts = urlsplit(settings.dsn.get_secret_value())
        self._address = (parts.hostname or "localhost", parts.port or 5432)

    async def start(self) -> None:
        """Open the pool with ``pool_min_size`` connections; while Postgres is down, with none
        (connections then come on demand): a store that is down does not stop start-up."""
        for min_size in dict.fromkeys((self.settings.pool_min_size, 0)):
            try:
                with map_asyncpg_errors("store: pool"):
                    self._pool = await asyncpg.create_pool(
                        self.settings.dsn.get_secret_value(),
                        ssl=self.ssl(),
                        min_size=min_size,
                        max_size=self.settings.pool_max_size,
                        timeout=self.settings.connect_timeout_s,
                        command_timeout=None,
                        reset=_no_reset,
                        server_settings=self._pool_settings(),
                    )
                break
            except StoreUnavailableError:
                if min_size == 0:
                    raise
        with contextlib.suppress(StoreUnavailableError):
            await self.ping(
                deadline=asyncio.get_running_loop().time() + self.settings.connect_timeout_s
            )

    def _pool_settings(self) -> dict[str, str]:
        # No statement (a write is one) outlives its client's interest for long: the recovery's
        # replay margin counts on it.
        settings = {
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            "lock_timeout": str(STATEMENT_TIMEOUT_MS),
            "idle_in_transaction_session_timeout": str(STATEMENT_TIMEOUT_MS),
        }
        if not self.settings.feed_notify:
            # The outbox trigger skips its NOTIFY (migration 0006): the relay announces the
            # row, and the commit takes no instance-wide notify lock.
            settings["cachegw.feed_notify"] = "off"
        return settings

    def ssl(self) -> ssl_module.SSLContext | Literal["disable", "prefer", "require"]:
        return asyncpg_ssl(self.settings)

    async def aclose(self) -> None:
        if self._tasks:  # reads in flight: their deadlines bound them
            await asyncio.wait(list(self._tasks), timeout=self.settings.connect_timeout_s)
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=self.settings.connect_timeout_s)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except TimeoutError:
                pool.terminate()

    # -- the one runner: each typed helper is one statement under ``_run`` ---------------------

    async def _fetchrow(
        self, operation: str, sql: str, *args: object, deadline: float, route: Route = None
    ) -> asyncpg.Record | None:
        return await self._run(
            operation, lambda conn: conn.fetchrow(sql, *args), deadline=deadline, route=route
        )

    async def _fetchone(
        self, operation: str, sql: str, *args: object, deadline: float, route: Route = None
    ) -> asyncpg.Record:
        """A statement that always returns one row (a function call, an aggregate)."""
        row = await self._fetchrow(operation, sql, *args, deadline=deadline, route=route)
        if row is None:
            raise StoreUnavailableError(f"store: {operation}: no row")
        return row

    async def _fetch(
        self, operation: str, sql: str, *args: object, deadline: float
    ) -> list[asyncpg.Record]:
        return await self._run(operation, lambda conn: conn.fetch(sql, *args), deadline=deadline)

    async def _fetchval(self, operation: str, sql: str, *args: object, deadline: float) -> object:
        value: object = await self._run(
            operation, lambda conn: conn.fetchval(sql, *args), deadline=deadline
        )
        return value

    async def _execute(self, operation: str, sql: str, *args: object, deadline: float) -> str:
        """The statement's status (``UPDATE 3``)."""
        return await self._run(operation, lambda conn: conn.execute(sql, *args), deadline=deadline)

    async def _run(
        self,
        operation: str,
        statement: Callable[[Connection], Awaitable[T]],
        *,
        deadline: float,
        route: Route = None,
    ) -> T:
        """One statement; a read or a write of the request path goes under its route's breaker."""
        breaker = (
            None if route is None else self.read_breaker if route == "read" else self.write_breaker
        )
        if route is not None and tracing.recording():
            attributes = {
                "db.system.name": "postgresql", "db.operation.name": operation,
                "server.address": self._address[0], "server.port": self._address[1],
            }  # fmt: skip
            with tracing.tier_span(f"postgresql {operation}", attributes):
                return await self._query(breaker, operation, statement, deadline=deadline)
        return await self._query(breaker, operation, statement, deadline=deadline)

    async def _query(
        self,
        breaker: Breaker | None,
        operation: str,
        statement: Callable[[Connection], Awaitable[T]],
        *,
        deadline: float,
    ) -> T:
        """Acquire a connection and run one statement, each by ``deadline``; the connection
        goes back to the pool after that, outside the deadline (with no reset query, a local
        step): what follows a commit never fails the write that committed.

        A write whose statement was sent but whose reply did not come (the deadline, a broken
        connection) may have committed: ``WriteOutcomeUnknownError``, never "nothing changed".
        """
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("store not started")
        if breaker is not None and not breaker.allow():
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="breaker_open").inc()
            raise StoreUnavailableError("store: breaker open")
        loop = asyncio.get_running_loop()
        try:
            with map_asyncpg_errors(f"store: {operation}", deadline_means="no connection in time"):
                async with asyncio.timeout_at(deadline):
                    conn = await pool.acquire()
        except StoreError as error:
            outcome = _outcome(error)
            telemetry.STORE_QUERIES.labels(operation=operation, outcome=outcome).inc()
            if breaker is not None and outcome == "timeout":
                breaker.release()  # every connection busy, or a slow connect: nothing was sent
            elif breaker is not None:
                breaker.record(ok=False, duration_s=0.0)
            raise
        except BaseException:  # cancelled, or not the store's failure
            if breaker is not None:
                breaker.release()
            raise
        started = loop.time()
        try:
            with map_asyncpg_errors(f"store: {operation}", sent=operation in WRITES):
                async with asyncio.timeout_at(deadline):
                    result = await statement(conn)
        except StoreError as error:
            self._release_later(pool, conn)
            telemetry.STORE_QUERIES.labels(operation=operation, outcome=_outcome(error)).inc()
            if breaker is not None:
                breaker.record(ok=False, duration_s=loop.time() - started)
            raise
        except BaseException:  # cancelled, or not the store's failure: its state is not known
            self._release_later(pool, conn)
            if breaker is not None:
                breaker.release()
            raise
        try:
            await pool.release(conn)  # local (no reset query): the answer does not wait on it
        except Exception as exc:  # asyncpg has closed it; the statement's result stands
            log.warning("store: a connection could not go back to the pool: %r", exc)
        if breaker is not None:
            breaker.record(ok=True, duration_s=loop.time() - started)
        telemetry.STORE_QUERIES.labels(operation=operation, outcome="ok").inc()
        return result

    def _release_later(self, pool: asyncpg.Pool[asyncpg.Record], conn: Connection) -> None:
        """Give back a connection after a failure: closed first (its state is unknown: a query
        being cancelled, a broken socket), so it is never handed out again half-used; the pool
        opens a new one when needed. The caller does not wait for it."""

        async def release() -> None:
            with contextlib.suppress(Exception):
                conn.terminate()
                await pool.release(conn, timeout=self.settings.connect_timeout_s)

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def ping(self, *, deadline: float) -> None:
        await self._fetchval("ping", "SELECT 1", deadline=deadline)

    async def probe(self) -> None:
        """The store breaker's active probe (not itself subject to the breaker)."""
        await self.ping(
            deadline=asyncio.get_running_loop().time() + self.settings.connect_timeout_s
        )

    async def listen(
        self,
        channel: str,
        *,
        on_message: Callable[[str], None],
        on_lost: Callable[[], None],
        deadline: float,
    ) -> Listener:
        """Open a connection that LISTENs on ``channel``; ``on_lost`` runs if it terminates."""
        dsn = self.settings.dsn.get_secret_value()
        with map_asyncpg_errors("listen"):
            async with asyncio.timeout_at(deadline):
                conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
                    dsn, ssl=self.ssl()
                )
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_message(payload))
        conn.add_termination_listener(lambda _c: on_lost())
        return Listener(conn)

    async def relay_session(self, *, idle_timeout_s: float, deadline: float) -> RelaySession:
        """A connection of its own for the feed relay (``app/relay.py``). Postgres ends it after
        ``idle_timeout_s`` without a statement, and probes its peer: a relay cut off from the
        store loses its advisory lock within seconds, and another process takes over."""
        dsn = self.settings.dsn.get_secret_value()
        with map_asyncpg_errors("relay: connect"):
            async with asyncio.timeout_at(deadline):
                conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
                    dsn, ssl=self.ssl(), server_settings={
                        "application_name": "cachegw-relay",
                        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                        "idle_in_transaction_session_timeout": str(STATEMENT_TIMEOUT_MS),
                        "idle_session_timeout": str(int(idle_timeout_s * 1000)),
                        "tcp_keepalives_idle": "5",
                        "tcp_keepalives_interval": "1",
                        "tcp_keepalives_count": "3",
                    },
                )  # fmt: skip
        return RelaySession(conn)

    async def get(
        self, namespace: str, key: str, *, deadline: float, background: bool = False
    ) -> Entry | None:
        """The key's live entry. ``background`` (repairs): not under the read route's breaker,
        which is the request path's, and sent as ``SQL_GET_MANY`` of one key (operation
        ``repair_get``), so Postgres's statistics (pg_stat_statements) and the gateway's tell the
        request path's lone reads (``SQL_GET``) from the repairers'.

        The request path's reads that arrive in one turn of the event loop go to Postgres as
        one statement (``SQL_GET_MANY``: a batch's misses, concurrent loads of different keys),
        a lone one as the plain ``SQL_GET``; each caller still waits no longer than its own
        deadline."""
        if background:
            rows = await self._fetch(
                "repair_get", SQL_GET_MANY, [namespace], [key], deadline=deadline
            )
            return _entry(rows[0], 1) if rows else None
        loop = asyncio.get_running_loop()
        read = _Read(namespace, key, deadline, loop.create_future())
        if not self._reads:
            loop.call_soon(self._send_reads)
        self._reads.append(read)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(read.future)
        except TimeoutError:
            raise StoreUnavailableError("store: get: no answer before the deadline") from None

    def _send_reads(self) -> None:
        reads, self._reads = self._reads, []
        for start in range(0, len(reads), GET_MANY_MAX):
            task = asyncio.get_running_loop().create_task(
                self._answer_reads(reads[start : start + GET_MANY_MAX])
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer_reads(self, reads: list[_Read]) -> None:
        deadline = max(read.deadline for read in reads)
        try:
            if len(reads) == 1:
                row = await self._fetchrow(
                    "get", SQL_GET, reads[0].namespace, reads[0].key, deadline=deadline,
                    route="read",
                )  # fmt: skip
                answers = [None if row is None else _entry(row)]
            else:
                rows = await self._run(
                    "get_many",
                    lambda conn: conn.fetch(
                        SQL_GET_MANY, [r.namespace for r in reads], [r.key for r in reads]
                    ),
                    deadline=deadline, route="read",
                )  # fmt: skip
                answers = [None] * len(reads)
                for row in rows:
                    answers[row[0] - 1] = _entry(row, 1)
        except Exception as exc:
            for read in reads:
                if not read.future.done():
                    read.future.set_exception(exc)
                    read.future.exception()  # retrieved: a caller past its deadline is gone
            return
        except BaseException:  # cancelled (the store closing): so are the reads
            for read in reads:
                read.future.cancel()
            raise
        for read, answer in zip(reads, answers, strict=True):
            if not read.future.done():
                read.future.set_result(answer)

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        content_type: str,
        ttl_ms: int | None,
        if_match: list[int] | None,
        if_exists: bool,
        if_none_match: bool,
        deadline: float,
    ) -> PutResult:
        """Write a value; ``StoreConflictError`` when a precondition does not hold."""
        row = await self._fetchone(
            "put", SQL_PUT,
            namespace, key, value, content_type, ttl_ms, if_match, if_exists, if_none_match,
            deadline=deadline, route="write",
        )  # fmt: skip
        outcome, version, created, expires_at_ms, outbox_id = row
        if outcome != "ok":
            raise StoreConflictError("precondition failed", current_version=version)
        return PutResult(
            version=version,
            seq=version,
            created=created,
            expires_at_ms=expires_at_ms,
            outbox_id=outbox_id,
            stored_at_ms=now_ms(),
        )

    async def delete(
        self, namespace: str, key: str, *, if_match: list[int] | None, deadline: float
    ) -> RemoveResult | None:
        """Delete a live entry; ``None`` when absent, ``StoreConflictError`` if If-Match fails."""
        row = await self._fetchone(
            "delete", SQL_DELETE, namespace, key, if_match,
            deadline=deadline, route="write",
        )  # fmt: skip
        return _removed(row)

    async def invalidate(self, namespace: str, key: str, *, deadline: float) -> RemoveResult | None:
        """Give a live entry a new cache seq, so every cached copy becomes too old to serve."""
        row = await self._fetchone(
            "invalidate", SQL_INVALIDATE, namespace, key,
            deadline=deadline, route="write",
        )  # fmt: skip
        return _removed(row)

    async def touch(
        self,
        namespace: str,
        key: str,
        *,
        ttl_ms: int,
        if_match: list[int] | None,
        if_exists: bool,
        deadline: float,
    ) -> TouchResult | None:
        """A new expiry and cache seq for a live entry; its version stays."""
        row = await self._fetchone(
            "touch", SQL_TOUCH, namespace, key, ttl_ms, if_match, if_exists,
            deadline=deadline, route="write",
        )  # fmt: skip
        outcome, version, seq, expires_at_ms, outbox_id = row
        if outcome == "not_found":
            return None
        if outcome != "ok":
            raise StoreConflictError("precondition failed", current_version=version)
        return TouchResult(
            version=version, seq=seq, expires_at_ms=expires_at_ms, outbox_id=outbox_id
        )

    async def outbox_claim(
        self, *, limit: int, grace_s: float, max_backoff_s: float, deadline: float
    ) -> list[OutboxRow]:
        rows = await self._fetch(
            "outbox_claim",
            SQL_OUTBOX_CLAIM,
            limit,
            grace_s,
            max_backoff_s,
            deadline=deadline,
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def outbox_done(self, ids: list[int], *, deadline: float) -> None:
        if ids:
            await self._execute("outbox_done", SQL_OUTBOX_DONE, ids, deadline=deadline)

    async def outbox_prune(self, *, retain_s: float, limit: int, deadline: float) -> int:
        """Forget applied rows older than ``retain_s``; how many were deleted."""
        status = await self._execute(
            "outbox_prune", SQL_OUTBOX_PRUNE, retain_s, limit, deadline=deadline
        )
        return int(status.rsplit(" ", 1)[-1])

    async def outbox_recent(
        self, *, within_s: float, limit: int, deadline: float
    ) -> list[OutboxRow]:
        """The newest row per key among rows written in the last ``within_s`` (applied or not)."""
        rows = await self._fetch(
            "outbox_recent", SQL_OUTBOX_RECENT, within_s, limit, deadline=deadline
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def outbox_missed(
        self, since: Position, *, limit: int, deadline: float
    ) -> list[OutboxRow]:
        """The newest row per key among the rows of transactions ``since`` does not see."""
        rows = await self._fetch(
            "outbox_missed", SQL_OUTBOX_MISSED, since.snapshot, limit, deadline=deadline
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def mark_times(self, *, deadline: float) -> tuple[float, float]:
        """The store's time now and the oldest pending row's creation (seconds since epoch)."""
        row = await self._fetchone("mark_times", SQL_MARK_TIMES, deadline=deadline)
        return float(row[0]), float(row[1])

    async def outbox_since(self, at: float, *, limit: int, deadline: float) -> list[OutboxRow]:
        """The newest row per key among the rows created at or after ``at`` (store time)."""
        rows = await self._fetch("outbox_since", SQL_OUTBOX_SINCE, at, limit, deadline=deadline)
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def outbox_pending(
        self,
        *,
        limit: int,
        chunk: int,
        on_rows: Callable[[list[tuple[str, str, int]]], None],
        deadline: float,
    ) -> int:
        """Keys whose last cache update has not reached Redis yet, with the seq it carries,
        handed to ``on_rows`` ``chunk`` at a time from a cursor; how many there were.

        A backlog can be 100,000 keys: read at once, turning them into objects alone would keep
        the event loop from requests for tens of milliseconds. Outside the store's breaker: a
        background query (the breaker guards the request path).
        """
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("store not started")
        count = 0
        try:
            with map_asyncpg_errors("store: outbox_pending"):
                async with asyncio.timeout_at(deadline):
                    conn = await pool.acquire()
                try:
                    async with asyncio.timeout_at(deadline), conn.transaction():
                        cursor = await conn.cursor(SQL_OUTBOX_PENDING, limit)
                        while True:
                            rows = await cursor.fetch(chunk)
                            count += len(rows)
                            on_rows([(r[0], r[1], r[2]) for r in rows])
                            if len(rows) < chunk:
                                break
                except BaseException:
                    self._release_later(pool, conn)  # closed first: its state is not known
                    raise
                await pool.release(conn)
        except StoreError as error:
            outcome = _outcome(error)
            telemetry.STORE_QUERIES.labels(operation="outbox_pending", outcome=outcome).inc()
            raise
        telemetry.STORE_QUERIES.labels(operation="outbox_pending", outcome="ok").inc()
        return count

    async def outbox_stats(self, *, deadline: float) -> tuple[int, float]:
        """Rows not applied yet, and the age in seconds of the oldest of them."""
        row = await self._fetchone("outbox_stats", SQL_OUTBOX_STATS, deadline=deadline)
        return int(row[0]), float(row[1])

    async def api_keys(self, *, deadline: float) -> list[ApiKeyRow]:
        rows = await self._fetch("api_keys", SQL_API_KEYS, deadline=deadline)
        return [
            ApiKeyRow(r[0], bytes(r[1]), r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in rows
        ]

    async def api_key(self, prefix: str, *, deadline: float) -> ApiKeyRow | None:
        """One API key by its prefix (one this process's table does not have yet)."""
        r = await self._fetchrow("api_key_lookup", SQL_API_KEY_BY_PREFIX, prefix, deadline=deadline)
        if r is None:
            return None
        return ApiKeyRow(r[0], bytes(r[1]), r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[8])

    async def create_api_key(
        self,
        *,
        prefix: str,
        secret_hash: bytes,
        namespace: str,
        scopes: list[str],
        rate_per_s: float | None,
        burst: int | None,
        description: str | None,
        deadline: float,
    ) -> None:
        await self._execute(
            "api_key_create", SQL_API_KEY_CREATE,
            prefix, secret_hash, namespace, scopes, rate_per_s, burst, description,
            deadline=deadline,
        )  # fmt: skip

    async def revoke_api_key(self, prefix: str, *, deadline: float) -> bool:
        status = await self._execute(
            "api_key_revoke",
            SQL_API_KEY_REVOKE,
            prefix,
            deadline=deadline,
        )
        return status.endswith(" 1")

    async def outbox_failed(self, ids: list[int], error: str, *, deadline: float) -> None:
        if ids:
            await self._execute(
                "outbox_failed", SQL_OUTBOX_FAILED, ids, error[:500], deadline=deadline
            )

    async def purge_expired(self, *, limit: int, deadline: float) -> int:
        status = await self._execute("purge", SQL_PURGE_EXPIRED, limit, deadline=deadline)
        return int(status.rsplit(" ", 1)[-1])


class Listener:
    """A connection of its own that LISTENs on one channel; made by ``Store.listen``."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self._conn = conn

    @property
    def alive(self) -> bool:
        return not self._conn.is_closed()

    async def position(self, *, deadline: float) -> Position:
        """A round trip on the listening connection (the only way to notice it died quietly),
        answering where the store's commit order stands now.

        Every transaction the answer's snapshot sees committed before it, so in notify mode
        (each writer sends its NOTIFY) its announcement is on this connection ahead of the
        answer to the next round trip. In relay mode it only proves the connection alive.
        """
        with map_asyncpg_errors("listener"):
            async with asyncio.timeout_at(deadline):
                row = await self._conn.fetchrow(SQL_POSITION)
        if row is None:
            raise StoreUnavailableError("listener: no answer to the position query")
        return Position(snapshot=row[0], at=row[1])

    async def aclose(self) -> None:
        try:
            with map_asyncpg_errors("listener: close"):
                await asyncio.wait_for(self._conn.close(), timeout=2)
        except StoreUnavailableError:
            self._conn.terminate()


class RelaySession:
    """The relay's connection: the advisory lock that elects the relay is this session's, and
    the relay reads and publishes on it, so a relay whose session is gone (and whose lock
    another process may hold) cannot publish. Made by ``Store.relay_session``."""

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self._conn = conn

    @property
    def alive(self) -> bool:
        return not self._conn.is_closed()

    async def try_lock(self, key: int, *, deadline: float) -> bool:
        """Take the session-level advisory lock ``key`` if free (or already ours)."""
        with map_asyncpg_errors("relay: lock"):
            async with asyncio.timeout_at(deadline):
                return bool(await self._conn.fetchval(SQL_TRY_LOCK, key))

    async def persisted(self, *, deadline: float) -> Position | None:
        """The last position a relay announced, if any."""
        with map_asyncpg_errors("relay: position"):
            async with asyncio.timeout_at(deadline):
                row = await self._conn.fetchrow(SQL_RELAY_PERSISTED)
        return None if row is None else Position(snapshot=row[0], at=row[1])

    async def read(
        self,
        since: Position | None,
        *,
        after: tuple[str, str] | None,
        within_s: float,
        limit: int,
        deadline: float,
    ) -> tuple[Position, list[FeedRow]]:
        """Where the commit order stands, and the newest row per key (from the key ``after``)
        of the transactions it sees and ``since`` does not (``None``: those written within
        ``within_s``)."""
        sql, first = (
            (SQL_RELAY_READ_RECENT, within_s) if since is None else (SQL_RELAY_READ, since.snapshot)
        )
        after_ns, after_key = after if after is not None else (None, None)
        with map_asyncpg_errors("relay: read"):
            async with asyncio.timeout_at(deadline):
                records = await self._conn.fetch(sql, first, after_ns, after_key, limit)
        if not records:
            raise StoreUnavailableError("relay: no answer to the read")
        here = Position(snapshot=records[0][0], at=records[0][1])
        return here, [FeedRow(r[2], r[3], r[4], r[5]) for r in records if r[2] is not None]

    async def publish(
        self, channel: str, payloads: list[str], position: Position | None, *, deadline: float
    ) -> None:
        """The payloads, in order, in one transaction; ``position`` recorded with them."""
        snapshot, at = (None, None) if position is None else (position.snapshot, position.at)
        with map_asyncpg_errors("relay: publish"):
            async with asyncio.timeout_at(deadline):
                await self._conn.execute(SQL_RELAY_PUBLISH, channel, payloads, snapshot, at)

    def abort(self) -> None:
        """Close at once (after a failure: the connection's state is not known)."""
        self._conn.terminate()

    async def aclose(self) -> None:
        try:
            with map_asyncpg_errors("relay: close"):
                await asyncio.wait_for(self._conn.close(), timeout=2)
        except StoreUnavailableError:
            self._conn.terminate()


@dataclass(slots=True)
class _Read:
    namespace: str
    key: str
    deadline: float
    future: asyncio.Future[Entry | None]


def _entry(row: asyncpg.Record, start: int = 0) -> Entry:
    """An entry from the row's (value, content_type, version, cache_seq, expires_at_ms), from
    column ``start`` on."""
    return Entry(
        value=row[start],
        content_type=row[start + 1],
        version=row[start + 2],
        seq=row[start + 3],
        stored_at_ms=now_ms(),
        expires_at_ms=row[start + 4],
    )


def _removed(row: asyncpg.Record) -> RemoveResult | None:
    outcome, version, seq, outbox_id = row
    if outcome == "not_found":
        return None
    if outcome != "ok":
        raise StoreConflictError("precondition failed", current_version=version)
    return RemoveResult(version=version, seq=seq, outbox_id=outbox_id)


def asyncpg_ssl(
    settings: PostgresSettings,
) -> ssl_module.SSLContext | Literal["disable", "prefer", "require"]:
    """asyncpg's ``ssl`` argument for the settings (libpq's sslmode semantics); the gateway's
    pool and the migrations (``alembic/env.py``) connect alike."""
    mode = settings.ssl_mode
    if mode == "verify-ca" or mode == "verify-full":
        context = ssl_module.create_default_context(cafile=settings.ssl_ca_file)
        context.check_hostname = mode == "verify-full"
        return context
    return mode
