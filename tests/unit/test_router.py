"""The fallback router with scriptable fake tiers (no network, no patching)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.codec import Tombstone
from app.errors import (
    KeyNotFoundError,
    StoreUnavailableError,
    TierTimeoutError,
    TierUnavailableError,
)
from app.router import FallbackRouter
from app.settings import Settings
from tests.unit.fakes import FakeOutbox, FakeStore, FakeTier, entry


def make(primary: FakeTier, store: FakeStore) -> tuple[FallbackRouter, FakeOutbox]:
    outbox = FakeOutbox()
    router = FallbackRouter(settings=Settings(), primary=primary, store=store, outbox=outbox)  # type: ignore[arg-type]
    return router, outbox


def count(status: str) -> float:
    return (
        REGISTRY.get_sample_value("redis_fallback_routing_attempts_total", {"status": status})
        or 0.0
    )


def fails(exc: Exception) -> Any:
    def raise_(*args: object) -> None:
        raise exc

    return raise_


async def test_a_primary_hit_does_not_touch_the_store() -> None:
    primary, store = FakeTier(), FakeStore()
    router, _ = make(primary, store)
    ref = router.ref("default", "k")
    primary.data[ref.rkey] = entry(b"cached")
    before = count("primary_hit")
    result = await router.get(ref)
    assert (result.entry.value, result.tier) == (b"cached", "primary")
    assert store.gets == 0
    assert count("primary_hit") == before + 1


async def test_a_primary_miss_reads_the_store_and_fills_redis() -> None:
    primary, store = FakeTier(), FakeStore(rows={"k": entry(b"stored", 5)})
    router, _ = make(primary, store)
    ref = router.ref("default", "k")
    result = await router.get(ref)
    assert (result.entry.value, result.tier, result.filled) == (b"stored", "store", True)
    assert primary.data[ref.rkey] == entry(b"stored", 5)


async def test_a_tombstone_or_expired_entry_is_a_miss_not_an_answer() -> None:
    primary, store = FakeTier(), FakeStore(rows={"k": entry(b"new", 9)})
    router, _ = make(primary, store)
    ref = router.ref("default", "k")
    primary.data[ref.rkey] = Tombstone(8)
    assert (await router.get(ref)).entry.value == b"new"
    primary.data[ref.rkey] = entry(b"old", 3, expires_at_ms=1)
    assert (await router.get(ref)).tier == "store"


async def test_a_cache_miss_is_never_a_404_unless_the_store_says_so() -> None:
    primary, store = FakeTier(), FakeStore()
    router, _ = make(primary, store)
    with pytest.raises(KeyNotFoundError):
        await router.get(router.ref("default", "absent"))
    store.down = True
    with pytest.raises(StoreUnavailableError):
        await router.get(router.ref("default", "absent"))


@pytest.mark.parametrize(
    "exc", [TierTimeoutError("t", route="p"), TierUnavailableError("u", route="p")]
)
async def test_a_failed_primary_falls_back_to_the_store_without_filling(exc: Exception) -> None:
    primary = FakeTier(on_get=fails(exc))
    store = FakeStore(rows={"k": entry(b"stored")})
    router, _ = make(primary, store)
    before = count("primary_failover")
    result = await router.get(router.ref("default", "k"))
    assert result.tier == "store"
    assert not result.filled
    assert primary.puts == []
    assert count("primary_failover") == before + 1


async def test_store_failure_after_primary_failure_counts_an_error() -> None:
    primary = FakeTier(on_get=fails(TierUnavailableError("u", route="p")))
    router, _ = make(primary, FakeStore(down=True))
    before = count("error")
    with pytest.raises(StoreUnavailableError):
        await router.get(router.ref("default", "k"))
    assert count("error") == before + 1


async def test_writes_commit_then_update_the_cache_and_mark_the_outbox_row() -> None:
    primary, store = FakeTier(), FakeStore()
    router, outbox = make(primary, store)
    ref = router.ref("default", "k")
    result = await router.put(ref, b"v1", content_type="a/b", ttl_s=None)
    assert result.created
    assert primary.data[ref.rkey].seq == result.version
    assert outbox.done_ids == [result.outbox_id]
    removed = await router.delete(ref)
    assert primary.data[ref.rkey] == Tombstone(removed.seq)
    with pytest.raises(KeyNotFoundError):
        await router.delete(ref)


async def test_a_cache_update_that_fails_leaves_the_outbox_row_for_the_repairer() -> None:
    primary = FakeTier(on_put=fails(TierTimeoutError("t", route="p")))
    router, outbox = make(primary, FakeStore())
    result = await router.put(router.ref("default", "k"), b"v", content_type="a/b", ttl_s=None)
    assert result.version == 1  # acknowledged: the commit is what counts
    assert outbox.done_ids == []


async def test_a_store_failure_on_write_changes_no_cache() -> None:
    primary = FakeTier()
    router, outbox = make(primary, FakeStore(down=True))
    with pytest.raises(StoreUnavailableError):
        await router.put(router.ref("default", "k"), b"v", content_type="a/b", ttl_s=None)
    assert primary.puts == []
    assert outbox.done_ids == []
