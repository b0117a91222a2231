"""The local tier's bounds and its response to invalidations."""

from __future__ import annotations

from app.codec import Tombstone
from app.feed import FeedState
from app.settings import LocalSettings
from app.tiers.base import KeyRef
from app.tiers.local import ITEM_OVERHEAD_BYTES, LocalTier
from tests.unit.fakes import FakeClock, entry


def ref(key: str) -> KeyRef:
    return KeyRef("ns", key, key.encode())


def tier(**settings: int) -> LocalTier:
    clock = FakeClock()
    state = FeedState(clock=clock)
    state.restored(caught_up=True)
    return LocalTier(LocalSettings(**settings), state, clock=clock)


def test_bounded_in_entries_least_recently_used_first() -> None:
    local = tier(max_entries=2)
    local.keep(ref("a"), entry(seq=1))
    local.keep(ref("b"), entry(seq=1))
    local.lookup(ref("a"))
    local.keep(ref("c"), entry(seq=1))
    assert len(local) == 2
    assert local.lookup(ref("b")).record is None
    assert local.lookup(ref("a")).record is not None


def test_bounded_in_bytes() -> None:
    local = tier(max_bytes=3 * (1000 + ITEM_OVERHEAD_BYTES + 10))
    for i in range(10):
        local.keep(ref(f"k{i}"), entry(b"x" * 1000, seq=1))
    assert len(local) <= 3
    assert local.bytes <= 3 * (1000 + ITEM_OVERHEAD_BYTES + 10)
    assert not local.keep(ref("huge"), entry(b"x" * 10_000, seq=1))


def test_newer_copies_win_and_invalidations_drop_older_ones() -> None:
    local = tier()
    assert local.keep(ref("a"), entry(b"new", seq=5))
    assert not local.keep(ref("a"), entry(b"old", seq=4))
    local.invalidate("ns", "a", 5)  # the echo of this copy's own write: kept
    assert local.lookup(ref("a")).record == entry(b"new", seq=5)
    local.invalidate("ns", "a", 6)
    assert local.lookup(ref("a")).record is None


async def test_put_of_a_tombstone_invalidates() -> None:
    local = tier()
    local.keep(ref("a"), entry(seq=5))
    await local.put(ref("a"), Tombstone(6), deadline=0)
    assert local.lookup(ref("a")).record is None


def test_disabled_when_sized_zero() -> None:
    local = tier(max_entries=0)
    assert not local.keep(ref("a"), entry())
    assert local.lookup(ref("a")).record is None
