"""The invalidation feed: every write, delete and invalidate of every gateway process.

Each write's transaction inserts an outbox row. The feed announces the rows of committed
transactions to every listening process over Postgres LISTEN/NOTIFY, so it works while the Redis
Cluster is down and never announces a write that did not happen. Two modes (``feed.mode``):

* **relay**: writes send nothing. Postgres serialises every notifying commit of
  the instance behind one lock held through its WAL flush, so a NOTIFY per write caps the whole
  fleet's writes (``make bench-store``). Instead one process, elected by an advisory lock
  (``app/relay.py``), reads the rows of transactions committed since its last position every few
  milliseconds and announces them in batches, each ending with the snapshot it covers; with
  nothing new it still sends a heartbeat.
* **notify** (the default): a trigger on the outbox insert sends one NOTIFY from the write's own
  transaction, delivered when (and only if) it commits.

What a process does with it:

* ``VersionMap`` keeps the newest seq announced per key (bounded in keys and age: the
  "invalidation timestamps" of a classic cache-aside design). A tier answer older than that is
  not served.
* ``LocalTier`` drops its copy of the key.
* ``FeedState`` says whether local copies can be trusted. While the feed is down (the listening
  connection lost; in relay mode also a relay whose batches stopped coming, or whose positions
  fell ``relay_lost_after_ms`` behind the store's clock: one starved of CPU, or paging through a
  backlog, keeps sending batches of the past), copies become
  stale-only instead of being wiped. When it is back, the feed reads the outbox rows it may have
  missed; if that gap is covered, nothing was missed and copies stay trusted; otherwise their
  generation is closed for good.

Where the gap begins is a position, never a time: a snapshot of the store's commit order. Relay
mode: every transaction a batch's snapshot sees has been announced once that batch arrived, so
it is the last *safe* position. Notify mode: every round trip on the listening connection
returns the store's snapshot, and once the next round trip has answered, every announcement of
the transactions that snapshot sees has arrived (they travel ahead of the answer on the same
connection). Catch-up reads the outbox rows of the transactions the safe position does not see
(outbox rows carry their transaction id), so neither the delay in noticing a quiet death, nor
lock waits, nor clocks can open a hole. The gap is covered when those rows are still kept (the
safe position is younger than ``outbox.retain_s``) and fewer than the catch-up limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from app import tasks
from app.announce import decode
from app.codec import now_ms
from app.errors import StoreError
from app.relay import Relay
from app.settings import FeedSettings
from app.store import Listener, OutboxRow, Position, Store
from app.telemetry import FEED_LAG, FEED_UP

log = logging.getLogger(__name__)

# A catch-up must begin this much inside the outbox's retention (rows pruned meanwhile).
CATCH_UP_MARGIN_S = 5.0
CATCH_UP_LIMIT = 100_000
HEARD_KEYS = 100_000  # keys whose newest relayed seq is remembered for writers about to wait
MAX_BROKEN_GENERATIONS = 64
# Relay mode: the store's clock against the event loop's, from the last few liveness round trips.
CLOCK_SAMPLES = 4


_SEQ_BITS = 64
_SEQ_MASK = (1 << _SEQ_BITS) - 1


class VersionMap:
    """The newest seq announced per (namespace, key), forgotten after ``ttl_s``.

    An ``OrderedDict`` in expiry order (a key noted again moves to the end with a new expiry,
    and every expiry is ``ttl_s`` after its note), so expired and surplus keys are dropped from
    the front in O(1): ``note`` costs the same at 100 keys as at 100,000 (``make bench-versions``).
    A plain dict would not do: the holes that deletions leave at its front make finding the
    oldest key cost O(holes). Every read of the gateway asks ``newest``: one dict lookup.

    An item is one string and one int: the key is ``namespace NUL key`` (neither may contain a
    control character) and the value packs the expiry (in ms) above the seq. Neither is tracked
    by the cyclic garbage collector, so a map of 200,000 keys adds nothing to its pauses, and it
    is about half the size of a map of tuples.
    """

    def __init__(
        self, *, max_keys: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_keys = max_keys
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: OrderedDict[str, int] = OrderedDict()

    def note(self, namespace: str, key: str, seq: int) -> None:
        slot = f"{namespace}\x00{key}"
        now_ms = int(self.clock() * 1000)
        items = self._items
        current = items.get(slot)
        if current is not None:
            if current & _SEQ_MASK > seq and current >> _SEQ_BITS > now_ms:
                seq = current & _SEQ_MASK
            items.move_to_end(slot)
        items[slot] = (now_ms + int(self.ttl_s * 1000)) << _SEQ_BITS | seq
        if len(items) > self.max_keys:
            items.popitem(last=False)
        while items:
            if next(iter(items.values())) >> _SEQ_BITS > now_ms:
                return
            items.popitem(last=False)

    def newest(self, namespace: str, key: str) -> int | None:
        item = self._items.get(f"{namespace}\x00{key}")
        if item is None or item >> _SEQ_BITS <= int(self.clock() * 1000):
            return None
        return item & _SEQ_MASK

    def newest_many(self, keys: Iterable[tuple[str, str]]) -> list[int | None]:
        """``newest`` of each (namespace, key), read at one instant."""
        items, now_ms = self._items, int(self.clock() * 1000)
        out: list[int | None] = []
        for namespace, key in keys:
            item = items.get(f"{namespace}\x00{key}")
            out.append(None if item is None or item >> _SEQ_BITS <= now_ms else item & _SEQ_MASK)
        return out

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class FeedState:
    """Whether copies taken in a given *generation* may have missed an invalidation.

    A generation lasts as long as the feed's record is continuous: the feed may drop and come
    back within one generation if the gap was caught up from the outbox. Owned by the feed: only
    it moves ``generation``; the local tier stamps copies with it and asks ``behind_s``.
    """

    clock: Callable[[], float] = time.monotonic
    generation: int = 0
    up: bool = False
    down_since: float | None = None
    broken_at: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.down_since = self.clock()

    def behind_s(self, generation: int, cached_at: float) -> float:
        """How long a copy taken at ``cached_at`` in ``generation`` may have missed updates."""
        if generation == self.generation:
            if self.up:
                return 0.0
            since = self.down_since if self.down_since is not None else cached_at
        else:
            since = self.broken_at.get(generation, cached_at)
        return max(0.0, self.clock() - max(since, cached_at))

    def lost(self) -> None:
        if self.up:
            self.up = False
            self.down_since = self.clock()
            FEED_UP.set(0)

    def restored(self, *, caught_up: bool) -> None:
        if not caught_up:
            if len(self.broken_at) >= MAX_BROKEN_GENERATIONS:  # the oldest: no copy is that old
                del self.broken_at[min(self.broken_at)]
            self.broken_at[self.generation] = (
                self.down_since if self.down_since is not None else self.clock()
            )
            self.generation += 1
        self.up = True
        self.down_since = None
        FEED_UP.set(1)


class InvalidationFeed:
    """Listens for announcements and applies them; reconnects and catches up by itself. In relay
    mode it also runs this process's candidacy for the relay."""

    def __init__(
        self,
        store: Store,
        settings: FeedSettings,
        *,
        versions: VersionMap,
        state: FeedState,
        on_invalidate: Callable[[str, str, int], None],
        catch_up_window_s: float,
    ) -> None:
        self.store = store
        self.settings = settings
        self.versions = versions
        self.state = state
        self.on_invalidate = on_invalidate
        self.catch_up_window_s = catch_up_window_s
        self.relay = (
            Relay(store, settings, window_s=catch_up_window_s) if settings.mode == "relay" else None
        )
        self._listener: Listener | None = None
        self._connected_once = False
        # Every announcement of the transactions ``_safe`` sees has been applied here. Notify
        # mode: ``_last`` (the latest round trip's) becomes safe once a later round trip
        # answers. Relay mode: each batch's position becomes safe as it arrives.
        self._safe: Position | None = None
        self._last: Position | None = None
        # Relay mode, owned by the message callback and the feed's task: the loop time up to
        # which the batches have covered the store's commits (the newest batch position's time,
        # on this loop's clock), whether the relay is quiet, and the safe position when it went
        # so. ``_offsets``: the store's clock minus the loop's, one per liveness round trip.
        self._heard: float | None = None
        self._offsets: deque[float] = deque(maxlen=CLOCK_SAMPLES)
        self._quiet = False
        self._gap_from: Position | None = None
        self._next_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._dropped = False
        self._wake = asyncio.Event()
        # Relay mode, owned by the event loop's callbacks: this process's writes waiting for the
        # relay to announce them (``announced``), and the newest seq the feed brought per key
        # lately (an announcement may come before its writer starts waiting).
        self._awaited: dict[tuple[str, str], list[tuple[int, asyncio.Future[None]]]] = {}
        self._heard_seq: OrderedDict[tuple[str, str], int] = OrderedDict()

    def announce(self, namespace: str, key: str, seq: int) -> None:
        """Apply an announcement, from the feed or from this process's own write."""
        self.versions.note(namespace, key, seq)
        self.on_invalidate(namespace, key, seq)

    async def announced(self, namespace: str, key: str, seq: int, *, deadline: float) -> None:
        """Relay mode: return once the feed has brought this process the key at ``seq`` or
        newer, so that a write is acknowledged only when every process can know of it (a NOTIFY
        from the write's own transaction gives that for free: it is delivered at commit).

        Waits at most ``relay_lost_after_ms`` (by then a relay silent or behind has made every
        process's local copies stale-only) and never past ``deadline``.
        """
        slot = (namespace, key)
        if self._heard_seq.get(slot, 0) >= seq:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._awaited.setdefault(slot, [])
        waiting.append((seq, future))
        limit = min(deadline, loop.time() + self.settings.relay_lost_after_ms / 1000)
        try:
            async with asyncio.timeout_at(limit):
                await future
        except TimeoutError:
            pass
        finally:
            waiting = self._awaited.get(slot, [])
            waiting[:] = [w for w in waiting if w[1] is not future]
            if not waiting:
                self._awaited.pop(slot, None)

    def _brought(self, namespace: str, key: str, seq: int) -> None:
        """The feed brought ``seq`` of the key: wake the writes of it (or older) waiting."""
        slot = (namespace, key)
        if self._heard_seq.get(slot, 0) < seq:
            self._heard_seq[slot] = seq
            self._heard_seq.move_to_end(slot)
            if len(self._heard_seq) > HEARD_KEYS:
                self._heard_seq.popitem(last=False)
        waiting = self._awaited.get(slot)
        if waiting:
            for waited, future in waiting:
                if waited <= seq and not future.done():
                    future.set_result(None)

    def _on_message(self, payload: str) -> None:
        try:
            batch = decode(payload)
        except ValueError:
            log.warning("malformed invalidation payload ignored")
            return
        received_ms = now_ms()
        relayed = batch.relayed
        for row in batch.rows:
            self.announce(row.namespace, row.key, row.seq)
            FEED_LAG.observe(max(0.0, (received_ms - row.created_ms) / 1000))
            if relayed:
                self._brought(row.namespace, row.key, row.seq)
        if batch.relayed and self.relay is not None:
            if batch.position is not None:
                self._safe = batch.position
                covered = self._covered(batch.position)
                if self._heard is None or covered > self._heard:
                    self._heard = covered
            if self._quiet:
                self._wake.set()

    def _covered(self, position: Position) -> float:
        """The loop time of ``position``: when, on this process's clock, the store took it.

        Each offset sample is taken as ``at`` (the store's time during the round trip) minus
        the loop time the round trip began, so it can only be too large: a position then looks
        older than it is, never younger. The smallest of the last samples is the closest. Before
        any sample, the position counts as taken now."""
        if not self._offsets:
            return asyncio.get_running_loop().time()
        return position.at - min(self._offsets)

    async def _position(self, listener: Listener) -> Position:
        """A liveness round trip, which also samples the store's clock against the loop's."""
        began = asyncio.get_running_loop().time()
        here = await listener.position(deadline=self._deadline())
        self._offsets.append(here.at - began)
        return here

    def _on_lost(self) -> None:
        self.state.lost()
        self._dropped = True
        self._wake.set()

    async def start(self) -> None:
        FEED_UP.set(0)
        if self.relay is not None:
            await self.relay.start()
        with contextlib.suppress(StoreError):
            await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None
        if self.relay is not None:
            await self.relay.aclose()
        await self._drop_listener()

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + max(1.0, self.settings.check_interval_s)

    async def _connect(self) -> None:
        self._dropped = False
        self._listener = await self.store.listen(
            self.settings.channel,
            on_message=self._on_message,
            on_lost=self._on_lost,
            deadline=self._deadline(),
        )
        # Listening now: a transaction this snapshot does not see will be announced here.
        here = await self._position(self._listener)
        if self._quiet:
            self._safe = self._gap_from
        caught_up = await self._catch_up(here)
        self._safe = self._last = here
        self._quiet, self._gap_from = False, None
        self._heard = asyncio.get_running_loop().time()
        self._connected_once = True
        self.state.restored(caught_up=caught_up)
        log.info(
            "invalidation feed up (generation %d, caught up: %s)", self.state.generation, caught_up
        )

    async def _catch_up(self, here: Position) -> bool:
        """Apply what was committed since the last safe position (see ``_catch_up_from``)."""
        return await self._catch_up_from(self._safe, here)

    async def _catch_up_from(self, safe: Position | None, here: Position) -> bool:
        """Apply what was committed since ``safe``; False when that cannot be known (no safe
        position, rows no longer kept, more than the catch-up limit)."""
        if not self._connected_once:
            # A process that just started holds no copies; it learns the recent writes too.
            try:
                rows = await self.store.outbox_recent(
                    within_s=self.catch_up_window_s, limit=CATCH_UP_LIMIT,
                    deadline=self._deadline(),
                )  # fmt: skip
            except StoreError:
                return False
            return self._apply(rows)
        if safe is None or here.at - safe.at > self.catch_up_window_s - CATCH_UP_MARGIN_S:
            return False
        try:
            rows = await self.store.outbox_missed(
                safe, limit=CATCH_UP_LIMIT, deadline=self._deadline()
            )
        except StoreError:
            return False
        return self._apply(rows)

    def _apply(self, rows: list[OutboxRow]) -> bool:
        for row in rows:
            self.announce(row.namespace, row.key, row.seq)
            if self.relay is not None:
                self._brought(row.namespace, row.key, row.seq)
        return len(rows) < CATCH_UP_LIMIT

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()

    def _tick_s(self) -> float:
        if self.relay is None:
            return self.settings.check_interval_s
        return min(self.settings.check_interval_s, self.settings.relay_lost_after_ms / 4000)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick_s()):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if self._listener is None or not self._listener.alive or self._dropped:
                    self.state.lost()
                    await self._drop_listener()
                    await self._connect()
                elif self.relay is None:
                    position = await self._listener.position(deadline=self._deadline())
                    self._safe, self._last = self._last, position
                else:
                    if loop.time() >= self._next_check:  # the connection is alive
                        await self._position(self._listener)
                        self._next_check = loop.time() + self.settings.check_interval_s
                    await self._watch_relay(self._listener)
            except StoreError as exc:
                if self.state.up:
                    log.warning("invalidation feed lost: %s", exc)
                self.state.lost()
                await self._drop_listener()
            except Exception:
                log.exception("invalidation feed check failed")
                self.state.lost()
                await self._drop_listener()

    async def _watch_relay(self, listener: Listener) -> None:
        """Relay mode: copies stop being trusted while the batches cover nothing newer than
        ``relay_lost_after_ms`` ago (none came, or they are late), and are trusted again once
        they are recent and the gap has been caught up.

        Noticed within one tick of the feed's loop, so the limit is checked one tick early: by
        the time a write's wait for its announcement ends (``relay_lost_after_ms`` after its
        commit, ``announced``), every process has stopped trusting copies it did not invalidate.
        """
        if self._heard is None:
            return
        silent_s = asyncio.get_running_loop().time() - self._heard
        lost_after_s = self.settings.relay_lost_after_ms / 1000 - self._tick_s()
        if not self._quiet:
            if silent_s > lost_after_s:
                if self.state.up:
                    log.warning(
                        "the feed relay's batches cover nothing newer than %.1f s ago: local "
                        "copies are stale-only", silent_s,
                    )  # fmt: skip
                self._quiet, self._gap_from = True, self._safe
                self.state.lost()
            return
        if silent_s <= lost_after_s:
            here = await listener.position(deadline=self._deadline())
            caught_up = await self._catch_up_from(self._gap_from, here)
            self._quiet, self._gap_from = False, None
            self.state.restored(caught_up=caught_up)
            log.info("feed relay back (caught up: %s)", caught_up)
