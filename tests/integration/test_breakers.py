"""A dead primary's breaker opens; once the node is back, it closes with no user traffic."""

from __future__ import annotations

import asyncio
import time

from app.breaker import State
from devstack import Stack
from devstack.cluster_ops import key_in_node, primaries
from tests.integration.conftest import gateway_client, settings_for


async def test_a_killed_primary_opens_its_breaker_and_its_return_closes_it(
    healthy_stack: Stack,
) -> None:
    stack = healthy_stack
    breaker_settings = {"min_calls": 5, "wait_s": 0.5, "max_wait_s": 1.0, "probe_interval_s": 0.1}
    async with gateway_client(settings_for(stack, breaker=breaker_settings)) as (client, gateway):
        victim = primaries(stack)[0]
        port = int(victim["port"])  # type: ignore[call-overload]
        keys = [key_in_node(stack, victim, f"brk-{i}") for i in range(3)]
        for key in keys:
            await client.put(f"/v1/keys/{key}", content=key.encode())
        route = f"primary@127.0.0.1:{port}"

        await asyncio.to_thread(stack.kill_node, port)
        killed = time.monotonic()
        breaker = gateway.breakers.get(route)
        while breaker.state is State.CLOSED and time.monotonic() - killed < 5:
            answers = await asyncio.gather(*(client.get(f"/v1/keys/{k}") for k in keys * 4))
            assert {a.status_code for a in answers} == {200}  # answered by the tiers behind
        assert breaker.state is not State.CLOSED
        opened_after = time.monotonic() - killed
        assert opened_after < 10  # within the window
        admin = (await client.get("/v1/admin/breakers")).json()["breakers"]
        assert any(b["route"] == route and b["state"] != "closed" for b in admin)
        skipped = await client.get(f"/v1/keys/{keys[0]}")  # the dead node is not even tried
        assert skipped.status_code == 200
        assert "detail=primary" not in skipped.headers["cache-status"]

        await asyncio.to_thread(stack.start_node, port)
        back = time.monotonic()
        for _ in range(100):  # no requests: only the board's own probe can close it
            if breaker.state is State.CLOSED:
                break
            await asyncio.sleep(0.05)
        assert breaker.state is State.CLOSED
        closed_after = time.monotonic() - back
    # The longest wait is max_wait_s * 1.5 (jitter), then one probe interval.
    assert closed_after < 1.0 * 1.5 + 0.1 + 0.5, closed_after
