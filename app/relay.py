"""The feed relay: one process of the fleet announces every committed outbox row, in batches.

In relay mode writers send no NOTIFY (migration 0006), so no write's commit waits on Postgres's
instance-wide notify lock. Instead every process tries, every ``relay_check_s``, to take one
advisory lock on a connection of its own; the holder is the relay. Every ``relay_interval_ms`` it
reads, in one statement, a position S (the statement's snapshot) and the newest row per key of
the transactions S sees and its last position P does not, then publishes them in one transaction:
as few NOTIFYs as the payload limit allows (``app/announce.py``), the last carrying S, and S
recorded in ``cache_feed_relay``. Then P = S. With nothing new it still sends an empty batch
every ``relay_heartbeat_ms``, so listeners can tell a quiet fleet from a lost relay.

Why no announcement is lost: each relay starts from the recorded position, which was recorded in
the same transaction as the announcements that complete it, so consecutive relays form one chain
(a relay that never finds one starts with the rows written within the outbox's retention). The
lock, the reads and the publishes share one session: a relay whose session has ended, whose lock
another process may now hold, cannot publish any more (Postgres ends a session that sends nothing
for a few seconds, so a relay cut off from it frees the lock). Announcing a row twice is
harmless: the version map keeps the newest seq.

A round with more rows than a page is read page by page (by key), each page published with P;
the position the pages complete is the first page's snapshot, since every later page was read in
a snapshot that sees at least as much.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import Protocol

from app import tasks
from app.announce import encode
from app.errors import StoreError
from app.settings import FeedSettings
from app.store import FeedRow, Position, RelaySession, Store
from app.telemetry import FEED_RELAY, FEED_RELAY_MESSAGES, FEED_RELAY_ROWS

log = logging.getLogger(__name__)

STORE_CALL_TIMEOUT_S = 2.0
PAGE_ROWS = 20_000
# A session that sends no statement for this long (and at least 4 checks) is ended by Postgres.
IDLE_SESSION_S = 5.0


def lock_key(channel: str) -> int:
    """The advisory lock of the relay of ``channel`` (fixed: every process computes the same)."""
    return (0x6367_7731 << 32) | zlib.crc32(f"cachegw-relay:{channel}".encode())


class Session(Protocol):
    """What the relay needs of its connection (``app.store.RelaySession``)."""

    async def read(
        self,
        since: Position | None,
        *,
        after: tuple[str, str] | None,
        within_s: float,
        limit: int,
        deadline: float,
    ) -> tuple[Position, list[FeedRow]]: ...

    async def publish(
        self, channel: str, payloads: list[str], position: Position | None, *, deadline: float
    ) -> None: ...


class Rounds:
    """The relay's position and one round at a time; owned by the relay's task alone."""

    def __init__(
        self,
        settings: FeedSettings,
        *,
        start: Position | None,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        page_rows: int = PAGE_ROWS,
    ) -> None:
        self.settings = settings
        self.page_rows = page_rows
        self.position = start  # P: everything it sees has been announced
        self.window_s = window_s
        self.clock = clock
        self._target: Position | None = None  # the position the pages being sent complete
        self._after: tuple[str, str] | None = None  # the last key of the last page sent
        self._published_at = -float("inf")

    async def run_once(self, session: Session, *, deadline: float) -> bool:
        """One read and, when there is something to say, one publish; True if a page is left."""
        here, rows = await session.read(
            self.position, after=self._after, within_s=self.window_s, limit=self.page_rows,
            deadline=deadline,
        )  # fmt: skip
        target = self._target or here
        if len(rows) >= self.page_rows:
            await self._publish(session, rows, None, deadline=deadline)
            self._target, self._after = target, (rows[-1].namespace, rows[-1].key)
            return True
        now = self.clock()
        if rows or now - self._published_at >= self.settings.relay_heartbeat_ms / 1000:
            await self._publish(session, rows, target, deadline=deadline)
            self._published_at = now
        # Unpublished, it still holds: the transactions it adds wrote no outbox row.
        self.position, self._target, self._after = target, None, None
        return False

    async def _publish(
        self, session: Session, rows: list[FeedRow], position: Position | None, *, deadline: float
    ) -> None:
        payloads = encode(rows, position=position, before=self.position)
        await session.publish(self.settings.channel, payloads, position, deadline=deadline)
        FEED_RELAY_MESSAGES.inc(len(payloads))
        FEED_RELAY_ROWS.inc(len(rows))


class Relay:
    """Competes for the relay's lock, and while it holds it, runs the rounds."""

    def __init__(self, store: Store, settings: FeedSettings, *, window_s: float) -> None:
        self.store = store
        self.settings = settings
        self.window_s = window_s
        self.leading = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + STORE_CALL_TIMEOUT_S

    async def _run(self) -> None:
        key = lock_key(self.settings.channel)
        idle_s = max(IDLE_SESSION_S, 4 * self.settings.relay_check_s)
        failing = False
        while True:
            session = None
            try:
                session = await self.store.relay_session(
                    idle_timeout_s=idle_s, deadline=self._deadline()
                )
                while True:
                    if await session.try_lock(key, deadline=self._deadline()):
                        await self._lead(session)
                    failing = False
                    await asyncio.sleep(self.settings.relay_check_s)
            except StoreError as exc:
                if not failing or self.leading:
                    log.warning("feed relay: %s", exc)
                failing = True
            except Exception:
                log.exception("feed relay failed")
            finally:
                if session is not None:
                    session.abort()  # the lock goes with the session
                self._stood_down()
            await asyncio.sleep(self.settings.relay_check_s)

    async def _lead(self, session: RelaySession) -> None:
        """Run rounds until the session fails (then the lock is gone with it)."""
        start = await session.persisted(deadline=self._deadline())
        self.leading = True
        FEED_RELAY.set(1)
        log.info("this process is the feed relay (from %s)", start.snapshot if start else "none")
        rounds = Rounds(self.settings, start=start, window_s=self.window_s)
        pause_s = self.settings.relay_interval_ms / 1000
        while True:
            more = await rounds.run_once(session, deadline=self._deadline())
            await asyncio.sleep(0 if more else pause_s)

    def _stood_down(self) -> None:
        if self.leading:
            log.info("this process is no longer the feed relay")
        self.leading = False
        FEED_RELAY.set(0)
