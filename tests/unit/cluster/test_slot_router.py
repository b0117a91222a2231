"""The slot router and node client against scripted fake nodes (real sockets on loopback)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from app.breaker import BreakerBoard
from app.cluster.node import NodeClient, NodeOptions
from app.cluster.slot_router import SlotRouter, parse_cluster_shards
from app.cluster.slots import key_slot
from app.errors import RedirectLoopError, TierTimeoutError, TierUnavailableError
from app.settings import BreakerSettings, RedisSettings
from tests.unit.fake_redis import Err, FakeNode, Session, shards_reply

KEY = b"{mig}:1"
SLOT = key_slot(KEY)


def deadline(loop_s: float = 1.0) -> float:
    return asyncio.get_running_loop().time() + loop_s


@pytest.fixture
async def nodes() -> AsyncIterator[dict[str, FakeNode]]:
    """Node a owns every slot; node b is importing SLOT from a."""
    state: dict[str, FakeNode] = {}

    def handle_a(session: Session, args: list[bytes]) -> object:
        if args[:2] == [b"CLUSTER", b"SHARDS"]:
            return shards_reply([((0, 16383), state["a"].address, [])])
        if args[0] == b"GET" and args[1] == KEY:
            return Err(f"ASK {SLOT} 127.0.0.1:{state['b'].port}")
        if args[0] == b"GET":
            return b"from-a"
        return Err("ERR unknown")

    async def handle_b(session: Session, args: list[bytes]) -> object:
        if args[0] == b"SLOW":
            await asyncio.sleep(0.05)
            return b"slow"
        if args[0] == b"GET" and args[1] == KEY:
            if session.asking:
                return b"from-b"
            return Err(f"MOVED {SLOT} 127.0.0.1:{state['a'].port}")
        return Err("ERR unknown")

    state["a"] = await FakeNode(handle_a).start()
    state["b"] = await FakeNode(handle_b).start()
    yield state
    for node in state.values():
        await node.aclose()


def primary_of(router: SlotRouter, slot: int) -> tuple[str, int]:
    shard = router.map.shard(slot)
    assert shard is not None, f"slot {slot} is not mapped"
    return shard.primary


async def test_ask_sends_asking_and_command_on_one_connection_with_idle_connections(
    nodes: dict[str, FakeNode],
) -> None:
    router = SlotRouter(RedisSettings(nodes=f"127.0.0.1:{nodes['a'].port}"))
    await router.start()
    try:
        b = router.node(nodes["b"].address)
        # Several concurrent slow commands, in separate loop turns, open several connections.
        calls = []
        for _ in range(4):
            calls.append(asyncio.ensure_future(b.call((b"SLOW",), deadline=deadline())))
            await asyncio.sleep(0)
        await asyncio.gather(*calls)
        assert len(nodes["b"].sessions) >= 2  # the importing node has >= 2 idle connections
        for _ in range(10):
            assert await router.execute(KEY, b"GET", KEY, deadline=deadline()) == b"from-b"
        assert primary_of(router, SLOT) == nodes["a"].address  # ASK leaves the map alone
    finally:
        await router.aclose()


async def test_moved_patches_the_slot_and_retries_on_the_owner() -> None:
    state: dict[str, FakeNode] = {}

    def handle_a(session: Session, args: list[bytes]) -> object:
        if args[:2] == [b"CLUSTER", b"SHARDS"]:
            return shards_reply([((0, 16383), state["a"].address, [])])
        return Err(f"MOVED {SLOT} 127.0.0.1:{state['b'].port}")

    def handle_b(session: Session, args: list[bytes]) -> object:
        if args[:2] == [b"CLUSTER", b"SHARDS"]:
            return shards_reply([((0, 16383), state["a"].address, [])])
        return b"from-b"

    state["a"] = await FakeNode(handle_a).start()
    state["b"] = await FakeNode(handle_b).start()
    router = SlotRouter(
        RedisSettings(nodes=f"127.0.0.1:{state['a'].port}", refresh_min_interval_s=60)
    )
    await router.start()
    try:
        assert await router.execute(KEY, b"GET", KEY, deadline=deadline()) == b"from-b"
        assert primary_of(router, SLOT) == state["b"].address
        other = (SLOT + 1) % 16384
        assert primary_of(router, other) == state["a"].address  # only that slot moved
        a_gets = sum(1 for s in state["a"].sessions for c in s.commands if c[0] == b"GET")
        assert await router.execute(KEY, b"GET", KEY, deadline=deadline()) == b"from-b"
        assert sum(1 for s in state["a"].sessions for c in s.commands if c[0] == b"GET") == a_gets
    finally:
        await router.aclose()
        for node in state.values():
            await node.aclose()


async def test_a_redirect_loop_is_bounded() -> None:
    state: dict[str, FakeNode] = {}

    def handle(session: Session, args: list[bytes]) -> object:
        if args[:2] == [b"CLUSTER", b"SHARDS"]:
            return shards_reply([((0, 16383), state["a"].address, [])])
        return Err(f"ASK {SLOT} 127.0.0.1:{state['a'].port}")

    state["a"] = await FakeNode(handle).start()
    router = SlotRouter(RedisSettings(nodes=f"127.0.0.1:{state['a'].port}", max_redirects=3))
    await router.start()
    try:
        with pytest.raises(RedirectLoopError):
            await router.execute(KEY, b"GET", KEY, deadline=deadline())
    finally:
        await router.aclose()
        await state["a"].aclose()


async def test_commands_of_one_turn_share_one_write() -> None:
    node = await FakeNode(lambda session, args: args[1]).start()
    client = NodeClient(node.address, NodeOptions())
    try:
        replies = await asyncio.gather(
            *(client.call((b"ECHO", str(i).encode()), deadline=deadline()) for i in range(50))
        )
        assert [r[0] for r in replies] == [str(i).encode() for i in range(50)]
        assert len(node.sessions) == 1
        assert node.reads_per_session[0] <= 2
    finally:
        await client.aclose()
        await node.aclose()


async def test_a_caller_that_gives_up_does_not_desynchronise_the_connection() -> None:
    async def handle(session: Session, args: list[bytes]) -> object:
        if args[0] == b"SLOW":
            await asyncio.sleep(0.1)
        return args[1]

    node = await FakeNode(handle).start()
    client = NodeClient(node.address, NodeOptions(max_connections=1, socket_timeout_s=1))
    try:
        with pytest.raises(TierTimeoutError):
            await client.call((b"SLOW", b"first"), deadline=deadline(0.02))
        for i in range(5):
            (reply,) = await client.call((b"ECHO", f"n{i}".encode()), deadline=deadline())
            assert reply == f"n{i}".encode()
    finally:
        await client.aclose()
        await node.aclose()


async def test_a_silent_node_times_out_at_the_deadline() -> None:
    async def never(session: Session, args: list[bytes]) -> object:
        await asyncio.sleep(10)
        return None

    node = await FakeNode(never).start()
    client = NodeClient(node.address, NodeOptions(socket_timeout_s=5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TierTimeoutError):
            await client.call((b"GET", b"k"), deadline=deadline(0.05))
        assert loop.time() - started < 0.5
    finally:
        await client.aclose()
        await node.aclose()


async def test_a_refused_connection_is_unavailable() -> None:
    node = await FakeNode(lambda s, a: None).start()
    address = node.address
    await node.aclose()
    client = NodeClient(address, NodeOptions())
    try:
        with pytest.raises(TierUnavailableError):
            await client.call((b"GET", b"k"), deadline=deadline())
    finally:
        await client.aclose()


async def test_a_bug_of_ours_in_the_node_client_reaches_the_caller_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TypeError while packing is not the node's failure: not mapped, not a lost contact."""
    node = await FakeNode(lambda s, a: b"v").start()
    lost: list[object] = []
    client = NodeClient(node.address, NodeOptions(), on_lost=lost.append)
    try:
        with caplog.at_level(logging.ERROR, logger="app.cluster.node"), pytest.raises(TypeError):
            await client.call((b"GET", None), deadline=deadline())  # type: ignore[arg-type]
        assert lost == []
        assert any(r.exc_info and r.exc_info[0] is TypeError for r in caplog.records)
        assert client.in_flight == 0
        assert await client.call((b"GET", b"k"), deadline=deadline()) == [b"v"]
    finally:
        await client.aclose()
        await node.aclose()


