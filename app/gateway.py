"""The gateway's parts, built together and closed together (the lifespan holds one of these)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field

from app import tasks, telemetry
from app.auth import ApiKeys
from app.breaker import BreakerBoard
from app.cluster.slot_router import SlotRouter
from app.cluster.topology import TopologyWatcher
from app.degraded import DegradedMode
from app.drain import Drain
from app.feed import FeedState, InvalidationFeed, VersionMap
from app.outbox import Outbox
from app.ratelimit import FleetLimiter
from app.recovery import Recovery
from app.router import FallbackRouter
from app.settings import Settings
from app.store import Store
from app.tiers.local import LocalTier
from app.tiers.primary import PrimaryTier
from app.tiers.replica import ReplicaTier
from app.tiers.sizes import LargeValues

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0
REAP_EVERY = 5  # gauge refreshes between two reapings of dead workers' metric files


@dataclass
class Gateway:
    settings: Settings
    slots: SlotRouter
    watcher: TopologyWatcher
    store: Store
    local: LocalTier
    feed: InvalidationFeed
    outbox: Outbox
    recovery: Recovery
    router: FallbackRouter
    breakers: BreakerBoard
    degraded: DegradedMode
    auth: ApiKeys
    drain: Drain = field(default_factory=Drain)
    _gauges: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        breakers = BreakerBoard(settings.breaker)
        slots = SlotRouter(settings.redis)
        slots.breakers = breakers
        watcher = TopologyWatcher(slots, settings.topology)
        store = Store(settings.pg)
        store.read_breaker = breakers.get("store", probe=store.probe)
        store.write_breaker = breakers.get("store-write", probe=store.probe, count_slow=False)
        degraded = DegradedMode(settings.degraded)
        large = LargeValues()  # shared: a key's size seen by one tier routes the other's reads
        primary = PrimaryTier(slots, settings.redis, large=large)
        feed_state = FeedState()
        local = LocalTier(settings.local, feed_state)
        versions = VersionMap(
            max_keys=settings.feed.versions_max_keys, ttl_s=settings.feed.versions_ttl_s
        )
        feed = InvalidationFeed(
            store,
            settings.feed,
            versions=versions,
            state=feed_state,
            on_invalidate=local.invalidate,
            catch_up_window_s=settings.outbox.retain_s,
        )
        outbox = Outbox(
            store, primary, settings.outbox, key_prefix=settings.redis.key_prefix, versions=versions
        )
        slots.avoid = watcher.partitioned
        router = FallbackRouter(
            settings=settings,
            primary=primary,
            replica=ReplicaTier(slots, watcher, large=large),
            local=local,
            store=store,
            outbox=outbox,
            versions=versions,
            degraded=degraded,
            slots=slots,
            watcher=watcher,
            breakers=breakers,
        )
        if settings.feed.mode == "relay":
            # A NOTIFY reaches every process at commit; a relay's batch only later: a write is
            # answered once this process has seen it come back from the relay.
            router.writes.announced = feed.announced
        return cls(
            settings=settings, slots=slots, watcher=watcher, store=store, local=local,
            feed=feed, outbox=outbox, router=router, breakers=breakers, degraded=degraded,
            recovery=Recovery(store, slots, primary, outbox, settings.outbox),
            auth=ApiKeys(
                store, settings.auth,
                limiter=FleetLimiter(slots, key_prefix=settings.redis.key_prefix)
                if settings.auth.rate_scope == "fleet" else None,
            ),
        )  # fmt: skip

    async def start(self) -> None:
        """Connect what can be reached; an unreachable Redis or Postgres does not stop start-up."""
        await self.store.start()
        await self.auth.start()
        await self.slots.start()
        await self.watcher.start()
        await self.feed.start()
        await self.outbox.start()
        await self.recovery.start()
        await self.breakers.start()
        await self.degraded.start()
        self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges())
        log.info(
            "gateway started: %d of 16384 slots mapped, feed %s, read deadline %d ms",
            self.slots.map.covered(),
            "up" if self.feed.state.up else "down",
            self.settings.read_deadline_ms,
        )

    async def _refresh_gauges(self) -> None:
        """Gauges of state that changes on every request, set once a second, not per request."""
        for tick in itertools.count():
            self.local.update_gauges()
            telemetry.SLOTS_MAPPED.set(self.slots.map.covered())
            if tick % REAP_EVERY == 0:  # other workers' gauges do not outlive them
                telemetry.reap_dead_workers()
            await asyncio.sleep(GAUGE_INTERVAL_S)

    async def aclose(self) -> None:
        """Stop background work first, then close clients (redis-py's aclose is not terminal)."""
        await tasks.stop(self._gauges)
        await self.degraded.aclose()
        await self.breakers.aclose()
        await self.auth.aclose()
        await self.recovery.aclose()
        await self.outbox.aclose()
        await self.feed.aclose()
        await self.watcher.aclose()
        await self.router.drain()
        await self.slots.aclose()
        await self.store.aclose()
