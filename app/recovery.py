"""Redis that returns with old data is never believed: markers, and the repair of suspect primaries.

**Markers.** Every round, each believed primary gets a *marker* in a slot of its own: the run_id
of the Redis process that holds it (read by the script that writes it), the store's time, and the
creation time of the oldest outbox row whose cache update has not reached Redis yet. The marker
travels with the node's data: into its RDB or AOF, to its replicas. So data that comes back
(restarted from a snapshot, a replica promoted while behind) brings the marker it had, which says
how current it is: it holds every cache update of the writes committed before
``min(marked_at, oldest_pending_at) - TXN_MARGIN_S`` (a write's own request applies its update
before it answers; the repairer applies the pending ones; a transaction lasts less than the
margin). A marker that names another process than the one holding it proves, by itself, that
the node came back with old data: the primary is suspected even if no watcher saw it restart.

**Repair**, once per suspicion (``Provenance`` says which primaries are suspect):

* with a marker whose time is inside the outbox's retention: replay the outbox rows created
  since that time into the node (each key brought to the store's current state, idempotent);
* without a marker, or with one older than the outbox can vouch for (a replica promoted after
  falling further behind than ``outbox.retain_s``, an old snapshot), or with more rows than
  ``REPAIR_LIMIT``: empty the node of the gateway's keys (tombstones stay), a step per round.

Then the marker is rewritten and the primary believed again. Until then the router does not
serve its copies as fresh: it reads the store, and its fills repair the keys it reads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app import tasks, telemetry
from app.cluster.provenance import Suspicion
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Address, Shard, format_address, key_slot
from app.codec import redis_key
from app.errors import StoreError, TierError, TierTimeoutError
from app.outbox import Outbox
from app.settings import OutboxSettings
from app.store import Store
from app.tiers.primary import PrimaryTier

log = logging.getLogger(__name__)

TXN_MARGIN_S = 10.0  # longer than any write transaction (writes have a 2 s deadline by default)
RETENTION_MARGIN_S = 5.0  # rows this close to the end of their retention may be pruned meanwhile
REPAIR_LIMIT = 100_000
EMPTY_BATCH = 1000
STEP_BUDGET_S = 2.0
CALL_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Marker:
    run_id: str
    marked_at: float
    pending_at: float

    @classmethod
    def parse(cls, raw: bytes | None) -> Marker | None:
        if raw is None:
            return None
        try:
            run_id, marked_at, pending_at = raw.decode().split(" ")
            return cls(run_id, float(marked_at), float(pending_at))
        except ValueError:
            return None  # not one of ours: as good as none

    @property
    def current_until(self) -> float:
        """The node's data holds every cache update of the writes committed before this."""
        return min(self.marked_at, self.pending_at) - TXN_MARGIN_S


def replay_from(marker: Marker | None, *, now: float, retain_s: float) -> float | None:
    """Where a replay must start for data carrying ``marker``; None: the outbox cannot vouch
    for it (no marker, or rows since then may be gone): the node must be emptied."""
    if marker is None:
        return None
    since = marker.current_until
    if since < now - retain_s + RETENTION_MARGIN_S:
        return None
    return since


@dataclass
class _Emptying:
    suspicion: Suspicion
    cursor: int = 0
    removed: int = 0


