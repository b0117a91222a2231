"""The version map and the feed's trust in local copies, on a fake clock."""

from __future__ import annotations

import asyncio
from typing import Literal, cast

from app.announce import encode
from app.feed import FeedState, InvalidationFeed, VersionMap
from app.settings import FeedSettings
from app.store import FeedRow, Listener, OutboxRow, Position, Store
from tests.unit.fakes import FakeClock


def test_version_map_keeps_the_newest_seq_and_forgets_after_its_ttl() -> None:
    clock = FakeClock()
    versions = VersionMap(max_keys=2, ttl_s=10, clock=clock)
    versions.note("ns", "a", 5)
    versions.note("ns", "a", 3)
    assert versions.newest("ns", "a") == 5
    assert versions.newest("other", "a") is None
    clock.now += 11
    assert versions.newest("ns", "a") is None


def test_version_map_is_bounded() -> None:
    versions = VersionMap(max_keys=2, ttl_s=10, clock=FakeClock())
    for i in range(5):
        versions.note("ns", str(i), i)
    assert len(versions) == 2


def test_copies_are_trusted_only_while_the_feed_is_up() -> None:
    clock = FakeClock()
    state = FeedState(clock=clock)
    assert state.behind_s(0, cached_at=clock.now) == 0.0  # taken now; down since start
    clock.now += 3
    assert state.behind_s(0, cached_at=clock.now - 3) == 3.0
    state.restored(caught_up=False)  # first connect: nothing before it can be vouched for
    taken = clock.now
    assert state.behind_s(state.generation, cached_at=taken) == 0.0
    clock.now += 5
    state.lost()
    clock.now += 2
    assert state.behind_s(state.generation, cached_at=taken) == 2.0
    state.restored(caught_up=True)  # the gap was read back from the outbox
    assert state.behind_s(state.generation, cached_at=taken) == 0.0


def test_a_gap_that_could_not_be_caught_up_closes_the_generation_for_good() -> None:
    clock = FakeClock()
    state = FeedState(clock=clock)
    state.restored(caught_up=False)
    old = state.generation
    taken = clock.now
    clock.now += 1
    state.lost()
    lost_at = clock.now
    clock.now += 4
    state.restored(caught_up=False)
    assert state.generation == old + 1
    clock.now += 10
    assert state.behind_s(old, cached_at=taken) == clock.now - lost_at
    assert state.behind_s(state.generation, cached_at=clock.now) == 0.0


class MissedStore:
    """The store as catch-up sees it: the rows a snapshot misses (by its text), the recent ones."""

    def __init__(self, missed: dict[str, list[OutboxRow]]) -> None:
        self.missed = missed
        self.asked: list[str] = []

    async def outbox_missed(
        self, since: Position, *, limit: int, deadline: float
    ) -> list[OutboxRow]:
        self.asked.append(since.snapshot)
        return self.missed.get(since.snapshot, [])[:limit]

    async def outbox_recent(
        self, *, within_s: float, limit: int, deadline: float
    ) -> list[OutboxRow]:
        return []


def feed_over(
    store: MissedStore, *, mode: Literal["relay", "notify"] = "relay"
) -> tuple[InvalidationFeed, VersionMap]:
    versions = VersionMap(max_keys=100, ttl_s=60)
    feed = InvalidationFeed(
        cast(Store, store), FeedSettings(mode=mode), versions=versions, state=FeedState(),
        on_invalidate=lambda namespace, key, seq: None, catch_up_window_s=120,
    )  # fmt: skip
    return feed, versions


async def test_catch_up_reads_what_the_last_safe_snapshot_does_not_see() -> None:
    store = MissedStore({"10:12:": [OutboxRow(7, "ns", "k", 42)]})
    feed, versions = feed_over(store)
    feed._connected_once = True
    feed._safe = Position("10:12:", at=1000.0)
    assert await feed._catch_up(Position("20:20:", at=1003.0)) is True
    assert store.asked == ["10:12:"]
    assert versions.newest("ns", "k") == 42


async def test_catch_up_is_not_caught_up_when_rows_may_be_gone_or_too_many() -> None:
    store = MissedStore({"10:12:": [OutboxRow(i, "ns", f"k{i}", i) for i in range(5)]})
    feed, _ = feed_over(store)
    feed._connected_once = True
    feed._safe = Position("10:12:", at=1000.0)
    assert await feed._catch_up(Position("20:20:", at=1000.0 + 119)) is False  # retention
    assert store.asked == []
    feed._safe = None  # never had a safe position
    assert await feed._catch_up(Position("20:20:", at=1001.0)) is False


