"""Slowness opens only the store's read route: writes fail on errors, never on latency (audit §9).

Postgres is made slow for real: a TCP proxy between the gateway and it holds every reply for
60 ms, past the breaker's 50 ms latency SLO, for every query (writes, reads, background).
"""

from __future__ import annotations

from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_api_keys import new_key


async def test_slow_writes_do_not_open_a_breaker(stack: Stack, pg_proxy: TcpProxy) -> None:
    dsn = pg_proxy.dsn(stack.pg_dsn, stack.config.pg_port)
    settings = settings_for(stack, pg={"dsn": dsn}, breaker={"min_calls": 10})
    async with gateway_client(settings) as (client, gateway):
        keys = [new_key(f"slow-{i}") for i in range(30)]
        pg_proxy.delay_s = 0.06
        statuses = [(await client.put(f"/v1/keys/{k}", content=b"v")).status_code for k in keys]
        assert statuses == [201] * len(keys)
        write_route = {b.route: b for b in gateway.breakers.breakers()}["store-write"]
        assert write_route.snapshot()["slow_in_window"] == 0  # latency is not a write failure
        assert write_route.state.name == "CLOSED"
        # Slow store reads still open the read route: the router then serves what caches hold.
        for key in keys:
            await client.get(f"/v1/keys/{key}", headers={"Cache-Control": "no-cache"})
        read_route = {b.route: b for b in gateway.breakers.breakers()}["store"]
        assert read_route.opened_count >= 1
        pg_proxy.delay_s = 0.0
        assert (await client.put(f"/v1/keys/{keys[0]}", content=b"w")).status_code == 200
