"""The fallback router: which tier answers, under one deadline per request.

Reads follow the table in DESIGN.md section 3:

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

Writes (DESIGN.md section 2): the store first (one transaction with its outbox row), then this
process's version map and local tier, then the versioned Redis update; an update that cannot
reach Redis is repaired later from the outbox, so the answer depends only on the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from app import telemetry, tracing
from app.codec import Entry, Tombstone, now_ms, redis_key
from app.degraded import DegradedMode
from app.errors import (
    CoalescingOverflowError,
    KeyNotFoundError,
    NodeBusyError,
    NotCachedError,
    OverloadedError,
    RedirectLoopError,
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
)
from app.feed import VersionMap
from app.settings import Settings
from app.singleflight import SingleFlight
from app.source import PutResult, RemoveResult, Source
from app.tiers.base import CacheTier, Copy, KeyRef, PrimaryLike
from app.tiers.local import LocalTier

log = logging.getLogger(__name__)

XFETCH_HORIZON = 30
PEER_POLL_FIRST_S = 0.002
PEER_POLL_MAX_S = 0.02
PEER_POLL_RESERVE_S = 0.02
# How long a load from the store may run, in read deadlines (readers with nothing else to answer
# with wait for it that long: an answer a little late beats a 503 that brings its client back).
LOAD_DEADLINES = 2


class OutboxSink(Protocol):
    def done(self, outbox_id: int) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadPolicy:
    """What a request accepts: the router's defaults, narrowed or widened by Cache-Control."""

    max_stale_s: float
    stale_if_error_s: float
    no_cache: bool = False
    only_if_cached: bool = False


@dataclass(frozen=True, slots=True)
class ReadResult:
    """An answer and where it came from.

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


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What one load from the store produced, shared by every request that waited for it.

    ``began`` (event-loop time) is when the load started: its store read reflects every write
    this process had heard of by then, and none it heard of later.
    """

    entry: Entry | None
    began: float
    filled: bool = False
    from_peer: bool = False  # another process loaded it; this one read it from Redis


@dataclass(slots=True)
class _Attempt:
    """What one read learned on its way down the tiers."""

    floor: int  # answers with an older seq are not served
    fallback: tuple[float, str, Entry] | None = None  # least stale copy, for stale-if-error
    primary_believed: bool = True  # False: its data is not believed (Provenance) until repaired

    def offer(self, staleness: float, tier: str, entry: Entry) -> None:
        if self.fallback is None or staleness < self.fallback[0]:
            self.fallback = (staleness, tier, entry)