@dataclass
class Recovery:
    store: Store
    slots: SlotRouter
    primary: PrimaryTier
    outbox: Outbox
    settings: OutboxSettings
    _emptying: dict[Address, _Emptying] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except StoreError as exc:
                log.info("recovery round: %s", exc)
            except Exception:
                log.exception("recovery round failed")
            await asyncio.sleep(self.settings.interval_s)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + CALL_TIMEOUT_S

    async def round(self) -> None:
        """Repair what is suspect, then mark every believed primary."""
        now, pending_at = await self.store.mark_times(deadline=self._deadline())
        for address, suspicion in self.slots.provenance.suspects().items():
            shard = self._shard_of(address)
            if shard is None:  # no longer a primary: nothing of it is read
                self.slots.provenance.repaired(address, suspicion)
                continue
            try:
                await self._repair(address, shard, suspicion, now=now)
            except TierError as exc:
                log.info("repair of %s: %s (next round)", format_address(address), exc)
        await self.mark(now, pending_at)

    async def mark(self, now: float, pending_at: float) -> None:
        value = f"{now:.3f} {pending_at:.3f}"
        for shard in self.slots.map.shards():
            address = shard.primary
            if not self.slots.provenance.trusted(address):
                continue  # a suspect's marker is what its repair reads: left as it came back
            try:
                found = await self.primary.mark(
                    address, shard.ranges[0][0], value, force=False, deadline=self._deadline()
                )
            except TierError as exc:
                if not isinstance(exc, TierTimeoutError):
                    self.slots.provenance.lost_contact(address)
                continue
            if found is not None:
                self.slots.provenance.suspect(address, "its marker is an earlier process's")

    def _shard_of(self, address: Address) -> Shard | None:
        return next((s for s in self.slots.map.shards() if s.primary == address), None)

    async def _repair(
        self, address: Address, shard: Shard, suspicion: Suspicion, *, now: float
    ) -> None:
        emptying = self._emptying.get(address)
        if emptying is not None and emptying.suspicion != suspicion:
            emptying = None  # a newer suspicion: start over
        if emptying is None:
            slot = shard.ranges[0][0]
            marker = Marker.parse(
                await self.primary.marker(address, slot, deadline=self._deadline())
            )
            since = replay_from(marker, now=now, retain_s=self.settings.retain_s)
            if since is not None and await self._replay(address, since):
                await self._done(address, shard, suspicion, now=now, how="replayed")
                return
            emptying = self._emptying[address] = _Emptying(suspicion)
            log.warning(
                "primary %s: its data is older than the outbox can vouch for (%s): emptying it "
                "of the gateway's keys", format_address(address),
                "no marker" if marker is None else f"current until {marker.current_until:.0f}",
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        until = loop.time() + STEP_BUDGET_S
        while loop.time() < until:
            emptying.cursor, removed = await self.primary.empty(
                address, emptying.cursor, count=EMPTY_BATCH, deadline=self._deadline()
            )
            emptying.removed += removed
            telemetry.PRIMARY_REPAIR_KEYS.labels(how="removed").inc(removed)
            if emptying.cursor == 0:
                del self._emptying[address]
                await self._done(address, shard, suspicion, now=now, how="emptied")
                return

    async def _replay(self, address: Address, since: float) -> bool:
        """Replay into ``address`` the newest row of every key of its slots written since
        ``since``; False when there are too many to say (the node is emptied instead)."""
        rows = await self.store.outbox_since(since, limit=REPAIR_LIMIT, deadline=self._deadline())
        if len(rows) >= REPAIR_LIMIT:
            return False
        prefix = self.primary.key_prefix
        replayed = 0
        for row in rows:
            shard = self.slots.map.slots[key_slot(redis_key(prefix, row.namespace, row.key))]
            if shard is None or shard.primary != address:
                continue
            await self.outbox.repair_key(row.namespace, row.key, row.seq)
            replayed += 1
        telemetry.PRIMARY_REPAIR_KEYS.labels(how="replayed").inc(replayed)
        log.warning(
            "primary %s: replayed %d writes since its marker", format_address(address), replayed
        )
        return True

    async def _done(
        self, address: Address, shard: Shard, suspicion: Suspicion, *, now: float, how: str
    ) -> None:
        _, pending_at = await self.store.mark_times(deadline=self._deadline())
        await self.primary.mark(
            address, shard.ranges[0][0], f"{now:.3f} {pending_at:.3f}", force=True,
            deadline=self._deadline(),
        )  # fmt: skip
        self.slots.provenance.repaired(address, suspicion)
        telemetry.PRIMARY_REPAIRS.labels(how=how).inc()
        log.warning("primary %s repaired (%s): believed again", format_address(address), how)
