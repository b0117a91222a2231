"""The fallback router: which tier answers a read, under one deadline per request.

Reads:

* the slot's primary; a hit is served;
* a miss there: a local copy known to be current, else the store, then a versioned fill;
* a failure there (timeout, refused, CLUSTERDOWN, avoided node): the slot's replica, then the
  local tier, each served only within the request's staleness allowance (``max-stale``, by
  default the staleness budget), else the store;
* the store failing too: the least stale copy seen within ``stale-if-error``, else the error.

Whatever the tier, an answer older than the newest seq announced for the key (by this process's
own writes or by the invalidation feed) is never served, whatever the staleness allowance: that is
what makes a delete or an invalidate strict. A miss in a cache is never taken for a miss in the
store: ``KeyNotFoundError`` comes only from the store.

The router composes three rooms: this read walk, the store loader (``app/loader.py``: shared
loads, the cross-process lock, early refresh) and the write path (``app/writes.py``), which it
hands out as ``put``, ``delete`` and ``invalidate``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import Counter

from app import telemetry, tracing
from app.breaker import BreakerBoard
from app.cluster.slot_router import SlotRouter
from app.cluster.topology import TopologyWatcher
from app.codec import Entry, Tombstone, now_ms, redis_key
from app.degraded import DegradedMode
from app.errors import (
    CoalescingOverflowError,
    KeyNotFoundError,
    NodeBusyError,
    NotCachedError,
    OverloadedError,
    RedirectLoopError,
    StoreError,
    StoreUnavailableError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
    VersionUnavailableError,
)
from app.explain import Explanation, explain
from app.feed import VersionMap
from app.loader import Loaded, StoreLoader
from app.settings import Settings
from app.singleflight import FollowOn, SingleFlight
from app.source import Source
from app.tasks import Spawner
from app.tiers.base import CacheTier, Copy, KeyRef, LockingTier
from app.tiers.local import LocalTier
from app.writes import CacheWriter, OutboxSink, Writes

log = logging.getLogger(__name__)

# Keys of one get_many read alone at once at most: 1,000 misses do not open 1,000 loads at once.
MANY_ALONE = 256


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """What a request accepts: the router's defaults, narrowed or widened by Cache-Control."""

    max_stale_s: float
    stale_if_error_s: float
    no_cache: bool = False
    only_if_cached: bool = False
    min_version: int = 0  # Cachegw-Min-Version: no answer older than this version


class ReadResult(NamedTuple):
    """An answer and where it came from (a named tuple: one per key of a batch, built at a
    third of a frozen dataclass's cost).

    ``tier`` is primary, replica, local or store. ``stale_s`` is how far the copy may be past its
    freshness (behind the store, or past its expiry); 0 when fresh. ``store_failed`` marks a stale
    copy served because the store could not answer (stale-if-error).
    """

    entry: Entry
    tier: str
    filled: bool = False
    stale_s: float = 0.0
    store_failed: bool = False
    revalidated: bool = False
    collapsed: bool = False


class StaleCopy(NamedTuple):
    """A copy too stale for the request's allowance, kept in case the store fails too."""

    stale_s: float
    tier: str
    entry: Entry


@dataclass(slots=True)
class _Attempt:
    """What one read learned on its way down the tiers."""

    floor: int  # answers with an older seq are not served
    fallback: StaleCopy | None = None  # least stale copy, for stale-if-error
    primary_believed: bool = True  # False: its data is not believed (Provenance) until repaired

    def offer(self, copy: StaleCopy) -> None:
        if self.fallback is None or copy.stale_s < self.fallback.stale_s:
            self.fallback = copy


class ReadStats:
    """How reads were answered (``redis_fallback_routing_attempts_total`` by status); the
    labelled counters are made once, so a read only increments."""

    __slots__ = (
        "error", "local_hit", "primary_failover", "primary_hit", "primary_miss", "replica_hit",
        "secondary_fallback",
    )  # fmt: skip

    def __init__(self) -> None:
        status = telemetry.FALLBACK_ATTEMPTS
        self.primary_hit: Counter = status.labels(status="primary_hit")
        self.primary_miss: Counter = status.labels(status="primary_miss")
        self.primary_failover: Counter = status.labels(status="primary_failover")
        self.replica_hit: Counter = status.labels(status="replica_hit")
        self.local_hit: Counter = status.labels(status="local_hit")
        self.secondary_fallback: Counter = status.labels(status="secondary_fallback")
        self.error: Counter = status.labels(status="error")


