"""A committed write is never reported as failed .

Through a TCP proxy that holds Postgres's replies: what follows the commit (returning the
connection to the pool) is not under the write's deadline, and a write whose commit reply does
not come in time is answered with its own problem type, which never says "nothing was changed".
"""

from __future__ import annotations

from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_api_keys import new_key

NO_CACHE = {"Cache-Control": "no-cache"}


async def test_a_write_whose_reply_came_in_time_is_acknowledged(
    stack: Stack, pg_proxy: TcpProxy
) -> None:
    dsn = pg_proxy.dsn(stack.pg_dsn, stack.config.pg_port)
    settings = settings_for(stack, pg={"dsn": dsn}, write_deadline_ms=100)
    async with gateway_client(settings) as (client, _):
        key = new_key("outcome-in-time")
        assert (await client.put(f"/v1/keys/{key}", content=b"warm")).status_code == 201
        # Each round trip now takes 60 ms: the write's own (60 ms) fits in its 100 ms; a second
        # one after it (the pool's reset of the connection) would not.
        pg_proxy.delay_s = 0.06
        reply = await client.put(f"/v1/keys/{key}", content=b"in time")
        assert reply.status_code == 200, reply.text
        pg_proxy.delay_s = 0.0
        got = await client.get(f"/v1/keys/{key}", headers=NO_CACHE)
        assert got.content == b"in time"
        assert got.headers["etag"] == reply.headers["etag"]


async def test_a_write_whose_commit_reply_is_late_says_its_outcome_is_unknown(
    stack: Stack, pg_proxy: TcpProxy
) -> None:
    dsn = pg_proxy.dsn(stack.pg_dsn, stack.config.pg_port)
    settings = settings_for(stack, pg={"dsn": dsn}, write_deadline_ms=100)
    async with gateway_client(settings) as (client, _):
        key = new_key("outcome-late")
        assert (await client.put(f"/v1/keys/{key}", content=b"warm")).status_code == 201
        pg_proxy.delay_s = 0.3
        reply = await client.put(f"/v1/keys/{key}", content=b"committed late")
        pg_proxy.delay_s = 0.0
        assert reply.status_code == 503
        problem = reply.json()
        assert problem["type"] == "/problems/write-outcome-unknown", problem
        assert "nothing was changed" not in (await client.get(problem["type"])).text
        # It did commit: the store has it, and a read that asks the store says so.
        got = await client.get(f"/v1/keys/{key}", headers=NO_CACHE)
        assert got.content == b"committed late"
        # Precondition failures stay exact: nothing was sent, so nothing changed.
        reply = await client.put(f"/v1/keys/{key}", content=b"x", headers={"If-Match": '"1"'})
        assert reply.status_code == 412
