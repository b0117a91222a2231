"""The version map and the feed's trust in local copies, on a fake clock."""

from __future__ import annotations

from app.feed import FeedState, VersionMap
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
