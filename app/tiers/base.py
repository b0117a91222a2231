"""The protocol every cache tier follows, and the reference to a key that tiers share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.codec import Entry, Tombstone


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A key as the caller named it, and its Redis key (computed once per request)."""

    namespace: str
    key: str
    rkey: bytes


class CacheTier(Protocol):
    """A cache in front of the store.

    ``get`` answers what the tier holds: an ``Entry``, a ``Tombstone`` (deleted or invalidated
    at that seq), or ``None`` (nothing). It raises a ``TierError`` when the tier cannot answer
    by ``deadline`` (event-loop time); it never returns ``None`` for an outage.

    ``put`` stores an entry or a tombstone only if the tier holds nothing with the same or a
    newer seq; it returns whether it wrote, and raises ``TierError`` like ``get``.
    """

    name: str

    async def get(self, ref: KeyRef, *, deadline: float) -> Entry | Tombstone | None: ...

    async def put(self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float) -> bool: ...
