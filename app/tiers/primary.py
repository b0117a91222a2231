"""The primary tier: the Redis Cluster primary that owns the key's slot."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Address, key_slot
from app.codec import (
    LEASE,
    LEASE_DONE,
    MARK,
    MARK_IS_OWN,
    POLL_FILL,
    SET_IF_NEWER,
    UNLESS_TOMBSTONE_UNLINK,
    UNLOCK,
    Entry,
    Tombstone,
    decode,
    decode_entry,
    encode_entry,
    encode_tombstone,
    lock_key,
    marker_key,
    now_ms,
    repair_lease_key,
)
from app.errors import TierError, TierUnavailableError
from app.settings import RedisSettings
from app.tiers.base import MISS, Copy, KeyRef
from app.tiers.sizes import LARGE_VALUE_BYTES, LargeValues, transfer_s

log = logging.getLogger(__name__)

EMPTY_CONCURRENCY = 32  # removals in flight at once while a node is emptied


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

    def __init__(
        self, slots: SlotRouter, settings: RedisSettings, *, large: LargeValues | None = None
    ) -> None:
        self.slots = slots
        self.ttl_cap_ms = settings.ttl_cap_s * 1000
        self.tombstone_ttl_ms = settings.tombstone_ttl_s * 1000
        self.key_prefix = settings.key_prefix
        self.large = large or LargeValues()

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy:
        """The primary's copy; ``behind_s`` is infinite when that primary's data is not
        believed (it restarted, was promoted, changed history: ``Provenance``) until repaired."""
        size = self.large.size(ref.rkey)
        if size is None:
            raw, address = await self.slots.read(ref.rkey, b"GET", ref.rkey, deadline=deadline)
        else:
            raw, address = await self.slots.read(
                ref.rkey, b"GET", ref.rkey, deadline=deadline + transfer_s(size), bulk=True
            )
        self.large.saw(ref.rkey, len(raw) if isinstance(raw, bytes) else 0)
        behind_s = 0.0 if self.slots.provenance.trusted(address) else math.inf
        return parse_reply(raw, ref, behind_s=behind_s)

    async def get_many(self, refs: list[KeyRef], *, deadline: float) -> list[Entry | None]:
        """Many keys' entries, one group of GETs per primary: one round trip, one call under
        the node's breaker, whose latency does not count as slow (the group is slow for its
        size). Per key: the entry its primary holds when that primary answered, is believed
        (``Provenance``) and held one of our entries; None for everything else (a miss, a
        tombstone, a large value, a slot with no known owner, an avoided node, a node that could
        not answer, a redirect): the caller reads that key alone (``get``), which handles each
        case. No ``Copy`` per key: a batch's hits are most of its keys."""
        out: list[Entry | None] = [None] * len(refs)
        by_node: dict[Address, list[int]] = {}
        slots, large = self.slots.map.slots, self.large
        for index, ref in enumerate(refs):
            if large.size(ref.rkey) is not None:
                continue
            shard = slots[key_slot(ref.rkey)]
            if shard is not None and not self.slots.avoid(shard.primary):
                by_node.setdefault(shard.primary, []).append(index)

        async def one_node(address: Address, indices: list[int]) -> None:
            commands = [(b"GET", refs[i].rkey) for i in indices]
            try:
                replies = await self.slots.call_on(
                    address, *commands, readonly=False, deadline=deadline, route="primary",
                    count_slow=len(commands) == 1,
                )  # fmt: skip
            except TierError:
                return  # each key is read alone, which meets the error again and handles it
            if not self.slots.provenance.trusted(address):
                return
            for i, raw in zip(indices, replies, strict=True):
                if type(raw) is bytes:
                    large.saw(refs[i].rkey, len(raw))  # (a no-op unless it is large now)
                    out[i] = decode_entry(raw)
                # else: a miss (None: the single read counts it), or a MOVED, ASK, TRYAGAIN or
                # CLUSTERDOWN reply: read alone, which handles it

        await asyncio.gather(*(one_node(a, i) for a, i in by_node.items()))
        return out

    async def put(
        self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float, refresh: bool = False
    ) -> bool:
        """Versioned set; ``refresh`` also rewrites an entry of the same seq (a new cache life)."""
        if isinstance(record, Tombstone):
            payload, ttl_ms = encode_tombstone(record.seq), self.tombstone_ttl_ms
        else:
            remaining = record.ttl_ms(now_ms())
            ttl_ms = self.ttl_cap_ms if remaining is None else min(remaining, self.ttl_cap_ms)
            if ttl_ms <= 0:
                return False
            payload = encode_entry(record)
        self.large.saw(ref.rkey, len(payload))
        bulk = len(payload) >= LARGE_VALUE_BYTES
        # EVAL (not EVALSHA): a restarted node has an empty script cache, and the body is small.
        written = await self.slots.execute(
            ref.rkey, b"EVAL", SET_IF_NEWER, 1, ref.rkey, record.seq, payload, ttl_ms,
            b"1" if refresh else b"0",
            deadline=deadline + transfer_s(len(payload)) if bulk else deadline, bulk=bulk,
        )  # fmt: skip
        return bool(written)

    async def lock(self, ref: KeyRef, *, ttl_ms: int, deadline: float) -> bytes | None:
        """Take the key's load lock for ``ttl_ms``: the token, or None when another holds it.

        Raises ``TierUnavailableError`` when the key has no lock key in its slot.
        """
        key = lock_key(ref.rkey)
        if key is None:
            raise TierUnavailableError("no lock key in this slot", route="primary")
        token = secrets.token_hex(8).encode()
        taken = await self.slots.execute(
            ref.rkey, b"SET", key, token, b"NX", b"PX", ttl_ms, deadline=deadline
        )
        return token if taken is not None else None

    async def unlock(self, ref: KeyRef, token: bytes, *, deadline: float) -> None:
        key = lock_key(ref.rkey)
        if key is not None:
            await self.slots.execute(ref.rkey, b"EVAL", UNLOCK, 1, key, token, deadline=deadline)

    async def poll_fill(self, ref: KeyRef, *, deadline: float) -> tuple[Copy, bool]:
        """The key's copy, and whether its load lock is still held (another process loading)."""
        key = lock_key(ref.rkey)
        if key is None:
            raise TierUnavailableError("no lock key in this slot", route="primary")
        raw, held = await self.slots.execute(
            ref.rkey, b"EVAL", POLL_FILL, 2, ref.rkey, key, deadline=deadline
        )
        return parse_reply(raw, ref), bool(held)

    # -- one node's data as a whole (``app/recovery.py``) ---------------------------------------

    async def mark(
        self,
        address: Address,
        slot: int,
        value: str,
        *,
        deadline: float,
        repaired_from: bytes | None = None,
        repaired: bool = False,
    ) -> bytes | None:
        """Write the node's marker (``codec.MARK``); the marker found instead when it may not
        be written: it names another process of the node, or (``repaired``) it is no longer
        ``repaired_from``, the marker the repair began with."""
        found = await self.slots.execute_on(
            address, b"EVAL", MARK, 1, marker_key(self.key_prefix, slot), value,
            b"repaired" if repaired else b"mark", repaired_from or b"",
            readonly=False, deadline=deadline,
        )  # fmt: skip
        return found if isinstance(found, bytes) else None

    async def marker(self, address: Address, slot: int, *, deadline: float) -> bytes | None:
        found = await self.slots.execute_on(
            address, b"GET", marker_key(self.key_prefix, slot), readonly=False, deadline=deadline
        )
        return found if isinstance(found, bytes) else None

    async def lease(
        self, address: Address, slot: int, token: bytes, *, ttl_ms: int, deadline: float
    ) -> bool:
        """Take (or renew) the lease on repairing the node: True if ``token`` holds it now."""
        held = await self.slots.execute_on(
            address, b"EVAL", LEASE, 1, repair_lease_key(self.key_prefix, slot), token, ttl_ms,
            readonly=False, deadline=deadline,
        )  # fmt: skip
        return bool(held)

    async def finish_lease(
        self, address: Address, slot: int, token: bytes, *, ttl_ms: int, deadline: float
    ) -> None:
        """The repair is over: the lease, if ``token`` still holds it, becomes its record."""
        await self.slots.execute_on(
            address, b"EVAL", LEASE_DONE, 1, repair_lease_key(self.key_prefix, slot), token,
            ttl_ms, readonly=False, deadline=deadline,
        )  # fmt: skip

    async def marker_is_own(self, address: Address, slot: int, *, deadline: float) -> bool:
        """Whether the node's marker names the Redis process that holds it now."""
        own = await self.slots.execute_on(
            address, b"EVAL", MARK_IS_OWN, 1, marker_key(self.key_prefix, slot),
            readonly=False, deadline=deadline,
        )  # fmt: skip
        return bool(own)

    async def lease_holder(self, address: Address, slot: int, *, deadline: float) -> bytes | None:
        """Who holds the node's repair lease (``done <token>``: whose repair ended), if any."""
        found = await self.slots.execute_on(
            address, b"GET", repair_lease_key(self.key_prefix, slot), readonly=False,
            deadline=deadline,
        )  # fmt: skip
        return found if isinstance(found, bytes) else None

    async def empty(
        self, address: Address, cursor: int, *, count: int, deadline: float
    ) -> tuple[int, int]:
        """One step of emptying the node of the gateway's keys (tombstones stay): the next SCAN
        cursor (0 when done) and how many keys were removed."""
        reply = await self.slots.execute_on(
            address, b"SCAN", cursor, b"MATCH", self.key_prefix.encode() + b":*", b"COUNT", count,
            readonly=False, deadline=deadline,
        )  # fmt: skip
        next_cursor, keys = int(reply[0]), list(reply[1])
        removed = 0
        for start in range(0, len(keys), EMPTY_CONCURRENCY):  # the request path shares the queue
            replies = await asyncio.gather(
                *(
                    self.slots.execute_on(
                        address,
                        b"EVAL",
                        UNLESS_TOMBSTONE_UNLINK,
                        1,
                        key,
                        readonly=False,
                        deadline=deadline,
                    )
                    for key in keys[start : start + EMPTY_CONCURRENCY]
                )
            )
            removed += sum(int(r) for r in replies)
        return next_cursor, removed
