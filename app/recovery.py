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

**One repair for the fleet.** Every process suspects the node at about the same time; only the
one holding the node's *repair lease* (a key in the marker's slot on the node itself, renewed
every round, gone with the node) repairs it. The others wait: once the lease records a finished
repair and the node's marker names the Redis process that holds it (written since it came back;
one that names another process means it came back again), they believe the node as well. When
the holder dies, its lease runs out and another process takes the repair over from the start.
``cachegw_primary_repairs_total{how="by_another"}`` counts the repairs a process left to another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

from app import tasks, telemetry
from app.cluster.provenance import Suspicion
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Address, Shard, format_address, key_slot
from app.codec import redis_key
from app.errors import StoreError, TierError, TierTimeoutError
from app.outbox import Outbox
from app.settings import OutboxSettings
from app.store import OutboxRow, Store
from app.tiers.primary import PrimaryTier

log = logging.getLogger(__name__)

# Longer than any write transaction: a write is one statement, and no statement on the gateway's
# connections runs longer than ``store.STATEMENT_TIMEOUT_MS`` (5 s).
TXN_MARGIN_S = 10.0
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
class _Repair:
    """One repair under way, resumed round after round (each round has a time budget)."""

    suspicion: Suspicion
    marker: bytes | None  # the node's marker when the repair began
    rows: list[OutboxRow] | None = None  # to replay; None: the node is being emptied
    leading: bool = False  # this process holds the node's repair lease, the plan is made
    next_row: int = 0
    cursor: int = 0  # SCAN position while emptying
    count: int = 0  # keys replayed or removed so far


@dataclass
class Recovery:
    store: Store
    slots: SlotRouter
    primary: PrimaryTier
    outbox: Outbox
    settings: OutboxSettings
    _repairs: dict[Address, _Repair] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    # Who holds a repair lease: this process, by host and pid (for an operator reading the node).
    lease_token: bytes = field(
        default_factory=lambda: (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}".encode()
        )
    )

    def _lease_ms(self) -> int:
        """Long enough for a few rounds: the holder renews it every round it repairs."""
        return int(3 * (self.settings.interval_s + STEP_BUDGET_S) * 1000)

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
        """Repair what is suspect (a step each), then mark every believed primary."""
        now, pending_at = await self.store.mark_times(deadline=self._deadline())
        suspects = self.slots.provenance.suspects()
        for address in [a for a in self._repairs if a not in suspects]:
            del self._repairs[address]
        for address, suspicion in suspects.items():
            shard = self._shard_of(address)
            if shard is None:  # no longer a primary: nothing of it is read
                self.slots.provenance.repaired(address, suspicion)
                continue
            try:
                await self._repair(address, shard, suspicion, now=now)
            except (TierError, StoreError) as exc:
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
                    address, shard.ranges[0][0], value, deadline=self._deadline()
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
        slot = shard.ranges[0][0]
        repair = self._repairs.get(address)
        if repair is None or repair.suspicion != suspicion:
            raw = await self.primary.marker(address, slot, deadline=self._deadline())
            repair = self._repairs[address] = _Repair(suspicion, raw)
        if not repair.leading:
            holder = await self.primary.lease_holder(address, slot, deadline=self._deadline())
            if (
                holder is not None
                and holder.startswith(b"done ")
                and (await self.primary.marker_is_own(address, slot, deadline=self._deadline()))
            ):  # another process repaired it since it came back (a marker of its own since)
                del self._repairs[address]
                by = holder[5:].decode(errors="replace")
                await self._done(address, shard, repair, now=now, by=by)
                return
        leased = await self.primary.lease(
            address, slot, self.lease_token, ttl_ms=self._lease_ms(), deadline=self._deadline()
        )
        if not leased:  # another process repairs it; lost (a stall longer than the lease)
            if repair.leading:
                self._repairs[address] = _Repair(suspicion, repair.marker)
            return
        if not repair.leading:
            repair.rows = await self._plan(address, repair.marker, now)
            repair.leading = True
        loop = asyncio.get_running_loop()
        until = loop.time() + STEP_BUDGET_S
        if repair.rows is not None:
            done = await self._replay(address, repair, repair.rows, until)
        else:
            done = await self._empty(address, repair, until)
        if done:
            del self._repairs[address]
            if await self._done(address, shard, repair, now=now):
                await self.primary.finish_lease(
                    address,
                    slot,
                    self.lease_token,
                    ttl_ms=self._lease_ms(),
                    deadline=self._deadline(),
                )

    async def _plan(
        self, address: Address, raw: bytes | None, now: float
    ) -> list[OutboxRow] | None:
        """The outbox rows to replay into the node whose marker was ``raw``; None: empty it."""
        marker = Marker.parse(raw)
        since = replay_from(marker, now=now, retain_s=self.settings.retain_s)
        if since is not None:
            rows = await self.store.outbox_since(
                since, limit=REPAIR_LIMIT, deadline=self._deadline()
            )
            if len(rows) < REPAIR_LIMIT:
                return rows
        log.warning(
            "primary %s: its data is older than the outbox can vouch for (%s): emptying it of "
            "the gateway's keys", format_address(address),
            "no marker" if marker is None else f"current until {marker.current_until:.0f}",
        )  # fmt: skip
        return None

    async def _replay(
        self, address: Address, repair: _Repair, rows: list[OutboxRow], until: float
    ) -> bool:
        """Replay into ``address`` the rows of its slots, from where the last step stopped;
        True when all are done."""
        prefix = self.primary.key_prefix
        loop = asyncio.get_running_loop()
        while repair.next_row < len(rows):
            if loop.time() >= until:
                return False
            row = rows[repair.next_row]
            shard = self.slots.map.slots[key_slot(redis_key(prefix, row.namespace, row.key))]
            if shard is not None and shard.primary == address:
                await self.outbox.repair_key(row.namespace, row.key, row.seq)
                repair.count += 1
                telemetry.PRIMARY_REPAIR_KEYS.labels(how="replayed").inc()
            repair.next_row += 1
        return True

    async def _empty(self, address: Address, repair: _Repair, until: float) -> bool:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            repair.cursor, removed = await self.primary.empty(
                address, repair.cursor, count=EMPTY_BATCH, deadline=self._deadline()
            )
            repair.count += removed
            telemetry.PRIMARY_REPAIR_KEYS.labels(how="removed").inc(removed)
            if repair.cursor == 0:
                return True
        return False

    async def _done(
        self, address: Address, shard: Shard, repair: _Repair, *, now: float,
        by: str | None = None,
    ) -> bool:  # fmt: skip
        """Believe the node again, repaired by this process or (``by``) the one named; False
        when it came back again meanwhile (suspect again)."""
        how = "by_another" if by else "replayed" if repair.rows is not None else "emptied"
        _, pending_at = await self.store.mark_times(deadline=self._deadline())
        found = await self.primary.mark(
            address, shard.ranges[0][0], f"{now:.3f} {pending_at:.3f}", repaired=True,
            repaired_from=repair.marker, deadline=self._deadline(),
        )  # fmt: skip
        if found is not None:  # its marker changed under the repair: it came back again
            self.slots.provenance.suspect(address, "came back again during its repair")
            return False
        if self.slots.provenance.repaired(address, repair.suspicion):
            telemetry.PRIMARY_REPAIRS.labels(how=how).inc()
            if by:
                log.warning(
                    "primary %s repaired by another process (%s): believed again",
                    format_address(address), by,
                )  # fmt: skip
            else:
                log.warning(
                    "primary %s repaired (%s, %d keys): believed again",
                    format_address(address), how, repair.count,
                )  # fmt: skip
        return True
