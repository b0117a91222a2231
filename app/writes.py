"""The write path, and the versioned cache updates it shares with reads and loads.

A write goes to the store first (one transaction with its outbox row), then to this process's
version map and local tier, then to Redis as a versioned update. An update that cannot reach
Redis is repaired later from the outbox, so the answer depends only on the commit: the outbox row
is marked done here only when Redis took the update (or already held something as new).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal, Protocol

from app import telemetry, tracing
from app.codec import Entry, Tombstone
from app.errors import KeyNotFoundError, StoreConflictError, TierError
from app.feed import VersionMap
from app.source import PutResult, RemoveResult, Source, TouchResult
from app.tiers.base import KeyRef, LockingTier
from app.tiers.local import LocalTier

log = logging.getLogger(__name__)

# How a versioned Redis update ended: written, not needed (Redis holds as new), or not done.
CacheUpdate = Literal["applied", "skipped", "failed"]


class OutboxSink(Protocol):
    def done(self, outbox_id: int) -> None: ...


class CacheWriter:
    """Copies into the local tier and versioned updates of Redis, for fills and writes alike.

    Neither ever puts back a copy older than what this process has heard of: the local tier is
    checked against the version map at the moment of insertion, Redis by its seq (``SET_IF_NEWER``).
    """

    def __init__(
        self,
        *,
        primary: LockingTier,
        versions: VersionMap,
        local: LocalTier | None,
        timeout_s: float,
    ) -> None:
        self.primary = primary
        self.versions = versions
        self.local = local
        self.timeout_s = timeout_s

    def keep_local(self, ref: KeyRef, entry: Entry) -> None:
        """Keep a copy in the local tier unless a newer seq of the key was announced by now.

        Checked at the moment of insertion, not when the copy was read: an announcement that
        arrived while the copy was on its way (a write's commit reply, a Redis round trip) has
        already found nothing to drop, so the copy must not land after it.
        """
        if self.local is not None and entry.seq >= (
            self.versions.newest(ref.namespace, ref.key) or 0
        ):
            self.local.keep(ref, entry)

    def deadline(self, limit: float | None = None) -> float:
        """When a cache update started now must end (no later than ``limit``)."""
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        return deadline if limit is None else min(deadline, limit)

    async def put(
        self, ref: KeyRef, record: Entry | Tombstone, *, source: str, deadline: float
    ) -> CacheUpdate:
        """The versioned Redis update; a Redis failure is counted and answered, never raised."""
        result: CacheUpdate
        try:
            written = await self.primary.put(ref, record, deadline=deadline)
        except TierError as exc:
            log.info("cache update (%s) did not reach Redis: %s", source, exc)
            result = "failed"
        else:
            result = "applied" if written else "skipped"
        telemetry.CACHE_UPDATES.labels(source=source, result=result).inc()
        return result


class Announced(Protocol):
    """Relay mode: wait until the feed brought this process its own write (``app/feed.py``)."""

    async def __call__(self, namespace: str, key: str, seq: int, *, deadline: float) -> None: ...


class Writes:
    """PUT, DELETE, invalidate and touch of a key: durable first, then the caches; in relay
    mode, also announced to the fleet before the answer (``announced``, set by the gateway)."""

    announced: Announced | None = None

    def __init__(
        self,
        *,
        store: Source,
        caches: CacheWriter,
        outbox: OutboxSink,
        write_deadline_s: float,
    ) -> None:
        self.store = store
        self.caches = caches
        self.outbox = outbox
        self.write_deadline_s = write_deadline_s

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
        self.caches.versions.note(ref.namespace, ref.key, result.seq)
        self.caches.keep_local(ref, entry)
        await self._apply(ref, entry, result.outbox_id)
        if self.announced is not None:
            await self.announced(ref.namespace, ref.key, result.seq, deadline=deadline)
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
        await self._remove(ref, result, deadline=deadline)
        return result

    async def invalidate(self, ref: KeyRef) -> RemoveResult:
        """Drop the key from every cache tier and keep it in the store (404 if absent)."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.invalidate(ref.namespace, ref.key, deadline=deadline)
        if result is None:
            raise KeyNotFoundError(ref.key)
        await self._remove(ref, result, deadline=deadline)
        return result

    async def touch(
        self,
        ref: KeyRef,
        *,
        ttl_s: int,
        if_match: list[int] | None = None,
        if_exists: bool = False,
    ) -> TouchResult:
        """A new TTL for a live entry, its value not sent again; ``KeyNotFoundError`` if absent
        (``StoreConflictError`` with ``if_match`` or ``if_exists``). The version stays; the new
        cache seq retires every cached copy, which carries the old expiry, as an invalidate
        does: the next read loads the entry, and its new expiry, from the store."""
        deadline = asyncio.get_running_loop().time() + self.write_deadline_s
        result = await self.store.touch(
            ref.namespace, ref.key, ttl_ms=ttl_s * 1000, if_match=if_match, if_exists=if_exists,
            deadline=deadline,
        )  # fmt: skip
        if result is None:
            raise KeyNotFoundError(ref.key)
        await self._remove(
            ref, RemoveResult(result.version, result.seq, result.outbox_id), deadline=deadline
        )
        return result

    async def _remove(self, ref: KeyRef, result: RemoveResult, *, deadline: float) -> None:
        self.caches.versions.note(ref.namespace, ref.key, result.seq)
        if self.caches.local is not None:
            self.caches.local.invalidate(ref.namespace, ref.key, result.seq)
        await self._apply(ref, Tombstone(result.seq), result.outbox_id)
        if self.announced is not None:
            await self.announced(ref.namespace, ref.key, result.seq, deadline=deadline)

    async def _apply(self, ref: KeyRef, record: Entry | Tombstone, outbox_id: int) -> None:
        caches = self.caches
        if await caches.put(ref, record, source="write", deadline=caches.deadline()) != "failed":
            self.outbox.done(outbox_id)
