"""Cold-key stampedes cost one store query, counted by Postgres itself (pg_stat_statements)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio

from devstack import Stack
from devstack.rawhttp import Connection
from tests.integration.conftest import auth_headers, gateway_client, settings_for
from tests.integration.harness import gateway_process

# The request path's lone read of an entry: repairs read with a statement of their own, so that
# what they read while a stampede is counted is not counted as the stampede's.
GET_QUERY = "%FROM entries WHERE namespace = $1 AND key = $2%"


async def cold_key(stack: Stack, value: bytes) -> str:
    """A key in the store only: written with SQL, so no cache, outbox row or feed knows it."""
    key = f"cold-{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO entries (namespace, key, value, content_type, version, cache_seq) "
            "VALUES ('default', $1, $2, 'text/plain', nextval('entry_version_seq'), "
            "currval('entry_version_seq'))",
            key,
            value,
        )
    finally:
        await conn.close()
    return key


async def reset_statements(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def store_reads(stack: Stack) -> int:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        calls: int = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query LIKE $1",
            GET_QUERY,
        )
        return calls
    finally:
        await conn.close()


async def reset_redis_stats(stack: Stack) -> None:
    for port in stack.redis_ports:
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            await client.config_resetstat()
        finally:
            await client.aclose()


async def redis_gets(stack: Stack) -> int:
    """GETs every Redis node of the stack served since its statistics were reset."""
    total = 0
    for port in stack.redis_ports:
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            stats = await client.info("commandstats")
            total += int(stats.get("cmdstat_get", {}).get("calls", 0))
        finally:
            await client.aclose()
    return total


async def stampede(base: str, stack: Stack, rounds: int, *, settle_s: float = 0.0) -> list[int]:
    """``rounds`` times: a new cold key, 1,000 concurrent GETs of it; store reads per round,
    counted ``settle_s`` after the last answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    async with httpx.AsyncClient(
        base_url=base, timeout=5, headers=auth_headers()
    ) as warm:  # every worker up
        for _ in range(20):
            await warm.get("/livez")
    connections = [Connection(host, int(port), headers=auth_headers()) for _ in range(1000)]
    try:
        results = []
        for round_ in range(rounds):
            key = await cold_key(stack, b"cold value")
            await reset_statements(stack)
            replies = await asyncio.gather(
                *(c.request("GET", f"/v1/keys/{key}") for c in connections)
            )
            bad = [(r.status, r.content[:200]) for r in replies if r.status != 200]
            assert not bad, (round_, len(bad), bad[:2])
            assert {r.content for r in replies} == {b"cold value"}
            await asyncio.sleep(settle_s)
            results.append(await store_reads(stack))
        return results
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def test_1000_concurrent_reads_of_a_cold_key_make_one_store_query(
    stack: Stack, tmp_path: Path
) -> None:
    with gateway_process(stack, tmp_path) as base:
        assert await stampede(base, stack, 3) == [1, 1, 1]


async def test_repairs_during_a_stampede_are_not_counted_as_its_reads(
    stack: Stack, tmp_path: Path
) -> None:
    """The outbox repairer reads entries while a stampede is counted (2,000 rows left pending,
    100 a round, a round every 0.5 s: busy for the whole count): Postgres still counts one read
    of the request path's statement, since the repairer's reads are a statement of their own."""
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO entries (namespace, key, value, content_type, version, cache_seq) "
            "SELECT 'pending', 'p' || g, 'x', 'text/plain', nextval('entry_version_seq'), "
            "currval('entry_version_seq') FROM generate_series(1, 2000) g"
        )
        await conn.execute(
            "INSERT INTO cache_outbox (namespace, key, seq, created_at) "
            "SELECT namespace, key, cache_seq, now() - interval '1 min' FROM entries "
            "WHERE namespace = 'pending'"
        )
        with gateway_process(stack, tmp_path) as base:
            assert await stampede(base, stack, 1, settle_s=1.0) == [1]
            repaired = await conn.fetchval(
                "SELECT count(*) FROM cache_outbox "
                "WHERE namespace = 'pending' AND applied_at IS NOT NULL"
            )
            assert repaired > 0  # the repairer did read entries meanwhile
    finally:
        await conn.execute("DELETE FROM cache_outbox WHERE namespace = 'pending'")
        await conn.execute("DELETE FROM entries WHERE namespace = 'pending'")
        await conn.close()


async def test_1000_concurrent_reads_in_one_event_loop(stack: Stack) -> None:
    """The same through the in-process app, every request in one loop (a generous deadline:
    the test client's own work shares the loop)."""
    settings = settings_for(stack, read_deadline_ms=10_000, redis={"primary_timeout_ms": 5000})
    async with gateway_client(settings) as (client, _):
        key = await cold_key(stack, b"cold value")
        await reset_statements(stack)
        responses = await asyncio.gather(*(client.get(f"/v1/keys/{key}") for _ in range(1000)))
        assert {r.status_code for r in responses} == {200}
        assert await store_reads(stack) == 1


async def test_1000_concurrent_reads_share_their_redis_reads(stack: Stack) -> None:
    """Readers of one key that arrive while its primary read is on its way share the next read,
    one that starts after all of them arrived: a few GETs, not one per reader (which, on a busy
    host, made the node's breaker open on the stampede's own latency). Then the same for a key
    in Redis: every reader gets it, and still a few GETs."""
    settings = settings_for(stack, read_deadline_ms=10_000, redis={"primary_timeout_ms": 5000})
    async with gateway_client(settings) as (client, _):
        key = await cold_key(stack, b"cold value")
        for expected in ("fwd=miss", "hit"):
            await reset_redis_stats(stack)
            responses = await asyncio.gather(*(client.get(f"/v1/keys/{key}") for _ in range(1000)))
            assert {r.status_code for r in responses} == {200}
            assert {r.content for r in responses} == {b"cold value"}
            assert all(expected in r.headers["cache-status"] for r in responses[:1])
            gets = await redis_gets(stack)
            assert gets <= 10, (expected, gets)


async def test_two_worker_processes_make_at_most_two_store_queries(
    stack: Stack, tmp_path: Path
) -> None:
    with gateway_process(stack, tmp_path, WORKERS="2") as base:
        results = await stampede(base, stack, 3)
    assert max(results) <= 2, results


@contextmanager
def busy_core(seconds: float) -> Iterator[None]:
    """A process that keeps one of the machine's cores busy (bounded in time, stopped by PID)."""
    burn = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", burn])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_a_stampede_on_a_busy_host_is_answered_in_full(stack: Stack, tmp_path: Path) -> None:
    """Two workers and 1,000 readers while another process keeps a core busy: each round runs
    past the read deadline, yet every reader gets the value (readers with nothing else to answer
    with wait for the shared load), still at most one store query per worker."""
    with gateway_process(stack, tmp_path, WORKERS="2") as base, busy_core(60):
        results = await stampede(base, stack, 3)
    assert max(results) <= 2, results
