"""The outbox's bookkeeping on the event loop, with a store that returns what a test says."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from app.feed import VersionMap
from app.outbox import Outbox
from app.settings import OutboxSettings
from app.store import Store
from tests.unit.fakes import FakeTier


class PendingStore:
    """Only what ``Outbox.note_pending`` asks: the keys whose update has not reached Redis."""

    def __init__(self, pending: list[tuple[str, str, int]]) -> None:
        self.pending = pending

    async def outbox_pending(
        self,
        *,
        limit: int,
        chunk: int,
        on_rows: Callable[[list[tuple[str, str, int]]], None],
        deadline: float,
    ) -> int:
        rows = self.pending[:limit]
        for start in range(0, len(rows), chunk):
            await asyncio.sleep(0)  # a cursor's fetch: a round trip to Postgres
            on_rows(rows[start : start + chunk])
        return len(rows)


async def test_noting_many_pending_keys_lets_other_tasks_run_in_between() -> None:
    pending = [("ns", f"k{i}", i) for i in range(50_000)]
    versions = VersionMap(max_keys=100_000, ttl_s=120)
    outbox = Outbox(
        cast(Store, PendingStore(pending)), FakeTier(), OutboxSettings(), key_prefix="cg",
        versions=versions,
    )  # fmt: skip
    turns = 0
    stop = asyncio.Event()

    async def other_task() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(other_task())
    await asyncio.sleep(0)  # the ticker is running
    before = turns
    await outbox.note_pending()
    during = turns - before
    stop.set()
    await ticker
    assert len(versions) == 50_000
    assert during >= 10, f"the loop ran other tasks {during} times while noting 50,000 keys"