class FallbackRouter:
    """The read walk over the tiers, composed with the store loader and the write path.

    ``slots``, ``watcher`` and ``breakers`` are read only by ``explain``.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        primary: LockingTier,
        store: Source,
        outbox: OutboxSink,
        versions: VersionMap,
        replica: CacheTier | None = None,
        local: LocalTier | None = None,
        degraded: DegradedMode | None = None,
        rng: random.Random | None = None,
        slots: SlotRouter | None = None,
        watcher: TopologyWatcher | None = None,
        breakers: BreakerBoard | None = None,
    ) -> None:
        self.settings = settings
        self.primary = primary
        self.replica = replica
        self.local = local
        self.store = store
        self.versions = versions
        self.slots = slots
        self.watcher = watcher
        self.breakers = breakers
        self.primary_timeout_s = settings.redis.primary_timeout_ms / 1000
        self.replica_timeout_s = settings.redis.replica_timeout_ms / 1000
        self.retries = settings.read_retries
        self.default_policy = ReadPolicy(
            max_stale_s=settings.staleness.budget_s,
            stale_if_error_s=settings.staleness.stale_if_error_s,
        )
        self._prefix = settings.redis.key_prefix
        self.degraded = degraded or DegradedMode(settings.degraded)
        self.rng = rng or random.Random()
        self.ttl_cap_ms = settings.redis.ttl_cap_s * 1000
        self.caches = CacheWriter(
            primary=primary, versions=versions, local=local, timeout_s=self.primary_timeout_s
        )
        self.background = Spawner(drain_timeout_s=self.caches.timeout_s * 2)
        self.loader = StoreLoader(
            store=store, primary=primary, versions=versions, caches=self.caches,
            background=self.background, coalescing=settings.coalescing,
            read_deadline_s=settings.read_deadline_ms / 1000, ttl_cap_ms=self.ttl_cap_ms,
            rng=self.rng,
        )  # fmt: skip
        # Concurrent reads of a key's primary (or replica) share reads that start after they
        # arrived; in degraded mode, those of a primary share the one on its way.
        self.next_reads: FollowOn[Copy] = FollowOn("primary")
        self.replica_reads: FollowOn[Copy] = FollowOn("replica")
        self.reads: SingleFlight[Copy] = SingleFlight(
            "read", max_waiters=settings.coalescing.max_waiters
        )
        self.writes = Writes(
            store=store, caches=self.caches, outbox=outbox,
            write_deadline_s=settings.write_deadline_ms / 1000,
        )  # fmt: skip
        self.put = self.writes.put
        self.delete = self.writes.delete
        self.invalidate = self.writes.invalidate
        self.touch = self.writes.touch
        self.drain = self.background.drain
        self.stats = ReadStats()

    @property
    def loads(self) -> SingleFlight[Loaded]:
        """The store loads in flight, one per key."""
        return self.loader.loads

    @property
    def read_deadline_s(self) -> float:
        """A read's deadline; the loader's load deadline and early refresh are counted in it."""
        return self.loader.read_deadline_s

    @read_deadline_s.setter
    def read_deadline_s(self, value: float) -> None:
        self.loader.read_deadline_s = value

    def ref(self, namespace: str, key: str) -> KeyRef:
        return KeyRef(namespace, key, redis_key(self._prefix, namespace, key))

    def explain(self, ref: KeyRef) -> Explanation:
        """How a read of ``ref`` would be routed now; nothing is read."""
        return explain(
            ref, slots=self.slots, watcher=self.watcher, breakers=self.breakers,
            local=self.local, load_in_flight=self.loads.in_flight((ref.namespace, ref.key)),
            versions=self.versions, degraded=self.degraded,
            deadline_ms=self.settings.read_deadline_ms,
        )  # fmt: skip

    # -- reads -------------------------------------------------------------------------------

    async def get(self, ref: KeyRef, policy: ReadPolicy | None = None) -> ReadResult:
        """The entry for ``ref`` from the fastest tier that can answer within ``policy``.

        Raises ``KeyNotFoundError`` when the store says absent, ``NotCachedError`` for
        only-if-cached with nothing cached, and ``StoreError`` when nothing else could answer.
        With ``policy.min_version`` N, no copy older than N is served: versions and cache seqs
        come from one sequence and a copy of version N has a seq of at least N, so N is a floor
        like an announced seq; an answer that still has a version under N (a copy re-sequenced
        by an invalidate) is asked of the store again, and ``VersionUnavailableError`` is
        raised if the store's own entry is older than N.
        """
        policy = policy or self.default_policy
        result = await self._get(ref, policy)
        if result.entry.version >= policy.min_version:
            return result
        if not result.revalidated:
            result = await self._get(ref, dataclasses.replace(policy, no_cache=True))
        if result.entry.version < policy.min_version:
            raise VersionUnavailableError(
                f"the store's entry is version {result.entry.version}, older than the "
                f"{policy.min_version} asked for",
                current_version=result.entry.version,
            )
        return result

    async def _get(self, ref: KeyRef, policy: ReadPolicy) -> ReadResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.read_deadline_s
        newest = self.versions.newest(ref.namespace, ref.key) or 0
        attempt = _Attempt(floor=max(newest, policy.min_version))
        primary_answered = False
        if tracing.recording():
            tracing.KEY_ATTRIBUTE.set(tracing.key_attribute(ref.key))
            tracing.FALLBACK_PATH.set("" if policy.no_cache else "primary")
        if not policy.no_cache:
            try:
                copy = await self._primary_read(
                    ref, min(deadline, started + self.primary_timeout_s)
                )
            except NodeBusyError as exc:
                raise self._shed(exc) from exc
            except TierError as exc:
                log.debug("primary tier failed: %s", exc)
                self.stats.primary_failover.inc()
                telemetry.tier_result("primary", "error")
            else:
                primary_answered = True
                record = copy.record
                attempt.primary_believed = copy.behind_s == 0
                if isinstance(record, Entry) and copy.behind_s > 0:
                    # Its data is not believed now (it restarted, or was promoted, and is not
                    # repaired yet): the store answers, and the fill repairs this key.
                    telemetry.tier_result("primary", "untrusted")
                elif isinstance(record, Entry) and record.seq >= attempt.floor:
                    if not record.expired(now_ms()):
                        self.stats.primary_hit.inc()
                        telemetry.tier_result("primary", "hit")
                        self.caches.keep_local(ref, record)
                        self.loader.maybe_refresh_early(ref, record)
                        return ReadResult(record, "primary")
                elif isinstance(record, Entry):
                    telemetry.tier_result("primary", "stale")
                elif isinstance(record, Tombstone):
                    attempt.floor = max(attempt.floor, record.seq)
                    if self.local is not None:
                        self.local.invalidate(ref.namespace, ref.key, record.seq)
                self.stats.primary_miss.inc()
                telemetry.tier_result("primary", "miss")
        try:
            if not policy.no_cache:
                cached = await self._from_fallback_tiers(
                    ref, attempt, policy, deadline, fresh_only=primary_answered
                )
                if cached is not None:
                    return cached
                if policy.only_if_cached:
                    raise NotCachedError("no cache tier holds this key within policy")
            return await self._from_store(
                ref, attempt, deadline=deadline, primary_answered=primary_answered, policy=policy
            )
        finally:
            elapsed = loop.time() - started
            telemetry.FALLBACK_LATENCY.observe(elapsed)
            self.degraded.observe(elapsed)

    async def get_many(
        self, refs: list[KeyRef], policies: list[ReadPolicy]
    ) -> list[ReadResult | Exception]:
        """``get`` of each ref, its result or its exception, with the primaries' hits read in
        one round trip per node (``PrimaryTier.get_many``). A key that is not a plain hit there
        (a miss, a tombstone, a copy older than what is known, a primary that could not answer,
        a copy not believed) takes the whole walk of ``get`` alone, so every answer is the one
        ``get`` would give. Degraded mode, ``no-cache``, and a primary tier that cannot read
        many keys at once send every key the single way."""
        results: list[ReadResult | Exception | None] = [None] * len(refs)
        get_many = getattr(self.primary, "get_many", None)
        if get_many is not None and not self.degraded.active:
            fast = [i for i, policy in enumerate(policies) if not policy.no_cache]
            loop = asyncio.get_running_loop()
            # The group's share: a batch's reads travel together, so they wait together; a key
            # its primary does not answer in time still has a whole read of its own after.
            deadline = loop.time() + max(self.primary_timeout_s, self.read_deadline_s / 2)
            try:
                entries = await get_many([refs[i] for i in fast], deadline=deadline)
            except NodeBusyError:
                entries = [None] * len(fast)
            now = now_ms()
            newest = self.versions.newest_many((refs[i].namespace, refs[i].key) for i in fast)
            hits = 0
            for i, record, known in zip(fast, entries, newest, strict=True):
                if record is None:
                    continue
                ref, min_version = refs[i], policies[i].min_version
                if (
                    record.seq >= (known or 0)
                    and record.seq >= min_version
                    and record.version >= min_version
                    and not record.expired(now)
                ):
                    hits += 1
                    if self.local is not None:  # the floor is checked just above, this turn
                        self.local.keep(ref, record)
                    self.loader.maybe_refresh_early(ref, record, now=now)
                    results[i] = ReadResult(record, "primary")
            if hits:
                self.stats.primary_hit.inc(hits)
                telemetry.tier_result("primary", "hit", hits)

        limit = asyncio.Semaphore(MANY_ALONE)

        async def alone(i: int) -> None:
            async with limit:
                try:
                    results[i] = await self.get(refs[i], policies[i])
                except Exception as exc:  # that key's answer, as its single read raises it
                    results[i] = exc

        await asyncio.gather(*(alone(i) for i, r in enumerate(results) if r is None))
        done = [r for r in results if r is not None]
        assert len(done) == len(refs)
        return done

    def _shed(self, exc: NodeBusyError) -> OverloadedError:
        telemetry.SHED.labels(reason="node_queue").inc()
        return OverloadedError(f"shed: {exc}")

    async def _primary_read(self, ref: KeyRef, deadline: float) -> Copy:
        """The primary's copy. Concurrent reads of a key share reads, each one started after
        all of its callers arrived (``FollowOn``), so a stampede on one key sends a few GETs,
        not one per reader; in degraded mode they share the read on its way (``SingleFlight``:
        at most one round trip older than a read of their own)."""
        read = functools.partial(self._primary_get, ref, deadline)
        try:
            if not self.degraded.active:
                return await self.next_reads.do(ref.rkey, read, deadline=deadline)
            return await self.reads.do(ref.rkey, read, deadline=deadline)
        except CoalescingOverflowError as exc:
            raise TierUnavailableError(str(exc), route="primary") from exc
        except TimeoutError as exc:
            raise TierTimeoutError(
                "primary: no reply before the deadline", route="primary"
            ) from exc

    async def _primary_get(self, ref: KeyRef, deadline: float) -> Copy:
        """The primary's copy; redirect loops (a migrating slot) are retried with full jitter."""
        loop = asyncio.get_running_loop()
        retries = self.degraded.retries(self.retries)
        attempt = 0
        while True:
            try:
                return await self.primary.get(ref, deadline=deadline)
            except RedirectLoopError:
                pause = self.rng.uniform(
                    0, min(self.settings.retry_cap_s, self.settings.retry_base_s * 2**attempt)
                )
                if attempt >= retries or loop.time() + pause >= deadline:
                    raise
            await asyncio.sleep(pause)
            attempt += 1

    async def _from_fallback_tiers(
        self,
        ref: KeyRef,
        attempt: _Attempt,
        policy: ReadPolicy,
        deadline: float,
        *,
        fresh_only: bool,
    ) -> ReadResult | None:
        """The replica (only when the primary failed) and the local tier, within policy."""
        tiers: list[tuple[CacheTier, Counter]] = []
        if not fresh_only and self.replica is not None:
            tiers.append((self.replica, self.stats.replica_hit))
        if self.local is not None:
            tiers.append((self.local, self.stats.local_hit))
        allowance = 0.0 if fresh_only else policy.max_stale_s
        loop = asyncio.get_running_loop()
        for tier, hits in tiers:
            try:
                tier_deadline = min(deadline, loop.time() + self.replica_timeout_s)
                if tracing.recording():
                    copy = await self._traced_tier_get(tier, ref, tier_deadline)
                elif tier is self.replica:
                    copy = await self._replica_get(tier, ref, tier_deadline)
                else:
                    copy = await tier.get(ref, deadline=tier_deadline)
            except NodeBusyError as exc:
                raise self._shed(exc) from exc
            except TierError as exc:
                log.debug("%s tier failed: %s", tier.name, exc)
                telemetry.tier_result(tier.name, "error")
                continue
            record = copy.record
            if isinstance(record, Tombstone):
                attempt.floor = max(attempt.floor, record.seq)
                telemetry.tier_result(tier.name, "miss")
                continue
            if record is None:
                telemetry.tier_result(tier.name, "miss")
                continue
            if record.seq < attempt.floor:
                telemetry.tier_result(tier.name, "stale")
                continue
            staleness = max(copy.behind_s, _expired_by_s(record))
            if staleness <= allowance:
                hits.inc()
                telemetry.tier_result(tier.name, "hit")
                if fresh_only and self.versions.newest(ref.namespace, ref.key) == record.seq:
                    # The primary answered but had lost it; this copy is known to be the newest
                    # version (its own announcement is remembered): put it back. Otherwise it is
                    # served (nothing newer reached this process) but does not re-seed Redis.
                    self._fill_later(ref, record)
                return ReadResult(record, tier.name, stale_s=staleness)
            telemetry.tier_result(tier.name, "too_stale")  # kept for stale-if-error
            attempt.offer(StaleCopy(staleness, tier.name, record))
        return None

    async def _replica_get(self, tier: CacheTier, ref: KeyRef, deadline: float) -> Copy:
        """The replica's copy, its concurrent reads shared as the primary's are."""
        try:
            return await self.replica_reads.do(
                ref.rkey, functools.partial(tier.get, ref, deadline=deadline), deadline=deadline
            )
        except TimeoutError as exc:
            raise TierTimeoutError(
                "replica: no reply before the deadline", route="replica"
            ) from exc

    async def _traced_tier_get(self, tier: CacheTier, ref: KeyRef, deadline: float) -> Copy:
        tracing.extend_fallback_path(tier.name)
        if tier is self.replica:  # the replica's node calls make their own spans
            return await self._replica_get(tier, ref, deadline)
        attributes = {"db.system.name": "cachegw.local", "db.operation.name": "GET"}
        with tracing.tier_span("local GET", attributes):
            return await tier.get(ref, deadline=deadline)

    async def _from_store(
        self,
        ref: KeyRef,
        attempt: _Attempt,
        *,
        deadline: float,
        primary_answered: bool,
        policy: ReadPolicy,
    ) -> ReadResult:
        if tracing.recording():
            tracing.extend_fallback_path("store")
        try:
            loaded = await self.loader.load(
                ref,
                deadline=deadline,
                floor=attempt.floor,
                revalidate=policy.no_cache,
                fill=primary_answered,
                # A peer's "fill" read from a primary that is not believed proves nothing.
                peers=attempt.primary_believed,
                # With no copy to fall back on, a caller waits for the load as long as it may run.
                patient=attempt.fallback is None,
            )
        except CoalescingOverflowError:
            telemetry.SHED.labels(reason="waiters").inc()
            fallback = attempt.fallback
            if fallback is not None and fallback.stale_s <= policy.max_stale_s:
                return ReadResult(fallback.entry, fallback.tier, stale_s=fallback.stale_s)
            raise
        except (StoreError, TimeoutError):
            self.stats.error.inc()
            telemetry.tier_result("store", "error")
            fallback = attempt.fallback
            if fallback is not None and fallback.stale_s <= policy.stale_if_error_s:
                return ReadResult(
                    fallback.entry, fallback.tier, stale_s=fallback.stale_s, store_failed=True
                )
            raise StoreUnavailableError("the store did not answer within the deadline") from None
        self.stats.secondary_fallback.inc()
        entry = loaded.entry
        telemetry.tier_result("store", "miss" if entry is None else "hit")
        if entry is None:
            if self.local is not None:
                self.local.drop(ref.namespace, ref.key)
            raise KeyNotFoundError(ref.key)
        if policy.no_cache and not primary_answered and entry.seq >= attempt.floor:
            # The primary was not asked: refresh it without making the caller wait.
            self._fill_later(ref, entry)
        return ReadResult(
            entry, "store", filled=loaded.filled, revalidated=policy.no_cache,
            collapsed=loaded.from_peer,
        )  # fmt: skip

    def _fill_later(self, ref: KeyRef, entry: Entry) -> None:
        """Put a copy back into Redis without making the caller wait."""
        self.background.spawn(
            self.caches.put(ref, entry, source="fill", deadline=self.caches.deadline())
        )


def _expired_by_s(entry: Entry) -> float:
    if entry.expires_at_ms is None:
        return 0.0
    return max(0.0, (now_ms() - entry.expires_at_ms) / 1000)
