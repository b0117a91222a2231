"""The fallback chain under real faults, with 50 checking readers against a gateway process.

Each test breaks the local stack on purpose and ``healthy_stack`` puts it back afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.cluster.slots import key_slot
from app.codec import Entry, Tombstone
from devstack import Stack
from devstack.cluster_ops import (
    key_in_node,
    migrate_slot_slowly,
    owner_of,
    primaries,
    redis_cli,
    reshard,
)
from tests.integration.conftest import auth_headers, gateway_client, settings_for
from tests.integration.harness import Workload, gateway_process, metric, spread_keys
from tests.integration.redis_direct import cached, restore

DEADLINE_S = 0.25


def keys_of(stack: Stack, node: dict[str, object], keys: list[str]) -> set[str]:
    return {
        k for k in keys if owner_of(stack, key_slot(f"cg:default:{k}".encode()))["id"] == node["id"]
    }


def replica_value(stack: Stack, primary: dict[str, object], key: str) -> bytes:
    """What a replica of ``primary`` holds for ``key`` (READONLY and GET on one connection)."""
    replica = next(
        n
        for n in stack.cluster_nodes()
        if n["role"] == "replica" and n["primary_id"] == primary["id"]
    )
    commands = f"READONLY\nGET cg:default:{key}\n".encode()
    proc = subprocess.run(
        ["redis-cli", "-p", str(replica["port"])], input=commands, capture_output=True,
        timeout=10, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0.0


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


async def test_sigkill_of_a_primary(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    victim = primaries(stack)[0]
    port = int(victim["port"])  # type: ignore[call-overload]
    with gateway_process(stack, logs) as base:
        work = Workload(base, spread_keys("kill", 300))
        await work.seed()
        victim_keys = keys_of(stack, victim, work.keys)

        async def kill() -> None:
            await asyncio.to_thread(stack.kill_node, port)

        # Promotion takes about 4 s; its repair (the outbox replayed into it) up to 6 s more on
        # a slow machine: the last 2 s are well after both.
        await work.run(16.0, events=[(2.0, kill)])
        await work.verify_final()  # every acknowledged write is visible after the promotion
    assert work.problems == [], work.problems[:10]
    assert work.write_failures == [], work.write_failures[:5]
    assert all(o.status == 200 for o in work.observations)
    during = work.tiers(victim_keys, 2.2, 4.0)
    assert any("detail=replica" in s or "detail=local" in s for s in during), during
    after = work.tiers(victim_keys, 14.0, 16.0)
    assert after.get("cachegw; hit; detail=primary", 0) > sum(after.values()) * 0.8, after


async def test_sigstop_of_a_primary_every_answer_within_the_deadline(
    healthy_stack: Stack, logs: Path
) -> None:
    stack = healthy_stack
    victim = primaries(stack)[0]
    port = int(victim["port"])  # type: ignore[call-overload]
    with gateway_process(stack, logs) as base:
        work = Workload(base, spread_keys("stop", 300))
        await work.seed()
        victim_keys = keys_of(stack, victim, work.keys)

        async def pause() -> None:
            await asyncio.to_thread(stack.pause_node, port)

        async def resume() -> None:
            await asyncio.to_thread(stack.resume_node, port)

        # Paused for 1.5 s: below cluster-node-timeout (2 s), so no failover: a hung primary.
        await work.run(5.0, events=[(1.0, pause), (2.5, resume)])
        await work.verify_final()
    assert work.problems == [], work.problems[:10]
    latencies = work.latencies()
    assert max(latencies) <= DEADLINE_S + 0.05, (max(latencies), p99(latencies))
    during = work.tiers(victim_keys, 1.1, 2.4)
    assert any("detail=replica" in s or "detail=local" in s for s in during), during


async def test_a_slow_primary_every_answer_within_the_deadline(
    healthy_stack: Stack, logs: Path
) -> None:
    stack = healthy_stack
    victim = primaries(stack)[1]
    port = int(victim["port"])  # type: ignore[call-overload]
    with gateway_process(stack, logs) as base:
        work = Workload(base, spread_keys("slow", 300))
        await work.seed()

        async def sleep_node() -> None:
            asyncio.get_running_loop().run_in_executor(
                None, redis_cli, port, "DEBUG", "SLEEP", "1.5"
            )

        await work.run(4.5, events=[(1.0, sleep_node)])
    assert work.problems == [], work.problems[:10]
    latencies = work.latencies()
    assert max(latencies) <= DEADLINE_S + 0.05, (max(latencies), p99(latencies))


async def test_live_resharding(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    source, target = primaries(stack)[:2]
    with gateway_process(stack, logs) as base:
        work = Workload(base, spread_keys("reshard", 400))
        await work.seed()
        moved_before = metric(base, "cachegw_redis_redirects_total", 'kind="moved"')

        async def move() -> None:
            await reshard(stack, source, target, 500)

        await work.run(6.0, events=[(1.0, move)])
        await work.verify_final()
        moved = metric(base, "cachegw_redis_redirects_total", 'kind="moved"') - moved_before
    assert work.problems == [], work.problems[:10]
    assert all(o.status == 200 for o in work.observations)
    assert moved > 0


async def test_slow_manual_migration_of_a_slot(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    tagged = [f"{{slowmig}}-{i}" for i in range(60)]
    slot = key_slot(f"cg:default:{tagged[0]}".encode())
    with gateway_process(stack, logs) as base:
        work = Workload(base, tagged + spread_keys("other", 60))
        await work.seed()
        source = owner_of(stack, slot)
        target = next(n for n in primaries(stack) if n["id"] != source["id"])
        asks_before = metric(base, "cachegw_redis_redirects_total", 'kind="ask"')
        moved: list[int] = []

        async def migrate() -> None:
            moved.append(await migrate_slot_slowly(stack, slot, target, batch=3, pause_s=0.15))

        await work.run(6.0, events=[(0.5, migrate)])
        await work.verify_final()
        asks = metric(base, "cachegw_redis_redirects_total", 'kind="ask"') - asks_before
    assert moved
    assert moved[0] >= 50
    assert work.problems == [], work.problems[:10]
    assert all(o.status == 200 for o in work.observations)
    assert asks > 0
    assert owner_of(stack, slot)["id"] == target["id"]


async def test_every_redis_node_down(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    with gateway_process(stack, logs, CACHEGW_OUTBOX__GRACE_S="0.5") as base:
        work = Workload(base, spread_keys("alldown", 200))
        await work.seed()

        all_killed_at = [1.0]

        async def kill_all() -> None:
            for port in stack.redis_ports:
                await asyncio.to_thread(stack.kill_node, port)
            all_killed_at[0] = time.monotonic() - work.started  # six kills take a while

        async def start_all() -> None:
            for port in stack.redis_ports:
                await asyncio.to_thread(stack.start_node, port)

        await work.run(8.0, events=[(1.0, kill_all), (4.0, start_all)])
        assert work.problems == [], work.problems[:10]
        assert work.write_failures == [], work.write_failures[:5]
        down = work.tiers(set(work.keys), all_killed_at[0] + 0.05, 3.8)
        assert set(down) <= {"cachegw; hit; detail=local", "cachegw; fwd=miss"}, down
        await asyncio.to_thread(stack.wait_cluster_ok, 60)
        await work.verify_final(timeout_s=30)
    # The writes made while Redis was down were repaired into it.
    stale = [k for k in work.keys if _redis_version(stack, k) not in (None, work.acked[k])]
    assert stale == []
    assert sum(_redis_version(stack, k) is not None for k in work.keys) > 0


def _redis_version(stack: Stack, key: str) -> int | None:
    record = cached(stack, key)
    return record.version if isinstance(record, Entry) else None


async def test_postgres_down(healthy_stack: Stack, logs: Path) -> None:
    stack = healthy_stack
    with gateway_process(stack, logs) as base:
        work = Workload(base, spread_keys("pgdown", 200))
        await work.seed()
        await asyncio.to_thread(stack.stop_postgres)
        try:
            await work.run(3.0, writers=0)
            assert work.problems == [], work.problems[:10]  # hits are still served
            async with httpx.AsyncClient(
                base_url=base, timeout=5, headers=auth_headers()
            ) as client:
                miss = await client.get("/v1/keys/never-written")
                assert miss.status_code == 503
                assert miss.headers["retry-after"]
                assert miss.headers["content-type"] == "application/problem+json"
                key = work.keys[0]
                before = await client.get(f"/v1/keys/{key}")
                write = await client.put(f"/v1/keys/{key}", content=b"lost?")
                assert write.status_code == 503
                assert (await client.delete(f"/v1/keys/{key}")).status_code == 503
                after = await client.get(f"/v1/keys/{key}")
                assert (after.content, after.headers["etag"]) == (
                    before.content,
                    before.headers["etag"],
                )
        finally:
            await asyncio.to_thread(stack.start_postgres)


async def test_a_delete_while_redis_is_down_is_never_undone(
    healthy_stack: Stack, logs: Path
) -> None:
    stack = healthy_stack
    key = "deleted-while-down"
    no_repair = {"CACHEGW_OUTBOX__GRACE_S": "600"}  # the checks below run before any repair
    with gateway_process(stack, logs, **no_repair) as base:
        async with httpx.AsyncClient(base_url=base, timeout=5, headers=auth_headers()) as client:
            await client.put(f"/v1/keys/{key}", content=b"old")
            assert (await client.get(f"/v1/keys/{key}")).status_code == 200
            old = cached(stack, key)
            assert isinstance(old, Entry)
            for port in stack.redis_ports:
                await asyncio.to_thread(stack.kill_node, port)
            assert (await client.delete(f"/v1/keys/{key}")).status_code == 204
            for port in stack.redis_ports:
                await asyncio.to_thread(stack.start_node, port)
            await asyncio.to_thread(stack.wait_cluster_ok, 60)
            restore(stack, key, old)  # Redis came back holding the value from before the delete
            # Neither this process nor one started afterwards serves it.
            with gateway_process(stack, logs, **no_repair) as other:
                async with httpx.AsyncClient(
                    base_url=other, timeout=5, headers=auth_headers()
                ) as fresh:
                    for _ in range(20):
                        assert (await client.get(f"/v1/keys/{key}")).status_code == 404
                        assert (await fresh.get(f"/v1/keys/{key}")).status_code == 404
                        await asyncio.sleep(0.1)
    # The old value is still there, unless a gateway's recovery already emptied the node that
    # came back with no marker (it restarted: its data is of no known age).
    assert not isinstance(cached(stack, key), Tombstone)
    with gateway_process(stack, logs):  # one whose repairer runs: Redis gets the tombstone
        for _ in range(50):
            if isinstance(cached(stack, key), Tombstone):
                break
            await asyncio.sleep(0.2)
    assert isinstance(cached(stack, key), Tombstone)


async def test_after_an_invalidate_a_replica_alone_does_not_serve_the_old_value(
    healthy_stack: Stack, logs: Path
) -> None:
    stack = healthy_stack
    key = "invalidated-then-isolated"
    slot = key_slot(f"cg:default:{key}".encode())
    with gateway_process(stack, logs) as base, gateway_process(stack, logs) as other:
        async with (
            httpx.AsyncClient(base_url=base, timeout=5, headers=auth_headers()) as a,
            httpx.AsyncClient(base_url=other, timeout=5, headers=auth_headers()) as b,
        ):
            await a.put(f"/v1/keys/{key}", content=b"old")
            assert (await b.get(f"/v1/keys/{key}")).content == b"old"  # b has a local copy too
            owner = owner_of(stack, slot)
            await asyncio.to_thread(stack.pause_node, int(owner["port"]))  # type: ignore[call-overload]
            try:
                # The replica keeps "old": the tombstone cannot reach the hung primary.
                assert (await a.post(f"/v1/keys/{key}/invalidate")).status_code == 204
                assert replica_value(stack, owner, key).endswith(b"old")
                await asyncio.to_thread(stack.stop_postgres)
                try:
                    wide = {"Cache-Control": "max-stale=60, stale-if-error=3600"}
                    for client in (a, b):
                        answer = await client.get(f"/v1/keys/{key}", headers=wide)
                        assert answer.status_code == 503, answer.headers.get("cache-status")
                finally:
                    await asyncio.to_thread(stack.start_postgres)
            finally:
                await asyncio.to_thread(stack.resume_node, int(owner["port"]))  # type: ignore[call-overload]
            assert (await b.get(f"/v1/keys/{key}")).content == b"old"  # the store keeps the value


async def test_reads_in_flight_to_a_node_that_leaves_the_slot_map_fail_over(
    healthy_stack: Stack,
) -> None:
    """Audit §11: when a refresh drops a node, its client is closed; the reads it still had in
    flight were shed with 503 (as if this process were saturated) instead of failing over."""
    stack = healthy_stack
    victim = primaries(stack)[0]
    nodes = stack.cluster_nodes()
    replica = next(n for n in nodes if n["role"] == "replica" and n["primary_id"] == victim["id"])
    entry_node = next(n for n in primaries(stack) if n["id"] != victim["id"])
    settings = settings_for(
        stack,
        redis={
            "nodes": f"127.0.0.1:{entry_node['port']}",
            "primary_timeout_ms": 10_000,
            "socket_timeout_s": 10,
        },
        read_deadline_ms=20_000,
        breaker={"min_calls": 10_000},
    )
    async with gateway_client(settings) as (client, gateway):
        keys = [key_in_node(stack, victim, f"leaves-{i}-{uuid.uuid4().hex[:6]}") for i in range(5)]
        for key in keys:
            assert (await client.put(f"/v1/keys/{key}", content=key.encode())).status_code == 201
        port = int(victim["port"])  # type: ignore[call-overload]
        await asyncio.to_thread(stack.pause_node, port)
        try:
            reads = [asyncio.ensure_future(client.get(f"/v1/keys/{key}")) for key in keys]
            await asyncio.sleep(0.3)  # in flight: the paused node will not answer them
            assert not any(read.done() for read in reads)
            await asyncio.to_thread(
                redis_cli, int(str(replica["port"])), "CLUSTER", "FAILOVER", "TAKEOVER"
            )
            slot = key_slot(f"cg:default:{keys[0]}".encode())
            for _ in range(100):  # bounded: 10 s
                await gateway.slots.refresh("test")
                shard = gateway.slots.map.slots[slot]
                if shard is not None and shard.primary[1] != port:
                    break
                await asyncio.sleep(0.1)
            replies = await asyncio.gather(*reads)
        finally:
            await asyncio.to_thread(stack.resume_node, port)
        assert [r.status_code for r in replies] == [200] * len(keys), [r.text for r in replies]
        assert [r.content for r in replies] == [key.encode() for key in keys]
