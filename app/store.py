"""The authoritative store: Postgres through an asyncpg pool.

Writes go through SQL functions created by the migrations (``cachegw_put``, ``cachegw_delete``,
``cachegw_invalidate``): each runs in one transaction that takes a version from one sequence,
changes the entry and records an outbox row, so one round trip makes a write durable together with
the promise to update the caches. asyncpg and its errors are used only in this module.

The tables are described for alembic in ``app/schema.py``; nothing here imports SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg

from app import telemetry, tracing
from app.breaker import Breaker
from app.codec import Entry, now_ms
from app.errors import StoreConflictError, StoreUnavailableError, WriteOutcomeUnknownError
from app.settings import PostgresSettings

log = logging.getLogger(__name__)

_LIVE = "(expires_at IS NULL OR expires_at > now())"
_EXPIRES_MS = "(extract(epoch FROM expires_at) * 1000)::bigint"

SQL_GET = f"""
SELECT value, content_type, version, cache_seq, {_EXPIRES_MS}
  FROM entries WHERE namespace = $1 AND key = $2 AND {_LIVE}
"""
SQL_PUT = "SELECT * FROM cachegw_put($1, $2, $3, $4, $5, $6, $7, $8)"
SQL_DELETE = "SELECT * FROM cachegw_delete($1, $2, $3)"
SQL_INVALIDATE = "SELECT * FROM cachegw_invalidate($1, $2)"
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


# What asyncpg raises when Postgres cannot be reached or refuses (InternalClientError is not an
# InterfaceError, and leaks from a connection in a bad state).
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
DRIVER_ERRORS_OR_TIMEOUT: tuple[type[Exception], ...] = (TimeoutError, *DRIVER_ERRORS)
# The longest a statement (or a lock wait, or an idle transaction) may take on a pool connection.
STATEMENT_TIMEOUT_MS = 5000
# The operations whose outcome is unknown when their reply does not come.
WRITES = frozenset({"put", "delete", "invalidate"})


async def _no_reset(_conn: Any) -> None:
    """asyncpg's reset on release is a round trip (``RESET ALL``, ``UNLISTEN *``, ...) that the
    gateway does not need: its pool connections keep no session state (listening is done on a
    connection of its own). asyncpg still rolls back a transaction left open."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: int
    seq: int
    created: bool
    expires_at_ms: int | None
    outbox_id: int
    stored_at_ms: int


