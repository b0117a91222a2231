"""The local tier: a bounded LRU in this process, kept in step by the feed.

Bounded in entries, in bytes and in age: a copy lives at most ``max_age_s``, no longer than the
version map remembers announcements (``feed.versions_ttl_s``), so no copy outlives the record
that would tell it is too old. Every copy is stamped with the feed's generation and the
time it was taken, so that ``FeedState`` can say how long it may have missed invalidations:
0 while the feed is up, growing while it is down (the router then serves it only within
``stale-if-error``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from app import telemetry
from app.codec import Entry, Tombstone
from app.feed import FeedState
from app.settings import LocalSettings
from app.tiers.base import MISS, Copy, KeyRef

# Bookkeeping per item beyond the value itself (key, tuple, dataclass): a rough figure that
# keeps many tiny entries from looking free.
ITEM_OVERHEAD_BYTES = 200


class _Item(NamedTuple):
    entry: Entry
    generation: int
    cached_at: float
    size: int


class _Lru:
    """Items bounded in total ``size``, least recently used out first: an ``OrderedDict``, so a
    hit costs two C calls (cachetools' ``LRUCache`` costs five Python calls, once per key of a
    batch)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.currsize = 0
        self._items: OrderedDict[tuple[str, str], _Item] = OrderedDict()

    def get(self, slot: tuple[str, str]) -> _Item | None:
        """The item, now the most recently used."""
        item = self._items.get(slot)
        if item is not None:
            self._items.move_to_end(slot)
        return item

    def put(self, slot: tuple[str, str], item: _Item) -> None:
        """Keep ``item`` (no larger than ``maxsize``), dropping the least recently used."""
        self.pop(slot)
        self._items[slot] = item
        self.currsize += item.size
        while self.currsize > self.maxsize:
            self.pop_oldest()

    def pop(self, slot: tuple[str, str]) -> None:
        item = self._items.pop(slot, None)
        if item is not None:
            self.currsize -= item.size

    def pop_oldest(self) -> None:
        _slot, item = self._items.popitem(last=False)
        self.currsize -= item.size

    def __len__(self) -> int:
        return len(self._items)


class LocalTier:
    name = "local"

    def __init__(
        self,
        settings: LocalSettings,
        feed: FeedState,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.feed = feed
        self.clock = clock
        self.enabled = settings.max_entries > 0 and settings.max_bytes > 0
        self._items = _Lru(max(1, settings.max_bytes))

    def lookup(self, ref: KeyRef) -> Copy:
        slot = (ref.namespace, ref.key)
        item = self._items.get(slot)
        if item is None:
            return MISS
        if self.clock() - item.cached_at > self.settings.max_age_s:
            self._items.pop(slot)  # older than what the version map remembers: not trusted
            return MISS
        return Copy(item.entry, self.feed.behind_s(item.generation, item.cached_at))

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy:
        return self.lookup(ref)

    def keep(self, ref: KeyRef, entry: Entry) -> bool:
        """Keep ``entry`` unless a copy with a newer seq is already here."""
        if not self.enabled:
            return False
        slot = (ref.namespace, ref.key)
        current = self._items.get(slot)  # (a lookup also marks it recently used)
        if current is not None and current.entry.seq >= entry.seq:
            return current.entry.seq == entry.seq
        size = len(entry.value) + len(ref.key) + len(entry.content_type) + ITEM_OVERHEAD_BYTES
        if size > self._items.maxsize:
            self._items.pop(slot)
            return False
        self._items.put(slot, _Item(entry, self.feed.generation, self.clock(), size))
        while len(self._items) > self.settings.max_entries:
            self._items.pop_oldest()
        return True

    async def put(self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float) -> bool:
        if isinstance(record, Tombstone):
            self.invalidate(ref.namespace, ref.key, record.seq)
            return True
        return self.keep(ref, record)

    def invalidate(self, namespace: str, key: str, seq: int) -> None:
        """Drop the copy of a key if it is older than ``seq`` (an announced write or delete)."""
        item = self._items.get((namespace, key))
        if item is not None and item.entry.seq < seq:
            self._items.pop((namespace, key))

    def drop(self, namespace: str, key: str) -> None:
        self._items.pop((namespace, key))

    def update_gauges(self) -> None:
        telemetry.LOCAL_ENTRIES.set(len(self._items))
        telemetry.LOCAL_BYTES.set(self._items.currsize)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return int(self._items.currsize)
