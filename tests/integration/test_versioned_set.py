"""The versioned conditional set (a Lua script) on a real Redis primary."""

from __future__ import annotations

import asyncio
import uuid

from app.codec import Entry, Tombstone
from app.gateway import Gateway
from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.redis_direct import cached


def entry(seq: int, value: bytes = b"v", version: int | None = None) -> Entry:
    return Entry(value, "a/b", version or seq, seq, stored_at_ms=0)


async def test_only_newer_records_land(stack: Stack) -> None:
    async with gateway_client(settings_for(stack)) as (_, gateway):
        assert isinstance(gateway, Gateway)
        key = f"lua-{uuid.uuid4().hex[:8]}"
        ref = gateway.router.ref("default", key)
        tier = gateway.router.primary
        loop = asyncio.get_running_loop()

        async def put(record: Entry | Tombstone) -> bool:
            return await tier.put(ref, record, deadline=loop.time() + 1)

        assert await put(entry(10))
        assert not await put(entry(9))  # older
        assert not await put(entry(10, b"other"))  # same seq: first writer stays
        assert await put(entry(11, b"newer"))
        assert not await put(Tombstone(11))  # a tombstone needs a newer seq
        assert await put(Tombstone(12))
        assert not await put(entry(11))  # an older fill cannot resurrect a deleted key
        assert isinstance(cached(stack, key), Tombstone)
        assert await put(entry(12, b"fresh fill", version=11))  # after an invalidate at 12
        record = cached(stack, key)
        assert isinstance(record, Entry)
        assert (record.value, record.version, record.seq) == (b"fresh fill", 11, 12)
        assert await put(entry(13, b"x" * 1024 * 1024))  # large values are not copied to Lua
        assert not await put(entry(12))