def _board() -> BreakerBoard:
    return BreakerBoard(BreakerSettings(min_calls=1, failure_rate=0.5))


async def test_the_breaker_counts_a_node_failure_and_not_a_bug_of_ours() -> None:
    node = await FakeNode(lambda s, a: b"v").start()
    gone = await FakeNode(lambda s, a: b"v").start()
    await gone.aclose()  # its port now refuses connections
    router = SlotRouter(RedisSettings(nodes=f"127.0.0.1:{node.port}"))
    router.breakers = board = BreakerBoard(BreakerSettings(min_calls=1, failure_rate=0.5))
    try:
        with pytest.raises(TypeError):
            await router.call_on(
                node.address, (b"GET", None), readonly=False, deadline=deadline(),  # type: ignore[arg-type]
                route="replica",
            )  # fmt: skip
        with pytest.raises(TierUnavailableError):
            await router.call_on(
                gone.address, (b"GET", b"k"), readonly=False, deadline=deadline(), route="replica"
            )
        breakers = {b.route: b.snapshot() for b in board.breakers()}
        ours = breakers[f"replica@127.0.0.1:{node.port}"]
        theirs = breakers[f"replica@127.0.0.1:{gone.port}"]
        assert (ours["state"], ours["calls_in_window"]) == ("closed", 0)
        assert (theirs["state"], theirs["failures_in_window"]) == ("open", 1)
    finally:
        await router.aclose()
        await node.aclose()


