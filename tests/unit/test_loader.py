"""The store loader on its own: shared loads, the cross-process lock, early refresh."""

from __future__ import annotations

import asyncio
import random

import pytest

from app.codec import Entry, now_ms
from app.feed import VersionMap
from app.loader import StoreLoader
from app.settings import CoalescingSettings
from app.tasks import Spawner
from app.tiers.base import KeyRef
from app.writes import CacheWriter
from tests.unit.fakes import FakeClock, FakeStore, FakeTier, entry

REF = KeyRef("default", "k", b"gw:default:k")
ROW = ("default", "k")


class Rig:
    def __init__(self, store: FakeStore, *, beta: float = 1.0, cross_process: bool = True) -> None:
        self.store = store
        self.primary = FakeTier("primary")
        self.versions = VersionMap(max_keys=100, ttl_s=60, clock=FakeClock())
        self.background = Spawner(drain_timeout_s=1.0)
        caches = CacheWriter(
            primary=self.primary, versions=self.versions, local=None, timeout_s=0.1
        )
        coalescing = CoalescingSettings(xfetch_beta=beta, cross_process=cross_process)
        self.loader = StoreLoader(
            store=store, primary=self.primary, versions=self.versions, caches=caches,
            background=self.background, coalescing=coalescing, read_deadline_s=0.5,
            ttl_cap_ms=60_000, rng=random.Random(7),
        )  # fmt: skip

    async def load(self, *, floor: int = 0, revalidate: bool = False, fill: bool = True) -> Entry:
        deadline = asyncio.get_running_loop().time() + 0.5
        loaded = await self.loader.load(
            REF, deadline=deadline, floor=floor, revalidate=revalidate, fill=fill, peers=True,
            patient=True,
        )  # fmt: skip
        assert loaded.entry is not None
        return loaded.entry


async def test_concurrent_loads_of_a_key_share_one_store_read_and_one_fill() -> None:
    gate = asyncio.Event()
    rig = Rig(FakeStore(rows={ROW: entry(b"stored", 5)}, gate=gate))
    loads = [asyncio.ensure_future(rig.load()) for _ in range(50)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert rig.loader.loads.in_flight(ROW)
    gate.set()
    assert {e.value for e in await asyncio.gather(*loads)} == {b"stored"}
    assert (rig.store.gets, rig.primary.puts) == (1, [entry(b"stored", 5)])
    await rig.background.drain()
    assert not rig.loader.loads.in_flight(ROW)


class ReadThenWaitStore(FakeStore):
    """The first read's row is taken at once and handed back after ``gate``."""

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None:
        self.gets += 1
        row = self._live(namespace, key)
        if self.gate is not None and self.gets == 1:
            await self._wait(self.gate, deadline)
        return row


async def test_a_load_that_began_before_a_newer_announcement_is_not_joined() -> None:
    gate = asyncio.Event()
    rig = Rig(ReadThenWaitStore(rows={ROW: entry(b"old", 5)}, gate=gate))
    first = asyncio.ensure_future(rig.load())
    for _ in range(5):
        await asyncio.sleep(0)
    rig.store.rows[ROW] = entry(b"new", 7)
    joiner = asyncio.ensure_future(rig.load(floor=7))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    assert (await first).seq == 5
    assert (await joiner).seq == 7
    assert rig.store.gets == 2


async def test_without_a_fill_nothing_is_locked_or_sent_to_redis() -> None:
    rig = Rig(FakeStore(rows={ROW: entry(b"stored", 5)}))
    rig.primary.held_by_peer = True  # a lock would not be taken: the load must not ask
    assert (await rig.load(fill=False)).value == b"stored"
    assert rig.primary.puts == []


async def test_a_peer_holding_the_lock_fills_and_the_store_is_not_read() -> None:
    rig = Rig(FakeStore(rows={ROW: entry(b"stored", 5)}))
    rig.primary.held_by_peer = True
    rig.primary.data[REF.rkey] = entry(b"peer fill", 5)
    deadline = asyncio.get_running_loop().time() + 0.5
    loaded = await rig.loader.load(
        REF, deadline=deadline, floor=0, revalidate=False, fill=True, peers=True, patient=True
    )
    assert (loaded.entry, loaded.from_peer, rig.store.gets) == (entry(b"peer fill", 5), True, 0)


@pytest.mark.parametrize("beta", [0.0, 1.0])
async def test_an_early_refresh_runs_only_near_the_end_of_a_copy_s_life(beta: float) -> None:
    rig = Rig(FakeStore(rows={ROW: entry(b"stored", 5)}), beta=beta)
    far = Entry(b"cached", "a/b", 5, 5, stored_at_ms=now_ms())
    near = Entry(b"cached", "a/b", 5, 5, stored_at_ms=now_ms() - 60_000 + 10)
    for _ in range(50):
        rig.loader.maybe_refresh_early(REF, far)
    await rig.background.drain()
    assert rig.store.gets == 0
    for _ in range(50):
        rig.loader.maybe_refresh_early(REF, near)
    await rig.background.drain()
    assert (rig.store.gets, rig.primary.refreshes) == ((1, 1) if beta else (0, 0))
