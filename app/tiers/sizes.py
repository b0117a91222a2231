"""Which keys hold large values, so that their commands take the bulk lane with more time.

A reply of a megabyte takes a while to arrive and to read; pipelined with small commands on one
connection it would hold them all up, and timed like them it would fail and count against the
node's breaker. So the tiers remember (bounded, least recently used first out) the keys whose
last value they saw was large: commands on those keys, and writes of a large value, go on the
node's bulk lane (one command per connection), with a deadline stretched by what the transfer
needs, and their latency is not held against the node.
"""

from __future__ import annotations

from cachetools import LRUCache

LARGE_VALUE_BYTES = 64 * 1024
# The slowest transfer rate planned for: a megabyte gets 20 ms more than a small command.
PLANNED_BYTES_PER_S = 50 * 1024 * 1024
MAX_KEYS = 10_000


class LargeValues:
    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        self._sizes: LRUCache[bytes, int] = LRUCache(maxsize=max_keys)

    def size(self, rkey: bytes) -> int | None:
        """The size of the key's last value if it was large, else None."""
        return self._sizes.get(rkey) if self._sizes else None  # (empty: the common case, free)

    def saw(self, rkey: bytes, size: int) -> None:
        if size >= LARGE_VALUE_BYTES:
            self._sizes[rkey] = size
        elif self._sizes:
            self._sizes.pop(rkey, None)

    def __len__(self) -> int:
        return len(self._sizes)


def transfer_s(size: int) -> float:
    """The time a value of ``size`` bytes is given on top of a command's own deadline."""
    return size / PLANNED_BYTES_PER_S
