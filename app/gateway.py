"""The gateway's parts, built together and closed together (the lifespan holds one of these)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.cluster.slot_router import SlotRouter
from app.outbox import Outbox
from app.router import FallbackRouter
from app.settings import Settings
from app.store import Store
from app.tiers.primary import PrimaryTier

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    slots: SlotRouter
    store: Store
    outbox: Outbox
    router: FallbackRouter

    @classmethod
    def build(cls, settings: Settings) -> Gateway:
        slots = SlotRouter(settings.redis)
        store = Store(settings.pg)
        primary = PrimaryTier(slots, settings.redis)
        outbox = Outbox(store, primary, settings.outbox, key_prefix=settings.redis.key_prefix)
        router = FallbackRouter(settings=settings, primary=primary, store=store, outbox=outbox)
        return cls(settings=settings, slots=slots, store=store, outbox=outbox, router=router)

    async def start(self) -> None:
        """Connect what can be reached; an unreachable Redis or Postgres does not stop start-up."""
        await self.store.start()
        await self.slots.start()
        await self.outbox.start()
        log.info(
            "gateway started: %d of 16384 slots mapped, read deadline %d ms",
            self.slots.map.covered(),
            self.settings.read_deadline_ms,
        )

    async def aclose(self) -> None:
        """Stop background work first, then close clients (redis-py's aclose is not terminal)."""
        await self.outbox.aclose()
        await self.slots.aclose()
        await self.store.aclose()
