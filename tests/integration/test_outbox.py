"""Acknowledged writes survive a Redis Cluster that is entirely down (the outbox repairs it)."""

from __future__ import annotations

import asyncio

import asyncpg

from app.codec import Entry, Tombstone
from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.redis_direct import cached
from tests.integration.test_api_keys import new_key


async def outbox_rows(stack: Stack, key: str) -> int:
    """Rows of the key whose cache update has not been applied yet."""
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM cache_outbox WHERE key = $1 AND applied_at IS NULL", key
        )
        return count
    finally:
        await conn.close()


async def wait_for(predicate: object, *, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_writes_while_every_node_is_down_are_acknowledged_then_repaired(
    healthy_stack: Stack,
) -> None:
    stack = healthy_stack
    settings = settings_for(stack, outbox={"interval_s": 0.2, "grace_s": 0.5})
    async with gateway_client(settings) as (client, gateway):
        kept, deleted = new_key("kept"), new_key("deleted")
        await client.put(f"/v1/keys/{kept}", content=b"before")
        await client.put(f"/v1/keys/{deleted}", content=b"doomed")
        assert isinstance(cached(stack, deleted), Entry)

        for port in stack.redis_ports:
            stack.kill_node(port)
        put = await client.put(f"/v1/keys/{kept}", content=b"after")
        assert put.status_code == 200
        version = int(put.headers["etag"].strip('"'))
        assert (await client.delete(f"/v1/keys/{deleted}")).status_code == 204
        assert await outbox_rows(stack, kept) >= 1
        # Reads are answered meanwhile, by the local copy the write left in this process.
        got = await client.get(f"/v1/keys/{kept}")
        assert got.content == b"after"
        assert got.headers["cache-status"] == "cachegw; hit; detail=local"
        assert (await client.get(f"/v1/keys/{deleted}")).status_code == 404

        for port in stack.redis_ports:
            stack.start_node(port)
        await asyncio.to_thread(stack.wait_cluster_ok, 60)

        def repaired() -> bool:
            record = cached(stack, kept)
            return isinstance(record, Entry) and record.version == version

        await wait_for(repaired, timeout_s=20)
        # Each row has its own retry time (backed off while the nodes were down), so the
        # delete's row may be repaired a round or a backoff after the put's.
        await wait_for(lambda: isinstance(cached(stack, deleted), Tombstone), timeout_s=20)
        await wait_for(lambda: gateway.slots.map.covered() == 16384, timeout_s=20)
        got = await client.get(f"/v1/keys/{kept}")
        assert got.content == b"after"
        assert got.headers["etag"] == f'"{version}"'
        assert (await client.get(f"/v1/keys/{deleted}")).status_code == 404
        await wait_for(lambda: True, timeout_s=1)
        await gateway.outbox.flush_done()
        assert await outbox_rows(stack, kept) == 0


async def test_a_write_is_503_and_changes_nothing_when_postgres_is_down(
    healthy_stack: Stack,
) -> None:
    stack = healthy_stack
    async with gateway_client(settings_for(stack)) as (client, _):
        key = new_key()
        await client.put(f"/v1/keys/{key}", content=b"original")
        stack.stop_postgres()
        try:
            response = await client.put(f"/v1/keys/{key}", content=b"changed")
            assert response.status_code == 503
            assert response.headers["retry-after"]
            assert response.headers["content-type"] == "application/problem+json"
            record = cached(stack, key)
            assert isinstance(record, Entry)
            assert record.value == b"original"
            # A hit is still served; a miss cannot be told from an absence, so it is 503, not 404.
            assert (await client.get(f"/v1/keys/{key}")).content == b"original"
            assert (await client.get(f"/v1/keys/{new_key()}")).status_code == 503
            # Still ready: Redis serves what it holds, and every instance sees the same outage.
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["serves"] == "reads of what Redis holds; writes fail"
        finally:
            stack.start_postgres()
        assert (await client.get(f"/v1/keys/{key}")).content == b"original"


async def test_one_maintenance_pass_deletes_every_overdue_row_whatever_the_backlog(
    stack: Stack,
) -> None:
    """12,000 rows past retention and 12,000 expired entries are gone after one pass (the old
    pass deleted 1,000 of each every 10 s: about 100 rows/s); pending and recent rows stay."""
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO cache_outbox (namespace, key, seq, created_at, applied_at) "
            "SELECT 'maint', 'old-' || g, g, now() - interval '1 h', now() - interval '1 h' "
            "FROM generate_series(1, 12000) g"
        )
        await conn.execute(
            "INSERT INTO cache_outbox (namespace, key, seq, created_at, applied_at) VALUES "
            "('maint', 'pending', 1, now() - interval '1 h', NULL), "
            "('maint', 'recent', 2, now() - interval '1 h', now())"
        )
        await conn.execute(
            "INSERT INTO entries (namespace, key, value, content_type, version, cache_seq, "
            "expires_at) SELECT 'maint', 'e' || g, 'x', 'text/plain', g, g, "
            "now() - interval '1 s' FROM generate_series(1, 12000) g"
        )
        async with gateway_client(settings_for(stack)) as (_, gateway):
            assert await gateway.outbox.maintain() is True
        left = await conn.fetch(
            "SELECT key FROM cache_outbox WHERE namespace = 'maint' ORDER BY key"
        )
        assert [r["key"] for r in left] == ["pending", "recent"]
        assert await conn.fetchval("SELECT count(*) FROM entries WHERE namespace = 'maint'") == 0
    finally:
        await conn.execute("DELETE FROM cache_outbox WHERE namespace = 'maint'")
        await conn.execute("DELETE FROM entries WHERE namespace = 'maint'")
        await conn.close()
