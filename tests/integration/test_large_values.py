"""One tenant's large values do not fail other reads of the same node .

Reads of 1 MiB values and reads of small values run side by side against the same primary, through
a gateway process. Before, they shared pipelined batches under one 200 ms timeout: the small reads
queued behind megabytes of replies, failed over, counted as slow calls, and opened the node's
breaker for everyone.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx

from devstack import Stack
from devstack.cluster_ops import key_in_node, primaries
from devstack.rawhttp import Connection
from tests.integration.conftest import auth_headers
from tests.integration.harness import gateway_process

LARGE = 1024 * 1024
READERS = 32
DURATION_S = 4.0


async def read_loop(base: str, keys: list[str], until: float, seen: dict[str, int]) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = Connection(host, int(port), headers=auth_headers())
    i = 0
    try:
        while time.monotonic() < until:
            reply = await connection.request("GET", f"/v1/keys/{keys[i % len(keys)]}")
            i += 1
            outcome = reply.headers.get("cache-status", str(reply.status))
            seen[outcome] = seen.get(outcome, 0) + 1
    finally:
        await connection.close()


async def test_large_values_do_not_fail_small_reads_of_the_same_node(
    stack: Stack, tmp_path: Path
) -> None:
    victim = primaries(stack)[0]
    large = [key_in_node(stack, victim, f"large-{i}-{os.getpid()}") for i in range(16)]
    small = [key_in_node(stack, victim, f"small-{i}-{os.getpid()}") for i in range(16)]
    with gateway_process(stack, tmp_path) as base:
        async with httpx.AsyncClient(base_url=base, headers=auth_headers(), timeout=10) as client:
            for key in large:
                assert (await client.put(f"/v1/keys/{key}", content=os.urandom(LARGE))).is_success
            for key in small:
                assert (await client.put(f"/v1/keys/{key}", content=b"small")).is_success
            until = time.monotonic() + DURATION_S
            large_seen: dict[str, int] = {}
            small_seen: dict[str, int] = {}
            await asyncio.gather(
                *(read_loop(base, large, until, large_seen) for _ in range(READERS)),
                *(read_loop(base, small, until, small_seen) for _ in range(READERS)),
            )
            breakers = (await client.get("/v1/admin/breakers")).json()["breakers"]
        route = f"primary@127.0.0.1:{victim['port']}"
        opened = [b["times_opened"] for b in breakers if b["route"] == route]
        primary_hits = small_seen.get("cachegw; hit; detail=primary", 0)
        total = sum(small_seen.values())
        assert primary_hits >= 0.99 * total, (small_seen, large_seen)
        assert opened in ([], [0]), (opened, small_seen, large_seen)
        assert all(not s.startswith("5") for s in (*small_seen, *large_seen)), (
            small_seen,
            large_seen,
        )