class QuietListener:
    """The listening connection as the relay watch sees it: alive, answering a position."""

    def __init__(self, here: Position) -> None:
        self.here = here

    async def position(self, *, deadline: float) -> Position:
        return self.here


async def test_relay_mode_a_batch_position_is_safe_a_quiet_relay_is_lost_then_caught_up() -> None:
    first, later = Position("10:12:", at=1000.0), Position("30:30:", at=1002.0)
    store = MissedStore({"10:12:": [OutboxRow(9, "ns", "missed", 50)]})
    versions = VersionMap(max_keys=100, ttl_s=60)
    feed = InvalidationFeed(
        cast(Store, store), FeedSettings(mode="relay"), versions=versions, state=FeedState(),
        on_invalidate=lambda namespace, key, seq: None, catch_up_window_s=120,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    feed._connected_once = True
    feed._heard = loop.time()
    feed.state.restored(caught_up=True)
    generation = feed.state.generation
    [payload] = encode([FeedRow("ns", "k", 42, 0)], position=first, before=None)
    feed._on_message(payload)
    assert versions.newest("ns", "k") == 42
    assert feed._safe == first
    listener = cast(Listener, QuietListener(Position("40:40:", at=1003.0)))
    await feed._watch_relay(listener)
    assert feed.state.up  # heard just now
    feed._heard = loop.time() - 2 * feed.settings.relay_lost_after_ms / 1000
    await feed._watch_relay(listener)
    assert not feed.state.up  # no batch, no heartbeat: copies are stale-only
    [heartbeat] = encode([], position=later, before=first)
    feed._on_message(heartbeat)  # the relay is back
    assert feed._safe == later
    await feed._watch_relay(listener)
    assert store.asked == ["10:12:"]  # from the safe position when it went quiet
    assert versions.newest("ns", "missed") == 50
    assert feed.state.up
    assert feed.state.generation == generation


async def test_notify_mode_ignores_the_position_of_a_relay_batch() -> None:
    store = MissedStore({})
    feed, versions = feed_over(store, mode="notify")
    [payload] = encode([FeedRow("ns", "k", 7, 0)], position=Position("5:5:", at=1.0), before=None)
    feed._on_message(payload)
    assert versions.newest("ns", "k") == 7  # applied: a relay of a mixed fleet sent it
    assert feed._safe is None  # but its writers' round trips, not the batch, say what is safe


async def test_a_write_in_relay_mode_waits_for_the_relay_to_bring_it_back() -> None:
    """Acknowledged only once announced: what a NOTIFY at commit gives notify mode for free."""
    feed, _ = feed_over(MissedStore({}))
    loop = asyncio.get_running_loop()
    waiting = loop.create_task(feed.announced("ns", "k", 42, deadline=loop.time() + 5))
    await asyncio.sleep(0)
    [older] = encode([FeedRow("ns", "k", 41, 0)], position=None, before=None)
    feed._on_message(older)
    await asyncio.sleep(0)
    assert not waiting.done()  # an older write of the key is not this one
    [payload] = encode([FeedRow("ns", "k", 43, 0)], position=None, before=None)
    feed._on_message(payload)  # newest per key: 43 covers 42
    await asyncio.wait_for(waiting, 1)
    assert feed._awaited == {}


async def test_an_announcement_that_came_first_is_not_waited_for() -> None:
    feed, _ = feed_over(MissedStore({}))
    [payload] = encode([FeedRow("ns", "k", 42, 0)], position=None, before=None)
    feed._on_message(payload)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(feed.announced("ns", "k", 42, deadline=loop.time() + 5), 0.1)


async def test_with_no_relay_a_write_waits_no_longer_than_the_feed_takes_to_count_as_lost() -> None:
    versions = VersionMap(max_keys=100, ttl_s=60)
    settings = FeedSettings(mode="relay", relay_heartbeat_ms=10, relay_lost_after_ms=50)
    feed = InvalidationFeed(
        cast(Store, MissedStore({})), settings, versions=versions, state=FeedState(),
        on_invalidate=lambda namespace, key, seq: None, catch_up_window_s=120,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    started = loop.time()
    await feed.announced("ns", "k", 42, deadline=started + 5)
    assert 0.04 <= loop.time() - started < 3.0  # bounded by relay_lost_after_ms, not the deadline
    assert feed._awaited == {}
