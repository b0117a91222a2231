"""The fallback router, row by row of its read walk (app/router.py), with scriptable fake tiers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.codec import Entry, Tombstone, now_ms
from app.errors import (
    KeyNotFoundError,
    NodeBusyError,
    NotCachedError,
    OverloadedError,
    RedirectLoopError,
    StoreConflictError,
    StoreUnavailableError,
    TierTimeoutError,
    TierUnavailableError,
    VersionUnavailableError,
)
from app.feed import FeedState, VersionMap
from app.router import FallbackRouter, ReadPolicy
from app.settings import LocalSettings, Settings
from app.tiers.base import Copy
from app.tiers.local import LocalTier
from tests.unit.fakes import FakeClock, FakeOutbox, FakeStore, FakeTier, entry

DEFAULT = ReadPolicy(max_stale_s=2.0, stale_if_error_s=30.0)


class Rig:
    """A router over fake primary and replica tiers, a fake store and a real local tier."""

    def __init__(self, *, store: FakeStore | None = None, replica_behind_s: float = 0.0) -> None:
        self.clock = FakeClock()
        self.primary = FakeTier("primary")
        self.replica = FakeTier("replica", behind_s=replica_behind_s)
        self.store = store or FakeStore()
        self.outbox = FakeOutbox()
        self.feed = FeedState(clock=self.clock)
        self.feed.restored(caught_up=True)
        self.local = LocalTier(LocalSettings(), self.feed, clock=self.clock)
        self.versions = VersionMap(max_keys=100, ttl_s=60, clock=self.clock)
        self.router = FallbackRouter(
            settings=Settings(),
            primary=self.primary,
            replica=self.replica,
            local=self.local,
            store=self.store,
            outbox=self.outbox,
            versions=self.versions,
        )
        self.ref = self.router.ref("default", "k")

    def primary_fails(self, exc: Exception | None = None) -> None:
        self.primary.on_get = fails(exc or TierUnavailableError("refused", route="primary"))


def count(status: str) -> float:
    return (
        REGISTRY.get_sample_value("redis_fallback_routing_attempts_total", {"status": status})
        or 0.0
    )


def fails(exc: Exception) -> Any:
    def raise_(*args: object) -> None:
        raise exc

    return raise_


async def test_a_primary_hit_is_served_and_kept_locally() -> None:
    rig = Rig()
    rig.primary.data[rig.ref.rkey] = entry(b"cached")
    before = count("primary_hit")
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.stale_s) == (b"cached", "primary", 0.0)
    assert rig.store.gets == 0
    assert count("primary_hit") == before + 1
    assert rig.local.lookup(rig.ref).record == entry(b"cached")


async def test_a_primary_miss_reads_the_store_and_fills_redis_and_local() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}))
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.filled) == (b"stored", "store", True)
    assert rig.primary.data[rig.ref.rkey] == entry(b"stored", 5)
    assert rig.local.lookup(rig.ref).record == entry(b"stored", 5)


async def test_a_tombstone_or_expired_entry_on_the_primary_is_a_miss() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"new", 9)}))
    rig.primary.data[rig.ref.rkey] = Tombstone(8)
    assert (await rig.router.get(rig.ref)).entry.value == b"new"
    rig.primary.data[rig.ref.rkey] = entry(b"old", 3, expires_at_ms=1)
    rig.local.drop("default", "k")
    assert (await rig.router.get(rig.ref)).tier == "store"


@pytest.mark.parametrize(
    "exc", [TierTimeoutError("t", route="p"), TierUnavailableError("u", route="p")]
)
async def test_a_failed_primary_is_answered_by_the_replica_within_budget(exc: Exception) -> None:
    rig = Rig(replica_behind_s=1.5)
    rig.primary_fails(exc)
    rig.replica.data[rig.ref.rkey] = entry(b"replica", 4)
    before = (count("primary_failover"), count("replica_hit"))
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.stale_s) == (b"replica", "replica", 1.5)
    assert (count("primary_failover"), count("replica_hit")) == (before[0] + 1, before[1] + 1)
    assert rig.primary.puts == []


async def test_a_replica_behind_the_budget_gives_way_to_a_current_local_copy() -> None:
    rig = Rig(replica_behind_s=10.0)
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"replica", 4)
    rig.local.keep(rig.ref, entry(b"local", 4))
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier) == (b"local", "local")


async def test_max_stale_widens_what_a_replica_may_serve() -> None:
    rig = Rig(replica_behind_s=10.0, store=FakeStore(rows={("default", "k"): entry(b"stored", 4)}))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"replica", 4)
    assert (await rig.router.get(rig.ref)).tier == "store"
    wide = ReadPolicy(max_stale_s=20.0, stale_if_error_s=30.0)
    result = await rig.router.get(rig.ref, wide)
    assert (result.tier, result.stale_s) == ("replica", 10.0)


async def test_a_replica_that_fails_falls_through_to_local_then_store() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 4)}))
    rig.primary_fails()
    rig.replica.on_get = fails(TierUnavailableError("down", route="replica"))
    result = await rig.router.get(rig.ref)
    assert result.tier == "store"
    assert not result.filled  # nothing is sent to a primary that just failed
    assert rig.primary.puts == []


async def test_the_store_failing_too_serves_the_least_stale_copy_within_stale_if_error() -> None:
    rig = Rig(replica_behind_s=20.0, store=FakeStore(down=True))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"replica", 4)
    before = count("error")
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.store_failed) == (b"replica", "replica", True)
    assert count("error") == before + 1
    with pytest.raises(StoreUnavailableError):
        await rig.router.get(rig.ref, ReadPolicy(max_stale_s=2.0, stale_if_error_s=5.0))


async def test_a_cache_miss_is_never_a_404_unless_the_store_says_so() -> None:
    rig = Rig()
    with pytest.raises(KeyNotFoundError):
        await rig.router.get(rig.ref)
    rig.store.down = True
    with pytest.raises(StoreUnavailableError):
        await rig.router.get(rig.ref)


async def test_no_tier_serves_a_seq_older_than_an_announced_one_whatever_the_policy() -> None:
    rig = Rig(store=FakeStore(down=True))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"old", 4)
    rig.local.keep(rig.ref, entry(b"old", 4))
    rig.versions.note("default", "k", 5)  # e.g. an invalidate announced by the feed
    anything = ReadPolicy(max_stale_s=1e9, stale_if_error_s=1e9)
    with pytest.raises(StoreUnavailableError):
        await rig.router.get(rig.ref, anything)


async def test_a_primary_copy_older_than_an_announced_write_goes_to_the_store() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"new", 7)}))
    rig.primary.data[rig.ref.rkey] = entry(b"old", 6)
    rig.versions.note("default", "k", 7)
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier) == (b"new", "store")
    assert rig.primary.data[rig.ref.rkey] == entry(b"new", 7)  # the fill repaired Redis


async def test_a_replica_tombstone_keeps_an_older_local_copy_from_being_served() -> None:
    rig = Rig(store=FakeStore(down=True))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = Tombstone(9)
    rig.local.keep(rig.ref, entry(b"old", 4))
    with pytest.raises(StoreUnavailableError):
        await rig.router.get(rig.ref)


async def test_local_copies_are_stale_only_while_the_feed_is_down() -> None:
    rig = Rig(store=FakeStore(down=True))
    rig.local.keep(rig.ref, entry(b"local", 4))
    rig.feed.lost()
    rig.clock.now += 10
    rig.primary_fails()
    result = await rig.router.get(rig.ref)  # 10 s > the 2 s budget: only stale-if-error
    assert (result.tier, result.store_failed, result.stale_s) == ("local", True, 10.0)
    rig.feed.restored(caught_up=True)  # the gap was caught up from the outbox
    result = await rig.router.get(rig.ref)
    assert (result.tier, result.store_failed) == ("local", False)


async def test_only_if_cached_never_reads_the_store() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored")}))
    with pytest.raises(NotCachedError):
        await rig.router.get(rig.ref, ReadPolicy(2.0, 30.0, only_if_cached=True))
    assert rig.store.gets == 0


async def test_no_cache_reads_the_store_and_refreshes_the_caches() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 8)}))
    rig.primary.data[rig.ref.rkey] = entry(b"cached", 7)
    result = await rig.router.get(rig.ref, ReadPolicy(2.0, 30.0, no_cache=True))
    assert (result.entry.value, result.tier, result.revalidated) == (b"stored", "store", True)
    assert rig.primary.gets == 0
    await rig.router.drain()
    assert rig.primary.data[rig.ref.rkey] == entry(b"stored", 8)


async def test_redirect_loops_are_retried_within_the_deadline() -> None:
    rig = Rig()
    calls = 0

    def flaky(ref: object) -> Entry:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RedirectLoopError("TTL exhausted", route="primary")
        return entry(b"settled")

    rig.primary.on_get = flaky
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, calls) == (b"settled", "primary", 3)


async def test_writes_commit_then_update_local_and_redis_and_mark_the_outbox_row() -> None:
    rig = Rig()
    result = await rig.router.put(rig.ref, b"v1", content_type="a/b", ttl_s=None)
    assert result.created
    assert rig.primary.data[rig.ref.rkey].seq == result.seq
    assert rig.local.lookup(rig.ref).record == rig.primary.data[rig.ref.rkey]
    assert rig.versions.newest("default", "k") == result.seq
    assert rig.outbox.done_ids == [result.outbox_id]
    removed = await rig.router.delete(rig.ref)
    assert rig.primary.data[rig.ref.rkey] == Tombstone(removed.seq)
    assert rig.local.lookup(rig.ref).record is None
    with pytest.raises(KeyNotFoundError):
        await rig.router.delete(rig.ref)


async def test_invalidate_drops_local_and_leaves_a_tombstone() -> None:
    rig = Rig()
    await rig.router.put(rig.ref, b"v", content_type="a/b", ttl_s=None)
    removed = await rig.router.invalidate(rig.ref)
    assert rig.local.lookup(rig.ref).record is None
    assert rig.primary.data[rig.ref.rkey] == Tombstone(removed.seq)
    result = await rig.router.get(rig.ref)
    assert (result.tier, result.entry.seq) == ("store", removed.seq)


async def test_a_touch_keeps_the_version_and_retires_every_copy_of_the_old_expiry() -> None:
    rig = Rig()
    put = await rig.router.put(rig.ref, b"v", content_type="a/b", ttl_s=60)
    touched = await rig.router.touch(rig.ref, ttl_s=3600)
    assert touched.version == put.version
    assert touched.seq > put.seq
    assert rig.local.lookup(rig.ref).record is None
    assert rig.primary.data[rig.ref.rkey] == Tombstone(touched.seq)
    assert rig.versions.newest("default", "k") == touched.seq
    assert touched.outbox_id in rig.outbox.done_ids
    result = await rig.router.get(rig.ref)
    assert (result.tier, result.entry.version) == ("store", put.version)
    assert result.entry.expires_at_ms == touched.expires_at_ms
    with pytest.raises(StoreConflictError):
        await rig.router.touch(rig.ref, ttl_s=10, if_match=[put.version + 1])
    with pytest.raises(KeyNotFoundError):
        await rig.router.touch(rig.router.ref("default", "absent"), ttl_s=10)


async def test_a_cache_update_that_fails_leaves_the_outbox_row_for_the_repairer() -> None:
    rig = Rig()
    rig.primary.on_put = fails(TierTimeoutError("t", route="p"))
    result = await rig.router.put(rig.ref, b"v", content_type="a/b", ttl_s=None)
    assert result.version > 0  # acknowledged: the commit is what counts
    assert rig.outbox.done_ids == []


async def test_a_store_failure_on_write_changes_no_cache() -> None:
    rig = Rig(store=FakeStore(down=True))
    with pytest.raises(StoreUnavailableError):
        await rig.router.put(rig.ref, b"v", content_type="a/b", ttl_s=None)
    assert rig.primary.puts == []
    assert rig.local.lookup(rig.ref).record is None
    assert rig.outbox.done_ids == []


async def test_concurrent_misses_of_one_key_make_one_store_read() -> None:
    gate = asyncio.Event()
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}, gate=gate))
    readers = [asyncio.ensure_future(rig.router.get(rig.ref)) for _ in range(100)]
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*readers)
    assert {r.entry.value for r in results} == {b"stored"}
    assert rig.store.gets == 1


async def test_another_process_holding_the_lock_fills_and_this_one_reads_the_fill() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}))
    rig.primary.held_by_peer = True
    calls = 0

    def miss_then_filled(ref: object) -> Entry | None:
        nonlocal calls
        calls += 1
        return None if calls == 1 else entry(b"peer fill", 5)

    rig.primary.on_get = miss_then_filled
    rig.primary.data[rig.ref.rkey] = entry(b"peer fill", 5)  # what poll_fill sees
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.collapsed) == (b"peer fill", "store", True)
    assert rig.store.gets == 0


async def test_a_peer_that_never_fills_leaves_time_for_our_own_store_read() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}))
    rig.primary.held_by_peer = True
    rig.primary.on_get = lambda ref: None
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.tier, result.collapsed) == (b"stored", "store", False)
    assert rig.store.gets == 1


async def test_a_hot_key_near_the_end_of_its_cache_life_is_refreshed_early_once() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}))
    almost_gone = Entry(b"cached", "a/b", 5, 5, stored_at_ms=now_ms() - rig.router.ttl_cap_ms + 10)
    rig.primary.data[rig.ref.rkey] = almost_gone
    results = [await rig.router.get(rig.ref) for _ in range(20)]
    assert {r.tier for r in results} == {"primary"}  # never a synchronous miss
    await rig.router.drain()
    assert rig.store.gets == 1
    assert rig.primary.refreshes == 1
    record = rig.primary.data[rig.ref.rkey]
    assert isinstance(record, Entry)
    assert record.value == b"stored"  # a new life, from the store


async def test_a_key_far_from_the_end_of_its_cache_life_is_not_refreshed() -> None:
    rig = Rig()
    rig.primary.data[rig.ref.rkey] = Entry(b"cached", "a/b", 5, 5, stored_at_ms=now_ms())
    for _ in range(200):
        await rig.router.get(rig.ref)
    await rig.router.drain()
    assert rig.primary.refreshes == 0


async def test_a_full_local_queue_for_a_node_is_shed_not_failed_over() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}))
    rig.primary_fails(NodeBusyError("queue full", route="primary"))
    with pytest.raises(OverloadedError):
        await rig.router.get(rig.ref)
    assert rig.replica.gets == 0
    assert rig.store.gets == 0


async def test_degraded_mode_coalesces_reads_of_the_primary_and_retries_less() -> None:
    rig = Rig()
    rig.router.degraded.active = True
    gate = asyncio.Event()
    calls = 0

    async def slow_get(ref: object, *, deadline: float) -> Copy:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Copy(entry(b"v"))

    rig.primary.get = slow_get  # type: ignore[method-assign]
    readers = [asyncio.ensure_future(rig.router.get(rig.ref)) for _ in range(30)]
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    assert {r.entry.value for r in await asyncio.gather(*readers)} == {b"v"}
    assert calls == 1
    assert rig.router.degraded.retries(3) == 2


class ReadThenWaitStore(FakeStore):
    """A store whose reply is late: the row is read at once, then handed back after ``gate``
    (a SELECT that ran before a write committed, its reply still on the way)."""

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None:
        self._check()
        self.gets += 1
        row = self._live(namespace, key)
        if self.gate is not None and self.gets == 1:
            await self._wait(self.gate, deadline)
        return row


async def test_a_joiner_that_knows_a_newer_write_never_gets_the_older_shared_load() -> None:
    gate = asyncio.Event()
    rig = Rig(store=ReadThenWaitStore(rows={("default", "k"): entry(b"old", 5)}, gate=gate))
    first = asyncio.ensure_future(rig.router.get(rig.ref))
    for _ in range(5):
        await asyncio.sleep(0)
    assert rig.store.gets == 1  # its load read seq 5 and waits for its reply
    rig.store.rows["default", "k"] = entry(b"new", 7)  # another process writes seq 7 ...
    rig.versions.note("default", "k", 7)  # ... and the feed announces it here
    joiner = asyncio.ensure_future(rig.router.get(rig.ref))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    assert (await first).entry.seq == 5  # it began before the write: either answer is right
    result = await joiner
    assert (result.entry.value, result.entry.seq) == (b"new", 7)


async def test_a_joiner_that_knows_a_key_was_created_never_gets_the_shared_404() -> None:
    gate = asyncio.Event()
    rig = Rig(store=ReadThenWaitStore(rows={}, gate=gate))
    first = asyncio.ensure_future(rig.router.get(rig.ref))
    for _ in range(5):
        await asyncio.sleep(0)
    rig.store.rows["default", "k"] = entry(b"created", 7)
    rig.versions.note("default", "k", 7)
    joiner = asyncio.ensure_future(rig.router.get(rig.ref))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    with pytest.raises(KeyNotFoundError):
        await first
    assert (await joiner).entry.value == b"created"


async def test_no_cache_never_joins_a_load_that_began_before_it() -> None:
    gate = asyncio.Event()
    rig = Rig(store=ReadThenWaitStore(rows={("default", "k"): entry(b"old", 5)}, gate=gate))
    first = asyncio.ensure_future(rig.router.get(rig.ref))
    for _ in range(5):
        await asyncio.sleep(0)
    rig.store.rows["default", "k"] = entry(
        b"new", 7
    )  # not announced here yet: only the store knows
    revalidating = asyncio.ensure_future(
        rig.router.get(rig.ref, ReadPolicy(max_stale_s=2.0, stale_if_error_s=30.0, no_cache=True))
    )
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    await first
    assert (await revalidating).entry.value == b"new"


async def test_callers_with_no_copy_wait_for_a_shared_load_as_long_as_it_may_run() -> None:
    """The shared load runs under a deadline of its own, not its first caller's; a caller with
    nothing else to answer with waits for it (late joiners, and the first caller too)."""
    gate = asyncio.Event()
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}, gate=gate))
    rig.router.read_deadline_s = 0.2
    rig.router.primary_timeout_s = 0.2
    plain_get = rig.primary.get
    calls = 0

    async def slow_first_answer(ref: Any, *, deadline: float) -> Copy:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.15)  # the first caller reaches the store with 50 ms left
        return await plain_get(ref, deadline=deadline)

    rig.primary.get = slow_first_answer  # type: ignore[method-assign]
    first = asyncio.ensure_future(rig.router.get(rig.ref))
    await asyncio.sleep(0.17)
    joiner = asyncio.ensure_future(rig.router.get(rig.ref))  # 200 ms of its own
    await asyncio.sleep(0.1)  # the first caller's deadline has passed
    gate.set()
    assert (await first).entry.value == b"stored"
    assert (await joiner).entry.value == b"stored"


async def test_a_caller_with_a_stale_copy_gets_it_at_its_deadline_instead_of_waiting() -> None:
    gate = asyncio.Event()
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 5)}, gate=gate))
    rig.router.read_deadline_s = 0.1
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"replica", 5)
    rig.replica.behind_s = 10.0  # past max-stale, within stale-if-error
    result = await rig.router.get(rig.ref)
    assert (result.entry.value, result.store_failed) == (b"replica", True)
    gate.set()


# -- the local tier never goes backwards (a copy read before a write lands after it) ------


class CommitThenWaitStore(FakeStore):
    """A store whose write commits at once and whose reply comes after ``gate``."""

    async def put(self, namespace: str, key: str, value: bytes, **kw: Any) -> Any:
        result = await super().put(namespace, key, value, **kw)
        if self.gate is not None:
            await self.gate.wait()
        return result


async def test_a_put_whose_reply_comes_after_a_newer_announcement_keeps_no_local_copy() -> None:
    gate = asyncio.Event()
    rig = Rig(store=CommitThenWaitStore(gate=gate))
    put = asyncio.ensure_future(rig.router.put(rig.ref, b"mine", content_type="a/b", ttl_s=None))
    for _ in range(5):
        await asyncio.sleep(0)
    committed = rig.store.seq
    # Another process deletes the key (seq + 1); the feed announces it here first.
    rig.versions.note("default", "k", committed + 1)
    rig.local.invalidate("default", "k", committed + 1)
    gate.set()
    await put
    assert rig.local.lookup(rig.ref).record is None


async def test_a_primary_copy_overtaken_while_it_was_read_is_served_but_not_kept() -> None:
    rig = Rig()
    rig.primary.data[rig.ref.rkey] = entry(b"read", 5)
    plain_get = rig.primary.get

    async def overtaken(ref: Any, *, deadline: float) -> Copy:
        copy = await plain_get(ref, deadline=deadline)
        rig.versions.note("default", "k", 6)  # announced while the reply was on its way
        return copy

    rig.primary.get = overtaken  # type: ignore[method-assign]
    result = await rig.router.get(rig.ref)
    assert result.entry.seq == 5  # current when the read began: a right answer
    assert rig.local.lookup(rig.ref).record is None  # but too old to keep


async def test_a_primary_tombstone_and_a_store_404_drop_the_local_copy() -> None:
    rig = Rig()
    rig.local.keep(rig.ref, entry(b"deleted", 5))
    rig.primary.data[rig.ref.rkey] = Tombstone(6)
    with pytest.raises(KeyNotFoundError):
        await rig.router.get(rig.ref)
    assert rig.local.lookup(rig.ref).record is None
    rig.local.keep(rig.ref, entry(b"deleted", 5))
    rig.primary.data.pop(rig.ref.rkey)
    rig.versions.note("default", "k", 6)  # the delete, announced; the store has no row
    with pytest.raises(KeyNotFoundError):
        await rig.router.get(rig.ref)
    assert rig.local.lookup(rig.ref).record is None


async def test_a_local_copy_lives_at_most_its_maximum_age() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 7)}))
    rig.local.keep(rig.ref, entry(b"local", 7))
    rig.clock.now += rig.local.settings.max_age_s + 1
    assert rig.local.lookup(rig.ref).record is None


async def test_a_local_copy_reseeds_redis_only_when_its_version_is_known_current() -> None:
    rig = Rig()
    rig.local.keep(rig.ref, entry(b"local", 3))
    result = await rig.router.get(rig.ref)  # primary miss: the local copy answers
    assert (result.entry.value, result.tier) == (b"local", "local")
    await rig.router.drain()
    assert rig.ref.rkey not in rig.primary.data  # nothing says seq 3 is still the newest
    rig.versions.note("default", "k", 3)  # the announcement of that very version
    await rig.router.get(rig.ref)
    await rig.router.drain()
    assert rig.primary.data[rig.ref.rkey] == entry(b"local", 3)


async def test_a_failed_precondition_changes_nothing_and_names_the_live_version() -> None:
    rig = Rig()
    put = await rig.router.put(rig.ref, b"v1", content_type="a/b", ttl_s=None)
    with pytest.raises(StoreConflictError) as caught:
        await rig.router.put(rig.ref, b"v2", content_type="a/b", ttl_s=None, if_none_match=True)
    assert caught.value.current_version == put.version
    with pytest.raises(StoreConflictError):
        await rig.router.put(rig.ref, b"v2", content_type="a/b", ttl_s=None, if_match=[1])
    with pytest.raises(StoreConflictError):
        await rig.router.delete(rig.ref, if_match=[put.version + 1])
    assert rig.primary.data[rig.ref.rkey].seq == put.seq
    assert rig.outbox.done_ids == [put.outbox_id]
    other = rig.router.ref("other", "k")  # the same key in another namespace is another row
    with pytest.raises(KeyNotFoundError):
        await rig.router.get(other)
    with pytest.raises(StoreConflictError) as caught:
        await rig.router.delete(other, if_exists=True)
    assert caught.value.current_version is None


async def test_a_min_version_skips_every_older_copy_and_reads_the_store() -> None:
    """Read-your-writes: the caller wrote version 7 elsewhere; no announcement reached this
    process, its primary is down, the replica and the local tier hold version 4."""
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"new", 7)}))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"old", 4)
    rig.local.keep(rig.ref, entry(b"old", 4))
    assert (await rig.router.get(rig.ref)).entry.value == b"old"  # without it: the old copy
    result = await rig.router.get(rig.ref, replace(DEFAULT, min_version=7))
    assert (result.entry.value, result.tier) == (b"new", "store")


async def test_a_min_version_at_or_under_the_cached_one_is_a_hit() -> None:
    rig = Rig()
    rig.primary.data[rig.ref.rkey] = entry(b"cached", 7)
    result = await rig.router.get(rig.ref, replace(DEFAULT, min_version=7))
    assert (result.entry.value, result.tier) == (b"cached", "primary")
    assert rig.store.gets == 0


async def test_a_min_version_newer_than_the_store_is_refused_with_its_version() -> None:
    rig = Rig(store=FakeStore(rows={("default", "k"): entry(b"stored", 7)}))
    rig.primary.data[rig.ref.rkey] = entry(b"stored", 7)
    with pytest.raises(VersionUnavailableError) as caught:
        await rig.router.get(rig.ref, replace(DEFAULT, min_version=9))
    assert caught.value.current_version == 7


async def test_a_min_version_never_serves_an_older_copy_when_the_store_is_down() -> None:
    rig = Rig(store=FakeStore(down=True))
    rig.primary_fails()
    rig.replica.data[rig.ref.rkey] = entry(b"old", 4)
    anything = ReadPolicy(max_stale_s=1e9, stale_if_error_s=1e9, min_version=5)
    with pytest.raises(StoreUnavailableError):
        await rig.router.get(rig.ref, anything)
