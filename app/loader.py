"""The store loader: one load of a key from the store at a time, in this process and across them.

Within this process, concurrent misses of a key share one load (``SingleFlight``). Across
processes, a load that will fill Redis first takes a short lock on the key's slot; a process that
does not get it waits for the holder's fill and reads the store itself only if none comes in
time. A hot key is reloaded a little before its copy in Redis would expire (XFetch), so steady
traffic never meets a synchronous miss at expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
from dataclasses import dataclass

from app import telemetry
from app.codec import Entry, now_ms
from app.errors import TierError
from app.feed import VersionMap
from app.settings import CoalescingSettings
from app.singleflight import SingleFlight
from app.source import Source
from app.tasks import Spawner
from app.tiers.base import KeyRef, LockingTier
from app.writes import CacheWriter

XFETCH_HORIZON = 30
PEER_POLL_FIRST_S = 0.002
PEER_POLL_MAX_S = 0.02
PEER_POLL_RESERVE_S = 0.02
# How long a load from the store may run, in read deadlines (readers with nothing else to answer
# with wait for it that long: an answer a little late beats a 503 that brings its client back).
LOAD_DEADLINES = 2


@dataclass(frozen=True, slots=True)
class Loaded:
    """What one load from the store produced, shared by every request that waited for it.

    ``began`` (event-loop time) is when the load started: its store read reflects every write
    this process had heard of by then, and none it heard of later.
    """

    entry: Entry | None
    began: float
    filled: bool = False
    from_peer: bool = False  # another process loaded it; this one read it from Redis


class StoreLoader:
    """Loads of keys from the store, shared.

    ``loads`` holds the load in flight per (namespace, key): ``load`` and the early refresh add
    one through it, and only the flight itself removes it (``SingleFlight``), so a refresh never
    starts beside a load of the same key. ``_store_latency_s`` is a moving average of store reads
    that only ``_load`` updates; the peer poll and XFetch read it.
    """

    def __init__(
        self,
        *,
        store: Source,
        primary: LockingTier,
        versions: VersionMap,
        caches: CacheWriter,
        background: Spawner,
        coalescing: CoalescingSettings,
        read_deadline_s: float,
        ttl_cap_ms: int,
        rng: random.Random,
    ) -> None:
        self.store = store
        self.primary = primary
        self.versions = versions
        self.caches = caches
        self.background = background
        self.coalescing = coalescing
        self.read_deadline_s = read_deadline_s
        self.ttl_cap_ms = ttl_cap_ms
        self.rng = rng
        self.loads: SingleFlight[Loaded] = SingleFlight("store", max_waiters=coalescing.max_waiters)
        self._store_latency_s = 0.002

    async def load(
        self,
        ref: KeyRef,
        *,
        deadline: float,
        floor: int,
        revalidate: bool,
        fill: bool,
        peers: bool,
        patient: bool,
    ) -> Loaded:
        """The key's entry from the store, for a caller that knows of seq ``floor``.

        The load in flight is joined, unless it began before this caller arrived and is behind
        what the caller knows (a newer write announced, a tombstone seen; or ``revalidate``,
        which asks for a read that starts after it): then a load that begins now answers.
        ``fill``, ``peers`` and ``patient`` as for ``_shared_load``.
        """
        arrived = asyncio.get_running_loop().time()
        loaded = await self._shared_load(ref, deadline, fill=fill, peers=peers, patient=patient)
        if loaded.began < arrived and _behind(loaded, floor, revalidate=revalidate):
            loaded = await self._shared_load(ref, deadline, fill=fill, peers=peers, patient=patient)
        return loaded

    async def _shared_load(
        self, ref: KeyRef, deadline: float, *, fill: bool, peers: bool, patient: bool
    ) -> Loaded:
        """The key's load in flight, or a new one; this caller waits until its ``deadline``
        (``patient``: or for as long as the load may run, if that is later).

        A new load runs under a deadline of its own (``LOAD_DEADLINES`` read deadlines from
        now), not its first caller's: callers that join it later, with time left, are not failed
        by the first one running out of time, and a load slowed by a busy process (a stampede
        on a loaded host) still ends in an answer for everyone waiting.
        """
        load_deadline = asyncio.get_running_loop().time() + LOAD_DEADLINES * self.read_deadline_s
        load = functools.partial(self._load, ref, load_deadline, fill=fill, peers=peers)
        return await self.loads.do(
            (ref.namespace, ref.key), load, deadline=deadline, load_deadline=load_deadline,
            patient=patient,
        )  # fmt: skip

    async def _load(self, ref: KeyRef, deadline: float, *, fill: bool, peers: bool) -> Loaded:
        """One process's load of a key from the store (run once per key by ``self.loads``).

        With ``fill`` (the primary answered this request), other processes are kept off the
        store too: a short lock on the key's slot; whoever does not get it waits for the holder's
        fill in Redis, and reads the store itself only if none comes in time (not with ``peers``
        False: what that primary holds is not believed). After a primary failure nothing is sent
        to it: the outbox and later reads fill it.
        """
        loop = asyncio.get_running_loop()
        began = loop.time()
        token: bytes | None = None
        if fill and peers and self.coalescing.cross_process:
            try:
                token = await self.primary.lock(
                    ref, ttl_ms=self.coalescing.lock_ttl_ms, deadline=self.caches.deadline(deadline)
                )
            except TierError:
                token = b""  # Redis cannot say: coalesce within this process only
            if token is None:
                peer = await self._await_peer_fill(ref, deadline)
                if peer is not None:
                    return Loaded(peer, began, filled=False, from_peer=True)
        try:
            read_at = loop.time()
            entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
            self._store_latency_s += 0.2 * (loop.time() - read_at - self._store_latency_s)
            filled = False
            if entry is not None and entry.seq >= self._newest(ref):
                self.caches.keep_local(ref, entry)
                if fill:
                    result = await self.caches.put(ref, entry, source="fill", deadline=deadline)
                    filled = result == "applied"
            return Loaded(entry, began, filled=filled)
        finally:
            if token:
                self.background.spawn(self._unlock(ref, token))

    async def _unlock(self, ref: KeyRef, token: bytes) -> None:
        with contextlib.suppress(TierError):  # else it expires by itself within lock_ttl_ms
            await self.primary.unlock(ref, token, deadline=self.caches.deadline())

    async def _await_peer_fill(self, ref: KeyRef, deadline: float) -> Entry | None:
        """Another process holds the key's load lock: wait for its fill while time allows."""
        loop = asyncio.get_running_loop()
        floor = self._newest(ref)
        pause = PEER_POLL_FIRST_S
        # Keep half of the load's time (at least a few store round trips) to read the store
        # ourselves if the peer never fills: a busy process reads slowly too.
        reserve = max(PEER_POLL_RESERVE_S + 2 * self._store_latency_s, (deadline - loop.time()) / 2)
        while True:
            if loop.time() + pause + reserve >= deadline:
                return None
            await asyncio.sleep(pause)
            try:
                copy, held = await self.primary.poll_fill(
                    ref, deadline=self.caches.deadline(deadline)
                )
            except TierError:
                return None
            record = copy.record
            if isinstance(record, Entry) and record.seq >= floor:
                telemetry.COALESCED.labels(kind="peer").inc()
                return record
            if not held:
                return None  # the peer finished without a fill (absent, or its store read failed)
            pause = min(pause * 2, PEER_POLL_MAX_S)

    def maybe_refresh_early(self, ref: KeyRef, entry: Entry, *, now: int | None = None) -> None:
        """Probabilistic early expiration (XFetch, Vattani et al., VLDB 2015), for a hit.

        A copy in Redis lives until ``stored_at + ttl_cap``. Each hit refreshes it early with the
        chance that ``now - delta * beta * ln(U)`` reaches that end (U uniform in (0, 1],
        delta the time a load takes), so a hot key is reloaded by one request shortly before its
        copy would expire, and steady traffic never meets a synchronous miss at expiry.
        """
        beta = self.coalescing.xfetch_beta
        if beta <= 0:
            return
        life_end = entry.stored_at_ms + self.ttl_cap_ms
        if entry.expires_at_ms is not None and entry.expires_at_ms <= life_end:
            return  # the value itself ends then: a reload cannot extend it
        delta_ms = max(self._store_latency_s, self.coalescing.xfetch_min_delta_s) * 1000
        ahead_ms = life_end - (now_ms() if now is None else now)
        if ahead_ms > XFETCH_HORIZON * delta_ms * beta:
            return  # the chance is below e^-XFETCH_HORIZON: skip the random draw
        if -delta_ms * beta * math.log(1.0 - self.rng.random()) < ahead_ms:
            return
        slot = (ref.namespace, ref.key)
        if self.loads.in_flight(slot):
            return
        deadline = asyncio.get_running_loop().time() + self.read_deadline_s
        self.background.spawn(
            self.loads.do(slot, functools.partial(self._refresh, ref, deadline), deadline=deadline)
        )

    async def _refresh(self, ref: KeyRef, deadline: float) -> Loaded:
        telemetry.CACHE_UPDATES.labels(source="early_refresh", result="started").inc()
        began = asyncio.get_running_loop().time()
        entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
        if entry is None or entry.seq < self._newest(ref):
            return Loaded(entry, began, filled=False)
        self.caches.keep_local(ref, entry)
        try:
            written = await self.primary.put(ref, entry, deadline=deadline, refresh=True)
        except TierError:
            written = False
        return Loaded(entry, began, filled=written)

    def _newest(self, ref: KeyRef) -> int:
        return self.versions.newest(ref.namespace, ref.key) or 0


def _behind(loaded: Loaded, floor: int, *, revalidate: bool) -> bool:
    if revalidate:
        return True
    if loaded.entry is None:
        return floor > 0
    return loaded.entry.seq < floor
