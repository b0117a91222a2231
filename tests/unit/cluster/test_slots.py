"""Hash slots against known vectors (the Redis Cluster specification and redis-py)."""

from __future__ import annotations

import random

import pytest
from redis.crc import key_slot as redis_py_key_slot

from app.cluster.slots import SLOT_COUNT, Shard, SlotMap, key_slot


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        (b"123456789", 0x31C3 % SLOT_COUNT),  # the spec's CRC16 check value 0x31C3
        (b"foo", 12182),
        (b"bar", 5061),
        (b"", 0),
    ],
)
def test_known_vectors(key: bytes, slot: int) -> None:
    assert key_slot(key) == slot


@pytest.mark.parametrize(
    ("key", "same_as"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"{user1000}.followers", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),  # empty first tag: the whole key counts
        (b"foo{{bar}}zap", b"{bar"),  # the tag is what lies between the first { and the next }
        (b"foo{bar}{zap}", b"bar"),  # only the first tag counts
        (b"{unclosed", b"{unclosed"),
    ],
)
def test_hash_tags(key: bytes, same_as: bytes) -> None:
    assert key_slot(key) == key_slot(same_as)


def test_agrees_with_redis_py_on_random_keys() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        assert key_slot(key) == redis_py_key_slot(key)


def test_slot_map_from_shards_and_patch() -> None:
    a = Shard(primary=("h", 1), replicas=(("h", 4),), ranges=((0, 5460),))
    b = Shard(primary=("h", 2), ranges=((5461, 10922),))
    slot_map = SlotMap.from_shards([a, b], epoch=3)
    assert slot_map.epoch == 3
    assert slot_map.shard(0) is a
    assert slot_map.shard(10922) is b
    assert slot_map.shard(10923) is None
    assert slot_map.covered() == 10923
    slot_map.patch(100, ("h", 2))
    patched = slot_map.shard(100)
    assert patched is not None
    assert patched.primary == ("h", 2)
    assert patched.replicas == ()  # unknown until the next refresh
    assert slot_map.shard(101) is a
    slot_map.patch(101, ("h", 1))  # already the owner: unchanged
    assert slot_map.shard(101) is a
    assert len(slot_map.shards()) == 3
