"""``FallbackRouter.explain``: the routes a read would take now (map, breakers, node health)."""

from __future__ import annotations

from app.breaker import BreakerBoard, State
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Shard, SlotMap
from app.cluster.topology import NodeHealth, TopologyWatcher
from app.explain import LocalCopy
from app.feed import FeedState, VersionMap
from app.router import FallbackRouter
from app.settings import LocalSettings, Settings
from app.tiers.local import LocalTier
from tests.unit.fakes import FakeClock, FakeOutbox, FakeStore, FakeTier, entry

P, R1, R2 = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)


def router(*, mapped: bool = True) -> FallbackRouter:
    settings = Settings()
    slots = SlotRouter(settings.redis)
    if mapped:
        slots.map = SlotMap.from_shards([Shard(P, (R1, R2), ((0, 16383),))], epoch=1)
    clock = FakeClock()
    feed = FeedState(clock=clock)
    feed.restored(caught_up=True)
    return FallbackRouter(
        settings=settings, primary=FakeTier("primary"), store=FakeStore(), outbox=FakeOutbox(),
        versions=VersionMap(max_keys=10, ttl_s=60, clock=clock),
        local=LocalTier(LocalSettings(), feed, clock=clock),
        slots=slots, watcher=TopologyWatcher(slots, settings.topology),
        breakers=BreakerBoard(settings.breaker),
    )  # fmt: skip


def test_a_healthy_slot_is_read_from_its_primary_then_replicas_local_and_store() -> None:
    fallback = router()
    ref = fallback.ref("default", "k")
    found = fallback.explain(ref)
    assert (found.key, found.namespace, found.owner) == ("k", "default", "10.0.0.1:7000")
    assert found.replicas == ("10.0.0.2:7000", "10.0.0.3:7000")
    assert found.tier_order == (
        "primary@10.0.0.1:7000", "replica@10.0.0.2:7000", "replica@10.0.0.3:7000", "local",
        "store",
    )  # fmt: skip
    assert dict(found.breakers) == {
        "primary@10.0.0.1:7000": "closed", "replica@10.0.0.2:7000": "closed",
        "replica@10.0.0.3:7000": "closed", "store": "closed",
    }  # fmt: skip
    assert (found.load_in_flight, found.newest_announced_seq, found.local_copy) == (
        False, None, None,
    )  # fmt: skip
    assert (found.degraded_mode, found.deadline_ms) == (False, Settings().read_deadline_ms)


def test_open_breakers_and_a_partitioned_node_are_left_out_of_the_order() -> None:
    fallback = router()
    assert fallback.breakers is not None
    assert fallback.watcher is not None
    fallback.breakers.get("primary@10.0.0.1:7000").state = State.OPEN
    fallback.breakers.get("store").state = State.OPEN
    fallback.watcher.health[R1] = NodeHealth(R1, cluster_ok=False)
    ref = fallback.ref("default", "k")
    fallback.versions.note("default", "k", 9)
    assert fallback.local is not None
    fallback.local.keep(ref, entry(b"v", 9))
    found = fallback.explain(ref)
    assert found.tier_order == ("replica@10.0.0.3:7000", "local", "store (open)")
    assert found.breakers == {
        "primary@10.0.0.1:7000": "open", "replica@10.0.0.3:7000": "closed", "store": "open",
    }  # fmt: skip
    assert (found.newest_announced_seq, found.local_copy) == (9, LocalCopy(9, 0.0))


def test_without_an_owner_only_local_and_store_remain() -> None:
    found = router(mapped=False).explain(router(mapped=False).ref("default", "k"))
    assert (found.owner, found.replicas, found.tier_order) == (None, (), ("local", "store"))
    assert found.breakers == {"store": "closed"}