@dataclass(frozen=True, slots=True)
class RemoveResult:
    """A delete or invalidate: the version it removed or re-sequenced, and the new seq."""

    version: int
    seq: int
    outbox_id: int


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
        parts = urlsplit(settings.dsn.get_secret_value())
        self._address = (parts.hostname or "localhost", parts.port or 5432)

    async def start(self) -> None:
        """Open the pool with ``pool_min_size`` connections; while Postgres is down, with none
        (connections then come on demand): a store that is down does not stop start-up."""
        for min_size in dict.fromkeys((self.settings.pool_min_size, 0)):
            try:
                self._pool = await asyncpg.create_pool(
                    self.settings.dsn.get_secret_value(),
                    ssl=self.ssl(),
                    min_size=min_size,
                    max_size=self.settings.pool_max_size,
                    timeout=self.settings.connect_timeout_s,
                    command_timeout=None,
                    reset=_no_reset,
                    # No statement (a write is one) outlives its client's interest for long:
                    # the recovery's replay margin counts on it.
                    server_settings={
                        "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                        "lock_timeout": str(STATEMENT_TIMEOUT_MS),
                        "idle_in_transaction_session_timeout": str(STATEMENT_TIMEOUT_MS),
                    },
                )
                break
            except DRIVER_ERRORS_OR_TIMEOUT as exc:
                if min_size == 0:
                    raise StoreUnavailableError(f"store: pool: {type(exc).__name__}") from exc
        with contextlib.suppress(StoreUnavailableError):
            await self.ping(
                deadline=asyncio.get_running_loop().time() + self.settings.connect_timeout_s
            )

    def ssl(self) -> ssl_module.SSLContext | Literal["disable", "prefer", "require"]:
        """asyncpg's ``ssl`` argument for the settings (libpq's sslmode semantics)."""
        mode = self.settings.ssl_mode
        if mode == "verify-ca" or mode == "verify-full":
            context = ssl_module.create_default_context(cafile=self.settings.ssl_ca_file)
            context.check_hostname = mode == "verify-full"
            return context
        return mode

    async def aclose(self) -> None:
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=self.settings.connect_timeout_s)
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except TimeoutError:
                pool.terminate()

    async def _run(
        self,
        operation: str,
        method: str,
        sql: str,
        *args: Any,
        deadline: float,
        route: Literal["read", "write"] | None = None,
    ) -> Any:
        """One query; a read or a write of the request path goes under its route's breaker."""
        breaker = (
            None if route is None else self.read_breaker if route == "read" else self.write_breaker
        )
        if route is not None and tracing.recording():
            attributes = {
                "db.system.name": "postgresql", "db.operation.name": operation,
                "server.address": self._address[0], "server.port": self._address[1],
            }  # fmt: skip
            with tracing.tier_span(f"postgresql {operation}", attributes):
                return await self._query(breaker, operation, method, sql, *args, deadline=deadline)
        return await self._query(breaker, operation, method, sql, *args, deadline=deadline)

    async def _query(
        self, breaker: Breaker | None, operation: str, method: str, sql: str, *args: Any,
        deadline: float,
    ) -> Any:  # fmt: skip
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
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire()
        except asyncio.CancelledError:
            if breaker is not None:
                breaker.release()
            raise
        except TimeoutError as exc:
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="timeout").inc()
            if breaker is not None:
                breaker.release()  # every connection busy, or a slow connect: nothing was sent
            raise StoreUnavailableError(f"store: {operation}: no connection in time") from exc
        except DRIVER_ERRORS as exc:
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="error").inc()
            if breaker is not None:
                breaker.record(ok=False, duration_s=0.0)
            raise StoreUnavailableError(f"store: {operation}: {type(exc).__name__}") from exc
        started = loop.time()
        try:
            async with asyncio.timeout_at(deadline):
                result = await getattr(conn, method)(sql, *args)
        except asyncio.CancelledError:
            self._release_later(pool, conn)
            if breaker is not None:
                breaker.release()
            raise
        except (TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
            self._release_later(pool, conn)
            outcome = "timeout" if isinstance(exc, TimeoutError) else "error"
            telemetry.STORE_QUERIES.labels(operation=operation, outcome=outcome).inc()
            if breaker is not None:
                breaker.record(ok=False, duration_s=loop.time() - started)
            what = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            if operation in WRITES:
                raise WriteOutcomeUnknownError(
                    f"store: {operation} sent, no reply ({what}): it may have committed"
                ) from exc
            raise StoreUnavailableError(f"store: {operation}: {what}") from exc
        except asyncpg.PostgresError as exc:  # the server refused it: rolled back
            self._release_later(pool, conn)
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="error").inc()
            if breaker is not None:
                breaker.record(ok=False, duration_s=loop.time() - started)
            raise StoreUnavailableError(f"store: {operation}: {type(exc).__name__}") from exc
        try:
            await pool.release(conn)  # local (no reset query): the answer does not wait on it
        except Exception as exc:  # asyncpg has closed it; the statement's result stands
            log.warning("store: a connection could not go back to the pool: %r", exc)
        if breaker is not None:
            breaker.record(ok=True, duration_s=loop.time() - started)
        telemetry.STORE_QUERIES.labels(operation=operation, outcome="ok").inc()
        return result

    def _release_later(self, pool: asyncpg.Pool[asyncpg.Record], conn: Any) -> None:
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
        await self._run("ping", "fetchval", "SELECT 1", deadline=deadline)

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
        try:
            async with asyncio.timeout_at(deadline):
                conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
                    dsn, ssl=self.ssl()
                )
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload: on_message(payload))
        except asyncio.CancelledError:
            raise
        except DRIVER_ERRORS_OR_TIMEOUT as exc:
            raise StoreUnavailableError(f"listen: {type(exc).__name__}") from exc
        conn.add_termination_listener(lambda _c: on_lost())
        return Listener(conn)

    async def get(
        self, namespace: str, key: str, *, deadline: float, background: bool = False
    ) -> Entry | None:
        """The key's live entry. ``background`` (repairs): not under the read route's breaker,
        which is the request path's."""
        row = await self._run(
            "get", "fetchrow", SQL_GET, namespace, key, deadline=deadline,
            route=None if background else "read",
        )  # fmt: skip
        if row is None:
            return None
        return Entry(
            value=row[0],
            content_type=row[1],
            version=row[2],
            seq=row[3],
            stored_at_ms=now_ms(),
            expires_at_ms=row[4],
        )

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
    ) -> WriteResult:
        """Write a value; ``StoreConflictError`` when a precondition does not hold."""
        row = await self._run(
            "put", "fetchrow", SQL_PUT,
            namespace, key, value, content_type, ttl_ms, if_match, if_exists, if_none_match,
            deadline=deadline, route="write",
        )  # fmt: skip
        outcome, version, created, expires_at_ms, outbox_id = row
        if outcome != "ok":
            raise StoreConflictError("precondition failed", current_version=version)
        return WriteResult(
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
        row = await self._run(
            "delete", "fetchrow", SQL_DELETE, namespace, key, if_match,
            deadline=deadline, route="write",
        )  # fmt: skip
        return _removed(row)

    async def invalidate(self, namespace: str, key: str, *, deadline: float) -> RemoveResult | None:
        """Give a live entry a new cache seq, so every cached copy becomes too old to serve."""
        row = await self._run(
            "invalidate", "fetchrow", SQL_INVALIDATE, namespace, key,
            deadline=deadline, route="write",
        )  # fmt: skip
        return _removed(row)

    async def outbox_claim(
        self, *, limit: int, grace_s: float, max_backoff_s: float, deadline: float
    ) -> list[OutboxRow]:
        rows = await self._run(
            "outbox_claim",
            "fetch",
            SQL_OUTBOX_CLAIM,
            limit,
            grace_s,
            max_backoff_s,
            deadline=deadline,
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def outbox_done(self, ids: list[int], *, deadline: float) -> None:
        if ids:
            await self._run("outbox_done", "execute", SQL_OUTBOX_DONE, ids, deadline=deadline)

    async def outbox_prune(self, *, retain_s: float, limit: int, deadline: float) -> int:
        """Forget applied rows older than ``retain_s``; how many were deleted."""
        status: str = await self._run(
            "outbox_prune", "execute", SQL_OUTBOX_PRUNE, retain_s, limit, deadline=deadline
        )
        return int(status.rsplit(" ", 1)[-1])

    async def outbox_recent(
        self, *, within_s: float, limit: int, deadline: float
    ) -> list[OutboxRow]:
        """The newest row per key among rows written in the last ``within_s`` (applied or not)."""
        rows = await self._run(
            "outbox_recent", "fetch", SQL_OUTBOX_RECENT, within_s, limit, deadline=deadline
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def outbox_missed(
        self, since: Position, *, limit: int, deadline: float
    ) -> list[OutboxRow]:
        """The newest row per key among the rows of transactions ``since`` does not see."""
        rows = await self._run(
            "outbox_missed", "fetch", SQL_OUTBOX_MISSED, since.snapshot, limit, deadline=deadline
        )
        return [OutboxRow(id=r[0], namespace=r[1], key=r[2], seq=r[3]) for r in rows]

    async def mark_times(self, *, deadline: float) -> tuple[float, float]:
        """The store's time now and the oldest pending row's creation (seconds since epoch)."""
        row = await self._run("mark_times", "fetchrow", SQL_MARK_TIMES, deadline=deadline)
        return float(row[0]), float(row[1])

    async def outbox_since(self, at: float, *, limit: int, deadline: float) -> list[OutboxRow]:
        """The newest row per key among the rows created at or after ``at`` (store time)."""
        rows = await self._run(
            "outbox_since", "fetch", SQL_OUTBOX_SINCE, at, limit, deadline=deadline
        )
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
        with self._translated("outbox_pending"):
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
        telemetry.STORE_QUERIES.labels(operation="outbox_pending", outcome="ok").inc()
        return count

    @contextlib.contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        """asyncpg's errors and the deadline as ``StoreUnavailableError``, counted."""
        try:
            yield
        except TimeoutError as exc:
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="timeout").inc()
            raise StoreUnavailableError(f"store: {operation} timed out") from exc
        except DRIVER_ERRORS as exc:
            telemetry.STORE_QUERIES.labels(operation=operation, outcome="error").inc()
            raise StoreUnavailableError(f"store: {operation}: {type(exc).__name__}") from exc

    async def outbox_stats(self, *, deadline: float) -> tuple[int, float]:
        """Rows not applied yet, and the age in seconds of the oldest of them."""
        row = await self._run("outbox_stats", "fetchrow", SQL_OUTBOX_STATS, deadline=deadline)
        return int(row[0]), float(row[1])

    async def api_keys(self, *, deadline: float) -> list[ApiKeyRow]:
        rows = await self._run("api_keys", "fetch", SQL_API_KEYS, deadline=deadline)
        return [
            ApiKeyRow(r[0], bytes(r[1]), r[2], tuple(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in rows
        ]

    async def api_key(self, prefix: str, *, deadline: float) -> ApiKeyRow | None:
        """One API key by its prefix (one this process's table does not have yet)."""
        r = await self._run(
            "api_key_lookup", "fetchrow", SQL_API_KEY_BY_PREFIX, prefix, deadline=deadline
        )
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
        await self._run(
            "api_key_create", "execute", SQL_API_KEY_CREATE,
            prefix, secret_hash, namespace, scopes, rate_per_s, burst, description,
            deadline=deadline,
        )  # fmt: skip

    async def revoke_api_key(self, prefix: str, *, deadline: float) -> bool:
        status: str = await self._run(
            "api_key_revoke",
            "execute",
            SQL_API_KEY_REVOKE,
            prefix,
            deadline=deadline,
        )
        return status.endswith(" 1")

    async def outbox_failed(self, ids: list[int], error: str, *, deadline: float) -> None:
        if ids:
            await self._run(
                "outbox_failed", "execute", SQL_OUTBOX_FAILED, ids, error[:500], deadline=deadline
            )

    async def purge_expired(self, *, limit: int, deadline: float) -> int:
        status: str = await self._run(
            "purge", "execute", SQL_PURGE_EXPIRED, limit, deadline=deadline
        )
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

        Every transaction the answer's snapshot sees committed before it, so its announcement
        is on this connection ahead of the answer to the next round trip.
        """
        try:
            async with asyncio.timeout_at(deadline):
                row = await self._conn.fetchrow(SQL_POSITION)
        except asyncio.CancelledError:
            raise
        except DRIVER_ERRORS_OR_TIMEOUT as exc:
            raise StoreUnavailableError(f"listener: {type(exc).__name__}") from exc
        if row is None:
            raise StoreUnavailableError("listener: no answer to the position query")
        return Position(snapshot=row[0], at=row[1])

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self._conn.close(), timeout=2)
        except DRIVER_ERRORS_OR_TIMEOUT:
            self._conn.terminate()


def _removed(row: Any) -> RemoveResult | None:
    outcome, version, seq, outbox_id = row
    if outcome == "not_found":
        return None
    if outcome != "ok":
        raise StoreConflictError("precondition failed", current_version=version)
    return RemoveResult(version=version, seq=seq, outbox_id=outbox_id)
