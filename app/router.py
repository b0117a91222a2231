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
import logging
import random
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from app import telemetry
from app.codec import Entry, Tombstone, redis_key
from app.errors import (
    KeyNotFoundError,
    NotCachedError,
    RedirectLoopError,
    StoreError,
    TierError,
)
from app.feed import VersionMap
from app.settings import Settings
from app.store import RemoveResult, Store, WriteResult, now_ms
from app.tiers.base import CacheTier, Copy, KeyRef, WritableTier
from app.tiers.local import LocalTier

log = logging.getLogger(__name__)


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


@dataclass(slots=True)
class _Attempt:
    """What one read learned on its way down the tiers."""

    floor: int  # answers with an older seq are not served
    fallback: tuple[float, str, Entry] | None = None  # least stale copy, for stale-if-error

    def offer(self, staleness: float, tier: str, entry: Entry) -> None:
        if self.fallback is None or staleness < self.fallback[0]:
            self.fallback = (staleness, tier, entry)


class FallbackRouter:
    def __init__(
        self,
        *,
        settings: Settings,
        primary: WritableTier,
        store: Store,
        outbox: OutboxSink,
        versions: VersionMap,
        replica: CacheTier | None = None,
        local: LocalTier | None = None,
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
        if not policy.no_cache:
            try:
                copy = await self._primary_get(ref, min(deadline, started + self.primary_timeout_s))
            except TierError as exc:
                log.debug("primary tier failed: %s", exc)
                self._count["primary_failover"].inc()
            else:
                primary_answered = True
                record = copy.record
                if isinstance(record, Entry) and record.seq >= attempt.floor:
                    if not record.expired(now_ms()):
                        self._count["primary_hit"].inc()
                        self._keep_local(ref, record, attempt.floor)
                        return ReadResult(record, "primary")
                elif isinstance(record, Entry):
                    telemetry.TIER_RESULTS.labels(tier="primary", result="stale").inc()
                elif isinstance(record, Tombstone):
                    attempt.floor = max(attempt.floor, record.seq)
                self._count["primary_miss"].inc()
            cached = await self._from_fallback_tiers(
                ref, attempt, policy, deadline, fresh_only=primary_answered
            )
            if cached is not None:
                return cached
            if policy.only_if_cached:
                raise NotCachedError("no cache tier holds this key within policy")
        try:
            return await self._from_store(
                ref, attempt, deadline=deadline, primary_answered=primary_answered, policy=policy
            )
        finally:
            telemetry.FALLBACK_LATENCY.observe(loop.time() - started)

    async def _primary_get(self, ref: KeyRef, deadline: float) -> Copy:
        """The primary's copy; redirect loops (a migrating slot) are retried with full jitter."""
        loop = asyncio.get_running_loop()
        for attempt in range(self.retries + 1):
            try:
                return await self.primary.get(ref, deadline=deadline)
            except RedirectLoopError:
                pause = random.uniform(
                    0, min(self.settings.retry_cap_s, self.settings.retry_base_s * 2**attempt)
                )
                if attempt == self.retries or loop.time() + pause >= deadline:
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
                copy = await tier.get(
                    ref, deadline=min(deadline, loop.time() + self.replica_timeout_s)
                )
            except TierError as exc:
                log.debug("%s tier failed: %s", tier.name, exc)
                telemetry.TIER_RESULTS.labels(tier=tier.name, result="error").inc()
                continue
            record = copy.record
            if isinstance(record, Tombstone):
                attempt.floor = max(attempt.floor, record.seq)
                continue
            if record is None:
                continue
            if record.seq < attempt.floor:
                telemetry.TIER_RESULTS.labels(tier=tier.name, result="stale").inc()
                continue
            staleness = max(copy.behind_s, _expired_by_s(record))
            if staleness <= allowance:
                self._count[f"{tier.name}_hit"].inc()
                if fresh_only:  # the primary answered but had lost it: put it back
                    self._spawn(
                        self._cache_put(ref, record, source="fill", deadline=self._cache_deadline())
                    )
                return ReadResult(record, tier.name, stale_s=staleness)
            attempt.offer(staleness, tier.name, record)
        return None

    async def _from_store(
        self,
        ref: KeyRef,
        attempt: _Attempt,
        *,
        deadline: float,
        primary_answered: bool,
        policy: ReadPolicy,
    ) -> ReadResult:
        try:
            entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
        except StoreError:
            self._count["error"].inc()
            fallback = attempt.fallback
            if fallback is not None and fallback[0] <= policy.stale_if_error_s:
                staleness, tier, stale_entry = fallback
                return ReadResult(stale_entry, tier, stale_s=staleness, store_failed=True)
            raise
        self._count["secondary_fallback"].inc()
        if entry is None:
            raise KeyNotFoundError(ref.key)
        if entry.seq < attempt.floor:
            # A write committed while this read was under way: answer, but fill nothing.
            return ReadResult(entry, "store", revalidated=policy.no_cache)
        self._keep_local(ref, entry, attempt.floor)
        filled = False
        if primary_answered:
            filled = (
                await self._cache_put(ref, entry, source="fill", deadline=deadline) == "applied"
            )
        elif policy.no_cache:  # the primary was not asked; refresh it without waiting
            self._spawn(self._cache_put(ref, entry, source="fill", deadline=self._cache_deadline()))
        # After a primary failure nothing is sent to it: the outbox and later reads fill it.
        return ReadResult(entry, "store", filled=filled, revalidated=policy.no_cache)

    def _keep_local(self, ref: KeyRef, entry: Entry, floor: int) -> None:
        if self.local is not None and entry.seq >= floor:
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
    ) -> WriteResult:
        """Make the value durable, then update the caches (repaired later if that fails)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
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
        self._keep_local(ref, entry, result.seq)
        await self._apply(ref, entry, result.outbox_id)
        return result

    async def delete(self, ref: KeyRef, *, if_match: list[int] | None = None) -> RemoveResult:
        """Delete durably, then leave a tombstone in the caches. ``KeyNotFoundError`` if absent."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.delete(
            ref.namespace, ref.key, if_match=if_match, deadline=deadline
        )
        if result is None:
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

    def _cache_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.cache_write_timeout_s

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
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background fills (at shutdown, and in tests)."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.cache_write_timeout_s * 2)


def _expired_by_s(entry: Entry) -> float:
    if entry.expires_at_ms is None:
        return 0.0
    return max(0.0, (now_ms() - entry.expires_at_ms) / 1000)
