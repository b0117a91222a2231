"""Singleflight with overlap forced by events (no sleeps): one load per key, shared."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import CoalescingOverflowError
from app.singleflight import FollowOn, SingleFlight


def far() -> float:
    return asyncio.get_running_loop().time() + 10


async def test_n_callers_one_load() -> None:
    flights: SingleFlight[str] = SingleFlight("test", max_waiters=100)
    release = asyncio.Event()
    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        await release.wait()
        return "value"

    callers = [asyncio.ensure_future(flights.do("k", load, deadline=far())) for _ in range(50)]
    await asyncio.sleep(0)  # every caller has joined before the load may finish
    assert flights.in_flight("k")
    release.set()
    assert await asyncio.gather(*callers) == ["value"] * 50
    assert loads == 1
    assert not flights.in_flight("k")


async def test_a_cancelled_first_caller_does_not_cancel_the_load() -> None:
    flights: SingleFlight[str] = SingleFlight("test", max_waiters=100)
    release = asyncio.Event()
    finished = asyncio.Event()

    async def load() -> str:
        await release.wait()
        finished.set()
        return "value"

    first = asyncio.ensure_future(flights.do("k", load, deadline=far()))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(flights.do("k", load, deadline=far()))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await second == "value"
    assert finished.is_set()


async def test_a_caller_past_its_deadline_stops_waiting_and_the_load_finishes() -> None:
    flights: SingleFlight[str] = SingleFlight("test", max_waiters=100)
    release = asyncio.Event()
    done: list[str] = []

    async def load() -> str:
        await release.wait()
        done.append("loaded")
        return "value"

    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await flights.do("k", load, deadline=loop.time())
    assert flights.in_flight("k")
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert done == ["loaded"]


async def test_an_error_reaches_every_waiter() -> None:
    flights: SingleFlight[str] = SingleFlight("test", max_waiters=100)
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        raise RuntimeError("store down")

    callers = [asyncio.ensure_future(flights.do("k", load, deadline=far())) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert not flights.in_flight("k")


async def test_waiters_are_bounded() -> None:
    flights: SingleFlight[str] = SingleFlight("test", max_waiters=3)
    release = asyncio.Event()

    async def load() -> str:
        await release.wait()
        return "value"

    callers = [asyncio.ensure_future(flights.do("k", load, deadline=far())) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(CoalescingOverflowError):
        await flights.do("k", load, deadline=far())
    release.set()
    assert await asyncio.gather(*callers) == ["value"] * 3


async def test_a_finished_flight_does_not_remove_its_successor() -> None:
    flights: SingleFlight[int] = SingleFlight("test", max_waiters=100)
    gates = [asyncio.Event(), asyncio.Event()]
    started = 0

    async def load() -> int:
        nonlocal started
        index = started
        started += 1
        await gates[index].wait()
        return index

    first = asyncio.ensure_future(flights.do("k", load, deadline=far()))
    await asyncio.sleep(0)
    gates[0].set()
    assert await first == 0
    second = asyncio.ensure_future(flights.do("k", load, deadline=far()))
    await asyncio.sleep(0)
    assert flights.in_flight("k")
    gates[1].set()
    assert await second == 1


class Reads:
    """A read whose calls each wait for their own release; what each returned is its number."""

    def __init__(self) -> None:
        self.releases: list[asyncio.Event] = []
        self.failure: Exception | None = None

    @property
    def started(self) -> int:
        return len(self.releases)

    async def read(self) -> int:
        number = self.started
        self.releases.append(asyncio.Event())
        await self.releases[number].wait()
        if self.failure is not None:
            raise self.failure
        return number


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def call(
    reads: FollowOn[int], source: Reads, *, deadline: float | None = None
) -> asyncio.Future[int]:
    """A caller of ``reads.do`` for key "k", let run until it waits."""
    caller = asyncio.ensure_future(reads.do("k", source.read, deadline=deadline or far()))
    await settle()
    return caller


async def test_callers_during_a_read_share_the_next_one() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    first = await call(reads, source)
    later = [asyncio.ensure_future(reads.do("k", source.read, deadline=far())) for _ in range(20)]
    await settle()
    assert source.started == 1  # nobody takes read 0: it began before they came
    source.releases[0].set()
    assert await first == 0
    await settle()
    assert source.started == 2  # one read for all twenty, started after they all came
    late = await call(reads, source)
    source.releases[1].set()
    assert await asyncio.gather(*later) == [1] * 20
    await settle()
    source.releases[2].set()
    assert await late == 2  # came during read 1: read 2 is its own group's
    assert len(reads) == 0


async def test_a_read_alone_is_made_at_once_and_leaves_nothing_behind() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    one = asyncio.ensure_future(reads.do("a", source.read, deadline=far()))
    other = asyncio.ensure_future(reads.do("b", source.read, deadline=far()))
    await settle()
    assert source.started == 2  # other keys do not wait for each other
    for release in source.releases:
        release.set()
    assert sorted(await asyncio.gather(one, other)) == [0, 1]
    assert len(reads) == 0


async def test_a_groups_failure_reaches_all_of_it() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    first = await call(reads, source)
    group = [asyncio.ensure_future(reads.do("k", source.read, deadline=far())) for _ in range(3)]
    source.releases[0].set()
    await first
    await settle()
    source.failure = RuntimeError("node down")
    source.releases[1].set()
    results = await asyncio.gather(*group, return_exceptions=True)
    assert [str(r) for r in results] == ["node down"] * 3
    assert source.started == 2
    assert len(reads) == 0


async def test_when_the_groups_reader_leaves_the_others_read_for_themselves() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    first = await call(reads, source)
    leader = await call(reads, source)
    others = [asyncio.ensure_future(reads.do("k", source.read, deadline=far())) for _ in range(2)]
    await settle()
    leader.cancel()  # while it waits for read 0 to end
    await settle()
    assert source.started == 3  # each of the two read for itself, at once
    for release in source.releases:
        release.set()
    assert sorted(await asyncio.gather(*others)) == [1, 2]
    assert await first == 0
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(reads) == 0


async def test_a_caller_out_of_time_leaves_the_group_reading() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    first = await call(reads, source)
    leader = await call(reads, source)
    hurried = asyncio.get_running_loop().time() + 0.01
    impatient = asyncio.ensure_future(reads.do("k", source.read, deadline=hurried))
    with pytest.raises(TimeoutError):
        await impatient
    source.releases[0].set()
    await first
    await settle()
    source.releases[1].set()
    assert await leader == 1
    assert len(reads) == 0


async def test_a_group_whose_reader_runs_out_of_time_gets_the_timeout() -> None:
    reads: FollowOn[int] = FollowOn("test")
    source = Reads()
    first = await call(reads, source)
    leader = await call(reads, source, deadline=asyncio.get_running_loop().time() + 0.01)
    others = [asyncio.ensure_future(reads.do("k", source.read, deadline=far())) for _ in range(3)]
    await asyncio.wait([leader, *others], timeout=1)
    assert source.started == 1  # no read piled onto the one that is slow
    assert all(isinstance(r.exception(), TimeoutError) for r in [leader, *others])
    source.releases[0].set()
    assert await first == 0
    assert len(reads) == 0