async def test_start_without_any_reachable_node_leaves_the_map_empty() -> None:
    node = await FakeNode(lambda s, a: None).start()
    port = node.port
    await node.aclose()
    router = SlotRouter(RedisSettings(nodes=f"127.0.0.1:{port}"))
    await router.start()
    try:
        assert router.map.covered() == 0
        with pytest.raises(TierUnavailableError):
            await router.execute(KEY, b"GET", KEY, deadline=deadline())
    finally:
        await router.aclose()


def test_parse_cluster_shards_keeps_online_replicas_and_ranges() -> None:
    raw = shards_reply([((0, 100), ("10.0.0.1", 7000), [("10.0.0.2", 7001)])])
    raw[0][3][1][-1] = b"loading"  # type: ignore[index]
    (shard,) = parse_cluster_shards(raw)
    assert shard.primary == ("10.0.0.1", 7000)
    assert shard.replicas == ()
    assert shard.ranges == ((0, 100),)


def test_parse_cluster_shards_accepts_resp3_maps() -> None:
    raw = [
        {
            b"slots": [0, 16383],
            b"nodes": [
                {b"port": 7000, b"ip": b"127.0.0.1", b"endpoint": b"127.0.0.1", b"role": b"master",
                 b"health": b"online"},
            ],
        }
    ]  # fmt: skip
    (shard,) = parse_cluster_shards(raw)
    assert shard.primary == ("127.0.0.1", 7000)


def test_pack_matches_redis_py_and_keeps_large_values_apart() -> None:
    from redis.asyncio.connection import Connection

    from app.cluster.node import LARGE_ARGUMENT_BYTES, pack

    commands = [
        (b"GET", b"k"),
        ("SET", "\u00e9", 5),
        (b"EVAL", b"x" * (LARGE_ARGUMENT_BYTES + 1), 1),
    ]
    reference = b"".join(Connection(host="x", port=1).pack_commands(commands))
    chunks = pack(commands)
    assert b"".join(chunks) == reference
    assert any(len(chunk) == LARGE_ARGUMENT_BYTES + 1 for chunk in chunks)
