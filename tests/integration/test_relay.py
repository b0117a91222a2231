"""The feed relay against the real stack: writes skip the NOTIFY, every process still applies
every write within a bounded delay, and a relay killed under writes is replaced with no write
missed by any process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Literal

import asyncpg
import httpx
import pytest

from app.announce import encode
from app.gateway import Gateway
from app.relay import lock_key
from app.store import SQL_POSITION, Position
from devstack import Stack
from devstack.ports import find_free_port
from devstack.serving import GATEWAY, ROOT
from tests.integration.conftest import auth_headers, gateway_client, settings_for
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.test_api_keys import new_key

Mode = Literal["relay", "notify"]


@contextlib.asynccontextmanager
async def gateways(
    stack: Stack, count: int, mode: Mode = "relay"
) -> AsyncIterator[list[tuple[httpx.AsyncClient, Gateway]]]:
    async with AsyncExitStack() as stack_of:
        pairs = [
            await stack_of.enter_async_context(
                gateway_client(settings_for(stack, feed={"mode": mode}))
            )
            for _ in range(count)
        ]
        yield pairs


async def put(client: httpx.AsyncClient, key: str, body: bytes = b"v") -> int:
    reply = await client.put(f"/v1/keys/{key}", content=body)
    assert reply.status_code in (200, 201), reply.text
    return int(reply.headers["etag"].strip('"'))


async def applied_within(gateway: Gateway, key: str, seq: int, *, timeout_s: float) -> float:
    """How long until ``gateway`` knows ``seq`` of ``key`` (fails after ``timeout_s``)."""
    began = time.monotonic()
    while (gateway.feed.versions.newest("default", key) or 0) < seq:
        assert time.monotonic() - began < timeout_s, f"{key}@{seq} never announced"
        await asyncio.sleep(0.0005)
    return time.monotonic() - began


def relays(pairs: list[tuple[httpx.AsyncClient, Gateway]]) -> list[int]:
    return [
        i for i, (_, g) in enumerate(pairs) if g.feed.relay is not None and g.feed.relay.leading
    ]


@pytest.mark.parametrize("mode", ["relay", "notify"])
async def test_a_write_on_one_process_is_applied_by_the_others_within_a_bounded_delay(
    stack: Stack, mode: Mode
) -> None:
    async with gateways(stack, 3, mode) as pairs:
        if mode == "relay":
            await wait_for(lambda: len(relays(pairs)) == 1, timeout_s=5, what="no single relay")
        delays: list[float] = []
        for i in range(60):
            writer, _ = pairs[i % 3]
            key = new_key(f"relay-{mode}")
            written = time.monotonic()
            seq = await put(writer, key)
            for j, (_, other) in enumerate(pairs):
                if j != i % 3:
                    await applied_within(other, key, seq, timeout_s=2)
                    delays.append(time.monotonic() - written)
        delays.sort()
        p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99)]
        print(f"{mode}: write-to-applied p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
              f"max {delays[-1] * 1000:.1f} ms over {len(delays)}")  # fmt: skip
        assert p99 < 0.1, delays[-5:]
        assert all(g.feed.state.up for _, g in pairs)


async def test_a_writer_in_relay_mode_sends_no_notify_of_its_own(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.pg_dsn)
    payloads: list[str] = []
    await conn.add_listener("cachegw_invalidation", lambda _c, _p, _ch, text: payloads.append(text))
    try:
        for mode in ("relay", "notify"):
            async with gateway_client(settings_for(stack, feed={"mode": mode})) as (client, _):
                key = new_key(f"trigger-{mode}")
                await asyncio.sleep(0.3)
                payloads.clear()
                seq = await put(client, key)
                await asyncio.sleep(0.3)
            own = [p for p in payloads if p.startswith(f"{seq}\t")]
            if mode == "relay":
                assert own == [], own  # the trigger stayed quiet for this session
                assert any(key in p for p in payloads if p.startswith("cgw1 "))  # the relay's
            else:
                assert len(own) == 1, payloads
                assert own[0].endswith(f"\tdefault\t{key}")
    finally:
        await conn.close()


@contextlib.contextmanager
def killable_gateway(stack: Stack, log_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``cachegw serve`` in its own process, for a test to SIGKILL."""
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    with (log_dir / f"relay-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*GATEWAY, "--port", str(port)], cwd=ROOT,
            env={**os.environ, **stack.env(), "CACHEGW_FEED__MODE": "relay"},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, (log_dir / f"relay-{port}.log").read_text()[-2000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
            yield proc, base
        finally:
            proc.kill()
            proc.wait(timeout=10)


def is_relay(base: str) -> bool:
    text = httpx.get(f"{base}/metrics", timeout=5, headers=auth_headers()).text
    return any(line.split(" ")[0] == "cachegw_feed_relay" and line.endswith(" 1.0")
               for line in text.splitlines())  # fmt: skip


async def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout_s, what
        await asyncio.sleep(0.01)
    return time.monotonic() - began


async def test_a_relay_killed_under_writes_is_replaced_and_no_write_is_missed(
    stack: Stack, tmp_path: Path
) -> None:
    prefix = new_key("takeover")
    with killable_gateway(stack, tmp_path) as (proc, base):
        await wait_for(lambda: is_relay(base), timeout_s=10, what="the first process never led")
        async with gateways(stack, 3) as pairs:
            assert relays(pairs) == []  # the process about to be killed holds the lock
            writer = pairs[0][0]
            stop = asyncio.Event()
            written: dict[str, int] = {}

            async def write() -> None:
                i = 0
                while not stop.is_set():
                    key = f"{prefix}-{i % 40}"  # keys written again and again, and new ones
                    written[key] = await put(writer, key, f"{i}".encode())
                    i += 1

            task = asyncio.get_running_loop().create_task(write())
            await asyncio.sleep(0.5)
            proc.kill()  # SIGKILL: no goodbye, the lock goes when Postgres sees the socket close
            killed = time.monotonic()
            took = await wait_for(lambda: len(relays(pairs)) == 1, timeout_s=5, what="no takeover")
            stayed_up = all(g.feed.state.up for _, g in pairs)
            await asyncio.sleep(1.0)  # writes under the new relay
            stop.set()
            await task
            await asyncio.sleep(0.5)  # what is on its way arrives
            conn = await asyncpg.connect(stack.pg_dsn)
            try:
                rows = await conn.fetch(
                    "SELECT key, max(seq) FROM cache_outbox WHERE key LIKE $1 GROUP BY key",
                    f"{prefix}-%",
                )
            finally:
                await conn.close()
            newest = {row[0]: row[1] for row in rows}
            assert newest == written  # every acknowledged write is in the outbox, and only they
            for index, (_, gateway) in enumerate(pairs):
                behind = {
                    key: (gateway.feed.versions.newest("default", key), seq)
                    for key, seq in newest.items()
                    if (gateway.feed.versions.newest("default", key) or 0) < seq
                }
                assert behind == {}, (index, behind)
            print(f"takeover {took * 1000:.0f} ms after SIGKILL "
                  f"({time.monotonic() - killed:.1f} s ago), {len(newest)} keys, "
                  f"feeds stayed up: {stayed_up}")  # fmt: skip
            assert all(g.feed.state.up for _, g in pairs)


async def test_a_relay_cut_off_by_the_network_is_replaced_once_postgres_ends_its_session(
    stack: Stack, pg_proxy: TcpProxy
) -> None:
    """The relay's packets vanish (its socket stays open, so Postgres sees no close): its lock is
    held until Postgres ends the silent session, then another process leads, and no write made
    meanwhile is missed by the processes that can still reach the store."""
    prefix = new_key("cut-relay")
    dsn = pg_proxy.dsn(stack.pg_dsn, stack.config.pg_port)
    cut_off = settings_for(stack, pg={"dsn": dsn}, feed={"mode": "relay"})
    async with gateway_client(cut_off) as (_, relay_gateway):
        await wait_for(
            lambda: relay_gateway.feed.relay is not None and relay_gateway.feed.relay.leading,
            timeout_s=10, what="the process behind the proxy never led",
        )  # fmt: skip
        async with gateways(stack, 2) as pairs:
            assert relays(pairs) == []
            writer = pairs[0][0]
            written: dict[str, int] = {}
            pg_proxy.blackhole = True  # from here on, nothing it sends arrives, nor any answer
            cut = time.monotonic()
            took = 0.0
            for i in range(2_000):  # writes go on; each waits at most relay_lost_after_ms
                key = f"{prefix}-{i % 20}"
                written[key] = await put(writer, key, f"{i}".encode())
                if relays(pairs):
                    took = time.monotonic() - cut
                    break
                assert time.monotonic() - cut < 30, "no process took over within 30 s"
            assert took > 0
            for i in range(40):  # and some more under the new relay
                key = f"{prefix}-{i % 20}"
                written[key] = await put(writer, key, f"after-{i}".encode())
            await asyncio.sleep(1.0)  # what is on its way arrives
            for index, (_, gateway) in enumerate(pairs):
                behind = {
                    key: seq for key, seq in written.items()
                    if (gateway.feed.versions.newest("default", key) or 0) < seq
                }  # fmt: skip
                assert behind == {}, (index, behind)
            assert all(g.feed.state.up for _, g in pairs)
            print(f"takeover {took:.1f} s after the relay was cut off")
        pg_proxy.blackhole = False


async def test_a_relay_that_falls_behind_makes_local_copies_stale_only(stack: Stack) -> None:
    """A relay whose batches keep coming but cover an ever older position (a relay starved of
    CPU, or one paging through a backlog) is as good as a silent one: the writes it has not
    announced yet are already acknowledged (after ``relay_lost_after_ms``), so copies it has
    not invalidated must stop passing for current."""
    channel = "cachegw_invalidation"
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        # This test is the relay: no gateway can take the lock from it.
        await wait_for_async(
            lambda: conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(channel)),
            timeout_s=10, what="another process holds the relay's lock",
        )  # fmt: skip
        stale = await position_now(conn)
        async with gateway_client(settings_for(stack, feed={"mode": "relay"})) as (_, gateway):
            state = gateway.feed.state
            lost_after_s = gateway.settings.feed.relay_lost_after_ms / 1000

            async def beat(position: Position) -> None:
                for payload in encode([], position=position, before=None):
                    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

            async def fresh() -> None:
                await beat(await position_now(conn))

            # Heartbeats of the present: the feed is up.
            await beat_until(fresh, lambda: state.up, timeout_s=5, what="the feed never came up")
            for _ in range(int(2 * lost_after_s / 0.1)):
                await fresh()
                await asyncio.sleep(0.1)
            assert state.up
            # Heartbeats that stay at one position while time goes on: the relay falls behind.
            began = time.monotonic()
            await beat_until(
                lambda: beat(stale), lambda: not state.up, timeout_s=10,
                what="a relay falling behind kept local copies trusted",
            )  # fmt: skip
            assert time.monotonic() - began < 3 * lost_after_s
            # Caught up again: trusted again.
            await beat_until(fresh, lambda: state.up, timeout_s=10, what="the feed never came back")
    finally:
        await conn.execute("SELECT pg_advisory_unlock_all()")
        await conn.close()


async def position_now(conn: asyncpg.Connection[asyncpg.Record]) -> Position:
    row = await conn.fetchrow(SQL_POSITION)
    assert row is not None
    return Position(snapshot=row[0], at=row[1])


async def wait_for_async(
    probe: Callable[[], Awaitable[object]], *, timeout_s: float, what: str
) -> None:
    began = time.monotonic()
    while not await probe():
        assert time.monotonic() - began < timeout_s, what
        await asyncio.sleep(0.05)


async def beat_until(
    send: Callable[[], Awaitable[None]], done: Callable[[], bool], *, timeout_s: float, what: str
) -> None:
    """``send`` every 50 ms (a relay's heartbeats, faster) until ``done()``."""
    began = time.monotonic()
    while not done():
        assert time.monotonic() - began < timeout_s, what
        await send()
        await asyncio.sleep(0.05)
