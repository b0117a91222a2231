"""The primary tier: the Redis Cluster primary that owns the key's slot."""

from __future__ import annotations

import logging

from app.cluster.slot_router import SlotRouter
from app.codec import SET_IF_NEWER, Entry, Tombstone, decode, encode_entry, encode_tombstone
from app.settings import RedisSettings
from app.store import now_ms
from app.tiers.base import MISS, Copy, KeyRef

log = logging.getLogger(__name__)


def parse_reply(raw: object, ref: KeyRef, *, behind_s: float = 0.0) -> Copy:
    """A GET reply as a copy; a value that is not one of our records counts as a miss."""
    if raw is None:
        return MISS
    if not isinstance(raw, bytes):
        log.warning("unexpected reply type %s for a key of %r", type(raw).__name__, ref.namespace)
        return MISS
    try:
        return Copy(decode(raw), behind_s)
    except ValueError:
        log.warning("unreadable cache record for a key of %r; treated as a miss", ref.namespace)
        return MISS


class PrimaryTier:
    name = "primary"

    def __init__(self, slots: SlotRouter, settings: RedisSettings) -> None:
        self.slots = slots
        self.ttl_cap_ms = settings.ttl_cap_s * 1000
        self.tombstone_ttl_ms = settings.tombstone_ttl_s * 1000

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy:
        raw = await self.slots.execute(ref.rkey, b"GET", ref.rkey, deadline=deadline)
        return parse_reply(raw, ref)

    async def put(self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float) -> bool:
        if isinstance(record, Tombstone):
            payload, ttl_ms = encode_tombstone(record.seq), self.tombstone_ttl_ms
        else:
            remaining = record.ttl_ms(now_ms())
            ttl_ms = self.ttl_cap_ms if remaining is None else min(remaining, self.ttl_cap_ms)
            if ttl_ms <= 0:
                return False
            payload = encode_entry(record)
        # EVAL (not EVALSHA): a restarted node has an empty script cache, and the body is small.
        written = await self.slots.execute(
            ref.rkey, b"EVAL", SET_IF_NEWER, 1, ref.rkey, record.seq, payload, ttl_ms,
            deadline=deadline,
        )  # fmt: skip
        return bool(written)
