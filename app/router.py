"""The fallback router: which tier answers, under one deadline per request.

Reads (DESIGN.md section 3): the slot's primary; on a miss the store, then a versioned fill of
Redis; on a primary failure the tiers behind it, then the store. A miss in a cache is never taken
for a miss in the store: ``KeyNotFoundError`` comes only from the store.

Writes (DESIGN.md section 2): the store first (one transaction with its outbox row), then the
versioned cache update; a cache that cannot be reached is repaired later from the outbox, so the
answer depends only on the commit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app import telemetry
from app.codec import Entry, Tombstone, redis_key
from app.errors import KeyNotFoundError, TierError
from app.outbox import Outbox
from app.settings import Settings
from app.store import RemoveResult, Store, WriteResult, now_ms
from app.tiers.base import CacheTier, KeyRef

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReadResult:
    """An answer and where it came from: ``tier`` is primary, replica, local or store."""

    entry: Entry
    tier: str
    filled: bool = False


class FallbackRouter:
    def __init__(
        self, *, settings: Settings, primary: CacheTier, store: Store, outbox: Outbox
    ) -> None:
        self.settings = settings
        self.primary = primary
        self.store = store
        self.outbox = outbox
        self.read_deadline_s = settings.read_deadline_ms / 1000
        self.write_deadline_s = settings.write_deadline_ms / 1000
        self.cache_write_timeout_s = settings.redis.socket_timeout_s
        self._prefix = settings.redis.key_prefix
        status = telemetry.FALLBACK_ATTEMPTS
        self._primary_hit = status.labels(status="primary_hit")
        self._primary_miss = status.labels(status="primary_miss")
        self._primary_failover = status.labels(status="primary_failover")
        self._secondary_fallback = status.labels(status="secondary_fallback")
        self._error = status.labels(status="error")

    def ref(self, namespace: str, key: str) -> KeyRef:
        return KeyRef(namespace, key, redis_key(self._prefix, namespace, key))

    # -- reads -------------------------------------------------------------------------------

    async def get(self, ref: KeyRef) -> ReadResult:
        """The entry for ``ref`` from the fastest tier that can answer correctly.

        Raises ``KeyNotFoundError`` when the store says absent, ``StoreUnavailableError`` when
        no cache had it and the store cannot answer.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.read_deadline_s
        primary_reachable = True
        try:
            record = await self.primary.get(ref, deadline=deadline)
        except TierError as exc:
            log.debug("primary tier failed: %s", exc)
            self._primary_failover.inc()
            primary_reachable = False
        else:
            if isinstance(record, Entry) and not record.expired(now_ms()):
                self._primary_hit.inc()
                return ReadResult(record, "primary")
            self._primary_miss.inc()
        try:
            return await self._from_store(ref, deadline=deadline, fill=primary_reachable)
        except KeyNotFoundError:
            self._secondary_fallback.inc()  # the store answered: the key is absent
            raise
        except Exception:
            self._error.inc()
            raise
        finally:
            telemetry.FALLBACK_LATENCY.observe(loop.time() - started)

    async def _from_store(self, ref: KeyRef, *, deadline: float, fill: bool) -> ReadResult:
        entry = await self.store.get(ref.namespace, ref.key, deadline=deadline)
        if entry is None:
            raise KeyNotFoundError(ref.key)
        self._secondary_fallback.inc()
        filled = (
            fill
            and await self._cache_put(ref, entry, source="fill", deadline=deadline) == "applied"
        )
        return ReadResult(entry, "store", filled=filled)

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
        await self._apply(ref, Tombstone(result.seq), result.outbox_id)
        return result

    async def invalidate(self, ref: KeyRef) -> RemoveResult:
        """Drop the key from every cache tier and keep it in the store (404 if absent)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.invalidate(ref.namespace, ref.key, deadline=deadline)
        if result is None:
            raise KeyNotFoundError(ref.key)
        await self._apply(ref, Tombstone(result.seq), result.outbox_id)
        return result

    async def _apply(self, ref: KeyRef, record: Entry | Tombstone, outbox_id: int) -> None:
        deadline = asyncio.get_running_loop().time() + self.cache_write_timeout_s
        if await self._cache_put(ref, record, source="write", deadline=deadline) != "failed":
            self.outbox.done(outbox_id)

    async def _cache_put(
        self, ref: KeyRef, record: Entry | Tombstone, *, source: str, deadline: float
    ) -> str:
        """Versioned cache update: ``applied``, ``skipped`` (Redis is as new), or ``failed``."""
        try:
            written = await self.primary.put(ref, record, deadline=deadline)
        except TierError as exc:
            log.info("cache update (%s) did not reach Redis: %s", source, exc)
            result = "failed"
        else:
            result = "applied" if written else "skipped"
        telemetry.CACHE_UPDATES.labels(source=source, result=result).inc()
        return result
