"""The cache half of every write: the outbox rows recorded with it, and their repair.

A write's own request applies its cache update right after commit and hands the row id to
``Outbox.done``; ids are deleted in batches. A row whose update did not reach Redis (Redis down,
deadline spent, process died) is picked up by the repairer once it is older than ``grace_s``:
the repairer reads the key's *current* state from the store and writes that to Redis with the
versioned set, so replaying rows in any order, or twice, cannot move a key backwards.
Claims use ``FOR UPDATE SKIP LOCKED`` and push ``next_attempt_at`` back with exponential backoff,
so several gateway processes share the work without doing it twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from app import tasks, telemetry
from app.codec import Tombstone, redis_key
from app.errors import StoreError, TierError
from app.feed import VersionMap
from app.settings import OutboxSettings
from app.store import OutboxRow, Store
from app.tiers.base import KeyRef, WritableTier

log = logging.getLogger(__name__)

STORE_CALL_TIMEOUT_S = 2.0
# Maintenance (expired entries, applied rows past retain_s) every this many rounds, and on every
# round while the last one left a backlog; each deletes batch after batch until none is left or
# its time budget is spent, so it keeps up with any write rate the store accepts.
MAINTAIN_EVERY_N_ROUNDS = 20
MAINTAIN_BATCH = 5000
MAINTAIN_BUDGET_S = 2.0
PENDING_LIMIT = 100_000
NOTE_CHUNK = 2000  # keys noted between two turns of the event loop


class Outbox:
    def __init__(
        self,
        store: Store,
        cache: WritableTier,
        settings: OutboxSettings,
        *,
        key_prefix: str,
        versions: VersionMap | None = None,
    ) -> None:
        self.store = store
        self.versions = versions
        self.cache = cache
        self.settings = settings
        self.key_prefix = key_prefix
        self._done: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def done(self, outbox_id: int) -> None:
        """The row's update reached Redis; it is marked applied in the next batch."""
        self._done.append(outbox_id)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None
        with contextlib.suppress(StoreError):
            await self.flush_done()

    async def _run(self) -> None:
        rounds = 0
        backlog = False
        while True:
            try:
                await self.flush_done()
                await self.note_pending()
                await self.repair_once()
                depth, oldest_s = await self.store.outbox_stats(deadline=self._deadline())
                telemetry.OUTBOX_DEPTH.set(depth)
                telemetry.OUTBOX_OLDEST_AGE.set(oldest_s)
                rounds += 1
                if backlog or rounds % MAINTAIN_EVERY_N_ROUNDS == 0:
                    backlog = not await self.maintain()
            except StoreError as exc:
                log.warning("outbox round failed: %s", exc)
            except Exception:
                log.exception("outbox round failed")
            await asyncio.sleep(self.settings.interval_s)

    async def maintain(self) -> bool:
        """Delete expired entries, then outbox rows applied more than ``retain_s`` ago, in
        batches until none is left (True) or ``MAINTAIN_BUDGET_S`` is spent (False)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + MAINTAIN_BUDGET_S
        retain_s = self.settings.retain_s
        for delete in (
            functools.partial(self.store.purge_expired),
            functools.partial(self.store.outbox_prune, retain_s=retain_s),
        ):
            while await delete(limit=MAINTAIN_BATCH, deadline=self._deadline()) >= MAINTAIN_BATCH:
                if loop.time() >= until:
                    return False
        return True

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + STORE_CALL_TIMEOUT_S

    async def flush_done(self) -> None:
        ids, self._done = self._done, []
        try:
            await self.store.outbox_done(ids, deadline=self._deadline())
        except StoreError:
            self._done.extend(ids)  # the store is down; they are retried, and repair is idempotent
            raise

    async def repair_once(self, *, grace_s: float | None = None) -> int:
        """Claim due rows and bring Redis up to the store's state for their keys; rows applied."""
        rows = await self.store.outbox_claim(
            limit=self.settings.batch_size,
            grace_s=self.settings.grace_s if grace_s is None else grace_s,
            max_backoff_s=self.settings.max_backoff_s,
            deadline=self._deadline(),
        )
        by_key: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            by_key.setdefault((row.namespace, row.key), []).append(row)
        applied: list[int] = []
        for (namespace, key), group in by_key.items():
            ids = [row.id for row in group]
            try:
                await self.repair_key(namespace, key, max(row.seq for row in group))
            except (TierError, StoreError) as exc:
                telemetry.OUTBOX_REPAIRS.labels(result="failed").inc(len(ids))
                with contextlib.suppress(StoreError):
                    await self.store.outbox_failed(ids, str(exc), deadline=self._deadline())
                continue
            telemetry.OUTBOX_REPAIRS.labels(result="applied").inc(len(ids))
            applied.extend(ids)
        await self.store.outbox_done(applied, deadline=self._deadline())
        return len(applied)

    async def note_pending(self) -> None:
        """Tell this process's version map which keys Redis may still hold an old copy of.

        Every process does this, not only the one that repairs: until a row is applied, no
        process serves Redis's older copy of its key (one that restarted, or forgot the seq).
        """
        if self.versions is None:
            return
        note = self.versions.note

        def note_rows(rows: list[tuple[str, str, int]]) -> None:
            for namespace, key, seq in rows:
                note(namespace, key, seq)

        # Chunk by chunk, with the loop free in between: a backlog must not stall requests.
        await self.store.outbox_pending(
            limit=PENDING_LIMIT, chunk=NOTE_CHUNK, on_rows=note_rows, deadline=self._deadline()
        )

    async def repair_key(self, namespace: str, key: str, seq: int) -> None:
        """Bring Redis to the store's current state for one key (idempotent, order-free)."""
        ref = KeyRef(namespace, key, redis_key(self.key_prefix, namespace, key))
        entry = await self.store.get(namespace, key, deadline=self._deadline(), background=True)
        record = entry if entry is not None else Tombstone(seq)
        written = await self.cache.put(ref, record, deadline=self._deadline())
        telemetry.CACHE_UPDATES.labels(
            source="repair", result="applied" if written else "skipped"
        ).inc()
