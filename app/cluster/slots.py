"""Hash slots and the slot map.

The slot of a key is CRC16 (XMODEM) of the key, or of its hash tag, modulo 16384, as the Redis
Cluster specification defines it: redis-py's ``redis.crc.key_slot`` (``binascii.crc_hqx`` in C).
"""

from __future__ import annotations

from binascii import crc_hqx
from dataclasses import dataclass, field

# The hash slot of a key (only the part inside the first non-empty ``{...}`` counts), re-exported
# as it is: the hot path calls it once per request.
from redis.crc import key_slot as key_slot

SLOT_COUNT = 16384

Address = tuple[str, int]


_TAGS: dict[int, bytes] = {}  # slot -> the first hex string found that hashes there
_TRIED = [0]  # hex numbers below this have been tried


def tag_for_slot(slot: int) -> bytes:
    """A short string that, as a hash tag (``{...}``), puts a key in ``slot``.

    Found by trying hex numbers in order (about 16,000 tries the first time: every slot met on
    the way is remembered, so later look-ups are mostly free).
    """
    tag = _TAGS.get(slot)
    if tag is not None:
        return tag
    for i in range(_TRIED[0], 1 << 21):
        candidate = b"%x" % i
        _TAGS.setdefault(crc_hqx(candidate, 0) & (SLOT_COUNT - 1), candidate)
        _TRIED[0] = i + 1
        if slot in _TAGS:
            return _TAGS[slot]
    raise LookupError(f"no hash tag found for slot {slot}")  # not reached: all are found


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Shard:
    """One primary and its replicas, as the cluster reported them."""

    primary: Address
    replicas: tuple[Address, ...] = ()
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(slots=True)
class SlotMap:
    """Which shard owns each slot. ``epoch`` counts full replacements from a refresh.

    Owned by the slot router: it is replaced whole by a refresh, and patched one slot at a time by
    a MOVED (the patch makes a new single-slot shard pointing at the new owner, replicas unknown
    until the next refresh).
    """

    slots: list[Shard | None] = field(default_factory=lambda: [None] * SLOT_COUNT)
    epoch: int = 0
    _shards: list[Shard] | None = None  # derived from slots; cleared by patch

    @classmethod
    def from_shards(cls, shards: list[Shard], *, epoch: int) -> SlotMap:
        slots: list[Shard | None] = [None] * SLOT_COUNT
        for shard in shards:
            for start, end in shard.ranges:
                for slot in range(max(start, 0), min(end, SLOT_COUNT - 1) + 1):
                    slots[slot] = shard
        return cls(slots=slots, epoch=epoch)

    def shard(self, slot: int) -> Shard | None:
        return self.slots[slot]

    def patch(self, slot: int, owner: Address) -> None:
        current = self.slots[slot]
        if current is not None and current.primary == owner:
            return
        self.slots[slot] = Shard(primary=owner, ranges=((slot, slot),))
        self._shards = None

    def covered(self) -> int:
        return sum(1 for shard in self.slots if shard is not None)

    def shards(self) -> list[Shard]:
        if self._shards is None:
            seen: dict[int, Shard] = {}
            for shard in self.slots:
                if shard is not None:
                    seen.setdefault(id(shard), shard)
            self._shards = list(seen.values())
        return self._shards
