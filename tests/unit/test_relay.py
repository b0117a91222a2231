"""The relay's rounds over a fake store: every committed row is announced before a position
that sees it, heartbeats keep a quiet relay audible, and a backlog goes out page by page."""

from __future__ import annotations

from collections.abc import Callable

from app.announce import decode
from app.relay import Rounds, lock_key
from app.settings import FeedSettings
from app.store import FeedRow, Position
from tests.unit.fakes import FakeClock


class CommitLog:
    """A store whose commits are numbered: snapshot ``n:n:`` sees the first n of them."""

    def __init__(self) -> None:
        self.commits: list[FeedRow] = []
        self.published: list[tuple[list[str], Position | None]] = []
        self.before_read: Callable[[], None] = lambda: None

    def write(self, key: str) -> None:
        self.commits.append(FeedRow("ns", key, len(self.commits) + 1, 0))

    async def read(
        self,
        since: Position | None,
        *,
        after: tuple[str, str] | None,
        within_s: float,
        limit: int,
        deadline: float,
    ) -> tuple[Position, list[FeedRow]]:
        self.before_read()
        seen = len(self.commits)
        start = 0 if since is None else int(since.snapshot.split(":")[0])
        newest: dict[tuple[str, str], FeedRow] = {}
        for row in self.commits[start:seen]:
            newest[(row.namespace, row.key)] = row
        rows = [newest[k] for k in sorted(newest) if after is None or k > after]
        return Position(f"{seen}:{seen}:", at=float(seen)), rows[:limit]

    async def publish(
        self, channel: str, payloads: list[str], position: Position | None, *, deadline: float
    ) -> None:
        self.published.append((payloads, position))


class Listener:
    """Applies payloads as the feed does, and checks each position it is given is true."""

    def __init__(self, log: CommitLog) -> None:
        self.log = log
        self.newest: dict[str, int] = {}
        self.safe = 0

    def receive(self) -> None:
        for payloads, _ in self.log.published:
            for payload in payloads:
                batch = decode(payload)
                for row in batch.rows:
                    self.newest[row.key] = max(self.newest.get(row.key, 0), row.seq)
                if batch.position is not None:
                    self.safe = int(batch.position.snapshot.split(":")[0])
                    for row in self.log.commits[: self.safe]:
                        assert self.newest.get(row.key, 0) >= row.seq, (row, self.safe)
        self.log.published.clear()


def settings() -> FeedSettings:
    return FeedSettings(relay_heartbeat_ms=200)


async def test_a_committed_write_is_announced_in_the_next_round_with_its_position() -> None:
    log, clock = CommitLog(), FakeClock()
    rounds = Rounds(settings(), start=Position("0:0:", at=0.0), window_s=120, clock=clock)
    listener = Listener(log)
    log.write("a")
    log.write("a")
    log.write("b")
    assert await rounds.run_once(log, deadline=1.0) is False
    [(_, recorded)] = log.published
    assert recorded == Position("3:3:", at=3.0)
    listener.receive()
    assert listener.newest == {"a": 2, "b": 3}  # the newest row per key
    assert listener.safe == 3


async def test_a_quiet_relay_sends_a_heartbeat_only_every_heartbeat_interval() -> None:
    log, clock = CommitLog(), FakeClock()
    rounds = Rounds(settings(), start=None, window_s=120, clock=clock)
    await rounds.run_once(log, deadline=1.0)  # the first round always speaks
    assert len(log.published) == 1
    for _ in range(10):
        clock.now += 0.01
        await rounds.run_once(log, deadline=1.0)
    assert len(log.published) == 1
    clock.now += 0.2
    await rounds.run_once(log, deadline=1.0)
    [_, (payloads, position)] = log.published
    assert position is not None
    assert decode(payloads[0]).rows == []


async def test_a_backlog_goes_page_by_page_and_writes_between_pages_are_not_skipped() -> None:
    log, clock = CommitLog(), FakeClock()
    for i in range(10):
        log.write(f"k{i}")
    rounds = Rounds(settings(), start=None, window_s=120, clock=clock, page_rows=3)
    listener = Listener(log)
    # While the pages go out, keys already sent (and keys still to come) are written again.
    writes = iter(["k0", "k9", "k1", "new"])
    log.before_read = lambda: log.write(next(writes, "k5"))
    pages = 0
    while await rounds.run_once(log, deadline=1.0):
        pages += 1
        assert all(position is None for _, position in log.published)
        listener.receive()
    assert pages >= 3
    listener.receive()  # the last page: the position of the first page's snapshot
    assert listener.safe == 11
    for _ in range(3):
        await rounds.run_once(log, deadline=1.0)
        listener.receive()
    assert listener.safe == len(log.commits)
    assert all(listener.newest[row.key] >= row.seq for row in log.commits)


async def test_every_process_competes_for_the_same_lock_per_channel() -> None:
    assert lock_key("cachegw_invalidation") == lock_key("cachegw_invalidation")
    assert lock_key("cachegw_invalidation") != lock_key("other")
    assert 0 < lock_key("cachegw_invalidation") < 2**63  # a Postgres bigint
