"""The protocol every cache tier follows, and what tiers share: the key reference and a copy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from app.codec import Entry, Tombstone


class KeyRef(NamedTuple):
    """A key as the caller named it, and its Redis key (computed once per request). A named
    tuple: built once per key of a batch, at half a frozen dataclass's cost."""

    namespace: str
    key: str
    rkey: bytes


@dataclass(frozen=True, slots=True)
class Copy:
    """What a tier holds for a key, and how long it may have been missing updates.

    ``record`` is an ``Entry``, a ``Tombstone`` (deleted or invalidated at that seq), or ``None``
    (nothing there). ``behind_s`` is 0 for a tier that is kept in step with the store (the
    primary, or the local tier while the invalidation feed is up); for a replica it is how long
    its link to the primary has been down or lagging.
    """

    record: Entry | Tombstone | None
    behind_s: float = 0.0


MISS = Copy(None)


class CacheTier(Protocol):
    """A cache in front of the store.

    ``get`` answers what the tier holds for ``ref`` as a ``Copy``. It raises a ``TierError`` when
    the tier cannot answer by ``deadline`` (event-loop time); it never reports an outage as a miss.
    """

    name: str

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy: ...


class WritableTier(CacheTier, Protocol):
    """A tier the router writes through.

    ``put`` stores an entry or a tombstone only if the tier holds nothing with a newer seq (an
    entry may replace a tombstone of the same seq); it returns whether it wrote, and raises a
    ``TierError`` like ``get``.
    """

    async def put(self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float) -> bool: ...


class LockingTier(WritableTier, Protocol):
    """A writable tier that also refreshes a copy's life and holds the key's load lock (the
    primary tier: loads from the store are coordinated through it across processes).

    ``lock`` returns a token, or None when another process holds the lock; ``poll_fill`` returns
    the key's copy and whether the lock is still held. Both raise ``TierError`` like ``get``.
    """

    async def put(
        self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float, refresh: bool = False
    ) -> bool: ...

    async def lock(self, ref: KeyRef, *, ttl_ms: int, deadline: float) -> bytes | None: ...

    async def unlock(self, ref: KeyRef, token: bytes, *, deadline: float) -> None: ...

    async def poll_fill(self, ref: KeyRef, *, deadline: float) -> tuple[Copy, bool]: ...
