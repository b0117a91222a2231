from __future__ import annotations

import pytest

from app.cluster.slots import key_slot
from app.codec import (
    Entry,
    Tombstone,
    decode,
    decode_entry,
    encode_entry,
    encode_tombstone,
    lock_key,
    redis_key,
)


@pytest.mark.parametrize("value", [b"", bytes(range(256)), b"\n\n V 1 2 3\n", b"x" * 100_000])
def test_entry_round_trip(value: bytes) -> None:
    entry = Entry(
        value=value,
        content_type="text/plain; charset=utf-8",
        version=41,
        seq=42,
        stored_at_ms=1_700_000_000_000,
        expires_at_ms=1_700_000_060_000,
    )
    assert decode(encode_entry(entry)) == entry


def test_entry_without_expiry_and_tombstone() -> None:
    entry = Entry(value=b"v", content_type="a/b", version=1, seq=1, stored_at_ms=5)
    assert decode(encode_entry(entry)) == entry
    assert decode(encode_tombstone(99)) == Tombstone(99)


def test_the_seq_is_within_the_bytes_the_lua_script_reads() -> None:
    entry = Entry(value=b"v", content_type="a/b", version=2**53, seq=2**53, stored_at_ms=0)
    head = encode_entry(entry)[:24].decode()
    assert head.startswith(f"V {2**53} ")


@pytest.mark.parametrize("raw", [b"", b"no header", b"X 1\n", b"V 1 2\nvalue"])
def test_foreign_records_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"record|header"):
        decode(raw)


def test_expiry_helpers() -> None:
    entry = Entry(
        value=b"", content_type="a/b", version=1, seq=1, stored_at_ms=0, expires_at_ms=1000
    )
    assert entry.expired(1000)
    assert not entry.expired(999)
    assert entry.ttl_ms(400) == 600
    assert Entry(value=b"", content_type="a/b", version=1, seq=1, stored_at_ms=0).ttl_ms(5) is None


def test_redis_key_keeps_hash_tags_of_the_callers_key() -> None:
    assert redis_key("cg", "default", "{user:1}:a") == b"cg:default:{user:1}:a"


@pytest.mark.parametrize("key", ["{t}x", "plain", "{}empty-tag", "a}b{c"])
def test_no_callers_key_is_the_load_lock_of_another(key: str) -> None:
    """A lock key has a byte no caller's key may contain (audit §15: ``{t}x:lock`` was the lock
    of ``{t}x``); it still hashes to the slot of the key it locks."""
    rkey = redis_key("cg", "default", key)
    lock = lock_key(rkey)
    if lock is None:
        return  # no lock key in that slot: coalescing stays in the process
    assert lock != redis_key("cg", "default", f"{key}:lock")
    assert b"\x00" in lock
    assert key_slot(lock) == key_slot(rkey)


@pytest.mark.parametrize(
    "raw",
    [b"V 1 2 3 0 a/b\nvalue", b"V 1 2 3 9 a/b; q=1\n", b"T 5\n", b"V 1 2 3\nx", b"V x 2 3 0 a\n",
     b"X 1\n", b"", b"V 1 2 3 0 a/b"],
)  # fmt: skip
def test_decode_entry_is_decode_for_entries_and_none_for_the_rest(raw: bytes) -> None:
    try:
        expected: object = decode(raw)
    except ValueError:
        expected = None
    if isinstance(expected, Tombstone):
        expected = None
    assert decode_entry(raw) == expected