class FallbackRouter:
    def __init__(
        self,
        *,
        settings: Settings,
        primary: PrimaryLike,
        store: Source,
        outbox: OutboxSink,
        versions: VersionMap,
        replica: CacheTier | None = None,
        local: LocalTier | None = None,
        degraded: DegradedMode | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.primary = primary
        self.replica = replica
        self.local = local
        self.store = store
        self.outbox = outbox
        self.versions = versions
        self.read_deadline_s = settings.read_deadline_ms / 1000
        self.write_deadline_s = settings.write_deadline_ms / 1000
        self.primary_timeout_s = settings.redis.primary_timeout_ms / 1000
        self.replica_timeout_s = settings.redis.replica_timeout_ms / 1000
        self.cache_write_timeout_s = self.primary_timeout_s
        self.retries = settings.read_retries
        self.default_policy = ReadPolicy(
            max_stale_s=settings.staleness.budget_s,
            stale_if_error_s=settings.staleness.stale_if_error_s,
        )
        self._prefix = settings.redis.key_prefix
        self._background: set[asyncio.Task[Any]] = set()
        self.coalescing = settings.coalescing
        self.degraded = degraded or DegradedMode(settings.degraded)
        self.rng = rng or random.Random()
        self.ttl_cap_ms = settings.redis.ttl_cap_s * 1000
        # One load from the store per key in flight (and one refresh); in degraded mode, also one
        # read of the primary per key.
        self.loads: SingleFlight[_Loaded] = SingleFlight(
            "store", max_waiters=settings.coalescing.max_waiters
        )
        self.reads: SingleFlight[Copy] = SingleFlight(
            "read", max_waiters=settings.coalescing.max_waiters
        )
        self._store_latency_s = 0.002  # moving average, for early refresh
        status = telemetry.FALLBACK_ATTEMPTS
        self._count = {
            name: status.labels(status=name)
            for name in (
                "primary_hit", "primary_miss", "primary_failover", "replica_hit", "local_hit",
                "secondary_fallback", "error",
            )
        }  # fmt: skip

    def ref(self, namespace: str, key: str) -> KeyRef:
        return KeyRef(namespace, key, redis_key(self._prefix, namespace, key))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, ref: KeyRef, policy: ReadPolicy | None = None) -> ReadResult:
        """The entry for ``ref`` from the fastest tier that can answer within ``policy``.

        Raises ``KeyNotFoundError`` when the store says absent, ``NotCachedError`` for
        only-if-cached with nothing cached, and ``StoreError`` when nothing else could answer.
        """
        policy = policy or self.default_policy
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.read_deadline_s
        attempt = _Attempt(floor=self.versions.newest(ref.namespace, ref.key) or 0)
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
                self._count["primary_failover"].inc()
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
                        self._count["primary_hit"].inc()
                        telemetry.tier_result("primary", "hit")
                        self._keep_local(ref, record)
                        self._maybe_refresh_early(ref, record)
                        return ReadResult(record, "primary")
                elif isinstance(record, Entry):
                    telemetry.tier_result("primary", "stale")
                elif isinstance(record, Tombstone):
                    attempt.floor = max(attempt.floor, record.seq)
                    if self.local is not None:
                        self.local.invalidate(ref.namespace, ref.key, record.seq)
                self._count["primary_miss"].inc()
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

    def _shed(self, exc: NodeBusyError) -> OverloadedError:
        telemetry.SHED.labels(reason="node_queue").inc()
        return OverloadedError(f"shed: {exc}")

    async def _primary_read(self, ref: KeyRef, deadline: float) -> Copy:
        """The primary's copy; in degraded mode, concurrent reads of a key share one."""
        if not self.degraded.active:
            return await self._primary_get(ref, deadline)
        try:
            return await self.reads.do(
                ref.rkey, functools.partial(self._primary_get, ref, deadline), deadline=deadline
            )
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
        for attempt in range(retries + 1):
            try:
                return await self.primary.get(ref, deadline=deadline)
            except RedirectLoopError:
                pause = self.rng.uniform(
                    0, min(self.settings.retry_cap_s, self.settings.retry_base_s * 2**attempt)
                )
                if attempt >= retries or loop.time() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
        raise RedirectLoopError("retries exhausted", route="primary")  # not reached

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
        tiers: list[CacheTier] = []
        if not fresh_only and self.replica is not None:
            tiers.append(self.replica)
        if self.local is not None:
            tiers.append(self.local)
        allowance = 0.0 if fresh_only else policy.max_stale_s
        loop = asyncio.get_running_loop()
        for tier in tiers:
            try:
                tier_deadline = min(deadline, loop.time() + self.replica_timeout_s)
                if tracing.recording():
                    copy = await self._traced_tier_get(tier, ref, tier_deadline)
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
                self._count[f"{tier.name}_hit"].inc()
                telemetry.tier_result(tier.name, "hit")
                if fresh_only and self.versions.newest(ref.namespace, ref.key) == record.seq:
                    # The primary answered but had lost it; this copy is known to be the newest
                    # version (its own announcement is remembered): put it back. Otherwise it is
                    # served (nothing newer reached this process) but does not re-seed Redis.
                    self._spawn(
                        self._cache_put(ref, record, source="fill", deadline=self._cache_deadline())
                    )
                return ReadResult(record, tier.name, stale_s=staleness)
            telemetry.tier_result(tier.name, "too_stale")  # kept for stale-if-error
            attempt.offer(staleness, tier.name, record)
        return None

    @staticmethod
    async def _traced_tier_get(tier: CacheTier, ref: KeyRef, deadline: float) -> Copy:
        tracing.extend_fallback_path(tier.name)
        if tier.name != "local":  # the replica's node calls make their own spans
            return await tier.get(ref, deadline=deadline)
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
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        try:
            # With no copy to fall back on, a caller waits for the load as long as it may run.
            patient = attempt.fallback is None
            peers = attempt.primary_believed  # a peer's "fill" read from there proves nothing
            loaded = await self._shared_load(
                ref, deadline, fill=primary_answered, peers=peers, patient=patient
            )
            if loaded.began < arrived and self._behind(loaded, attempt.floor, policy):
                # The shared load began before this request knew what it knows (a newer write
                # announced, or a tombstone seen; or no-cache, which asks for a read that starts
                # after it): a load that begins now reflects it.
                loaded = await self._shared_load(
                    ref, deadline, fill=primary_answered, peers=peers, patient=patient
                )
        except CoalescingOverflowError:
            telemetry.SHED.labels(reason="waiters").inc()
            fallback = attempt.fallback
            if fallback is not None and fallback[0] <= policy.max_stale_s:
                return ReadResult(fallback[2], fallback[1], stale_s=fallback[0])
            raise
        except (StoreError, TimeoutError):
            self._count["error"].inc()
            telemetry.tier_result("store", "error")
            fallback = attempt.fallback
            if fallback is not None and fallback[0] <= policy.stale_if_error_s:
                staleness, tier, stale_entry = fallback
                return ReadResult(stale_entry, tier, stale_s=staleness, store_failed=True)
            raise StoreUnavailableError("the store did not answer within the deadline") from None
        self._count["secondary_fallback"].inc()
        entry = loaded.entry
        telemetry.tier_result("store", "miss" if entry is None else "hit")
        if entry is None:
            if self.local is not None:
                self.local.drop(ref.namespace, ref.key)
            raise KeyNotFoundError(ref.key)
        if policy.no_cache and not primary_answered and entry.seq >= attempt.floor:
            # The primary was not asked: refresh it without making the caller wait.
            self._spawn(self._cache_put(ref, entry, source="fill", deadline=self._cache_deadline()))
        return ReadResult(
            entry, "store", filled=loaded.filled, revalidated=policy.no_cache,
            collapsed=loaded.from_peer,
        )  # fmt: skip

    async def _shared_load(
        self, ref: KeyRef, deadline: float, *, fill: bool, peers: bool, patient: bool
    ) -> _Loaded:
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

    @staticmethod
    def _behind(loaded: _Loaded, floor: int, policy: ReadPolicy) -> bool:
        if policy.no_cache:
            return True
        if loaded.entry is None:
            return floor > 0
        return loaded.entry.seq < floor

    async def _load(self, ref: KeyRef, deadline: float, *, fill: bool, peers: bool) -> _Loaded:
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
                    ref, ttl_ms=self.coalescing.lock_ttl_ms, deadline=self._cache_deadline(deadline)
                )
            except TierError:
                token = b""  # Redis cannot say: coalesce within this process only
            if token is None:
                peer = await self._await_peer_fill(ref, deadline)
                if peer is not None:
                    return _Loaded(peer, began, filled=False, from_peer=True)
        try:
            read_at = loop.time()
            entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
            self._store_latency_s += 0.2 * (loop.time() - read_at - self._store_latency_s)
            filled = False
            if entry is not None and entry.seq >= (
                self.versions.newest(ref.namespace, ref.key) or 0
            ):
                self._keep_local(ref, entry)
                if fill:
                    result = await self._cache_put(ref, entry, source="fill", deadline=deadline)
                    filled = result == "applied"
            return _Loaded(entry, began, filled=filled)
        finally:
            if token:
                self._spawn(self._unlock(ref, token))

    async def _unlock(self, ref: KeyRef, token: bytes) -> None:
        with contextlib.suppress(TierError):  # else it expires by itself within lock_ttl_ms
            await self.primary.unlock(ref, token, deadline=self._cache_deadline())

    async def _await_peer_fill(self, ref: KeyRef, deadline: float) -> Entry | None:
        """Another process holds the key's load lock: wait for its fill while time allows."""
        loop = asyncio.get_running_loop()
        floor = self.versions.newest(ref.namespace, ref.key) or 0
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
                    ref, deadline=self._cache_deadline(deadline)
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

    def _maybe_refresh_early(self, ref: KeyRef, entry: Entry) -> None:
        """Probabilistic early expiration (XFetch, Vattani et al., VLDB 2015).

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
        ahead_ms = life_end - now_ms()
        if ahead_ms > XFETCH_HORIZON * delta_ms * beta:
            return  # the chance is below e^-XFETCH_HORIZON: skip the random draw
        if -delta_ms * beta * math.log(1.0 - self.rng.random()) < ahead_ms:
            return
        slot = (ref.namespace, ref.key)
        if self.loads.in_flight(slot):
            return
        deadline = asyncio.get_running_loop().time() + self.read_deadline_s
        self._spawn(
            self.loads.do(slot, functools.partial(self._refresh, ref, deadline), deadline=deadline)
        )

    async def _refresh(self, ref: KeyRef, deadline: float) -> _Loaded:
        telemetry.CACHE_UPDATES.labels(source="early_refresh", result="started").inc()
        began = asyncio.get_running_loop().time()
        entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
        if entry is None or entry.seq < (self.versions.newest(ref.namespace, ref.key) or 0):
            return _Loaded(entry, began, filled=False)
        self._keep_local(ref, entry)
        try:
            written = await self.primary.put(ref, entry, deadline=deadline, refresh=True)
        except TierError:
            written = False
        return _Loaded(entry, began, filled=written)

    def _keep_local(self, ref: KeyRef, entry: Entry) -> None:
        """Keep a copy in the local tier unless a newer seq of the key was announced by now.

        Checked at the moment of insertion, not when the copy was read: an announcement that
        arrived while the copy was on its way (a write's commit reply, a Redis round trip) has
        already found nothing to drop, so the copy must not land after it.
        """
        if self.local is not None and entry.seq >= (
            self.versions.newest(ref.namespace, ref.key) or 0
        ):
            self.local.store(ref, entry)

    # -- writes ------------------------------------------------------------------------------

    async def put(
        self,
        ref: KeyRef,
        value: bytes,
        *,
        content_type: str,
        ttl_s: int | None,
        if_match: list[int] | None = None,
        if_exists: bool = False,
        if_none_match: bool = False,
    ) -> PutResult:
        """Make the value durable, then update the caches (repaired later if that fails)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        if tracing.recording():
            tracing.KEY_ATTRIBUTE.set(tracing.key_attribute(ref.key))
        result = await self.store.put(
            ref.namespace, ref.key, value,
            content_type=content_type,
            ttl_ms=None if ttl_s is None else ttl_s * 1000,
            if_match=if_match, if_exists=if_exists, if_none_match=if_none_match,
            deadline=deadline,
        )  # fmt: skip
        entry = Entry(
            value=value,
            content_type=content_type,
            version=result.version,
            seq=result.seq,
            stored_at_ms=result.stored_at_ms,
            expires_at_ms=result.expires_at_ms,
        )
        self.versions.note(ref.namespace, ref.key, result.seq)
        self._keep_local(ref, entry)
        await self._apply(ref, entry, result.outbox_id)
        return result

    async def delete(
        self, ref: KeyRef, *, if_match: list[int] | None = None, if_exists: bool = False
    ) -> RemoveResult:
        """Delete durably, then leave a tombstone in the caches. ``KeyNotFoundError`` if absent
        (``StoreConflictError`` with ``if_exists``, which is ``If-Match: *``)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.delete(
            ref.namespace, ref.key, if_match=if_match, deadline=deadline
        )
        if result is None:
            if if_exists:
                raise StoreConflictError("If-Match: * and no current entry", current_version=None)
            raise KeyNotFoundError(ref.key)
        await self._remove(ref, result)
        return result

    async def invalidate(self, ref: KeyRef) -> RemoveResult:
        """Drop the key from every cache tier and keep it in the store (404 if absent)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.invalidate(ref.namespace, ref.key, deadline=deadline)
        if result is None:
            raise KeyNotFoundError(ref.key)
        await self._remove(ref, result)
        return result

    async def _remove(self, ref: KeyRef, result: RemoveResult) -> None:
        self.versions.note(ref.namespace, ref.key, result.seq)
        if self.local is not None:
            self.local.invalidate(ref.namespace, ref.key, result.seq)
        await self._apply(ref, Tombstone(result.seq), result.outbox_id)

    async def _apply(self, ref: KeyRef, record: Entry | Tombstone, outbox_id: int) -> None:
        if (
            await self._cache_put(ref, record, source="write", deadline=self._cache_deadline())
            != "failed"
        ):
            self.outbox.done(outbox_id)

    def _cache_deadline(self, limit: float | None = None) -> float:
        deadline = asyncio.get_running_loop().time() + self.cache_write_timeout_s
        return deadline if limit is None else min(deadline, limit)

    async def _cache_put(
        self, ref: KeyRef, record: Entry | Tombstone, *, source: str, deadline: float
    ) -> str:
        """Versioned Redis update: ``applied``, ``skipped`` (Redis is as new), or ``failed``."""
        try:
            written = await self.primary.put(ref, record, deadline=deadline)
        except TierError as exc:
            log.info("cache update (%s) did not reach Redis: %s", source, exc)
            result = "failed"
        else:
            result = "applied" if written else "skipped"
        telemetry.CACHE_UPDATES.labels(source=source, result=result).inc()
        return result

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[Any]) -> None:
        """A background fill or refresh ended; its failure (the store or Redis down) has been
        counted where it happened, and is retrieved here, not left to asyncio's warnings."""
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("background cache work failed: %s", exc)

    async def drain(self) -> None:
        """Wait for background fills (at shutdown, and in tests)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.cache_write_timeout_s * 2)


def _expired_by_s(entry: Entry) -> float:
    if entry.expires_at_ms is None:
        return 0.0
    return max(0.0, (now_ms() - entry.expires_at_ms) / 1000)
