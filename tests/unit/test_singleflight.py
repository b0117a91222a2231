"""Singleflight with overlap forced by events (no sleeps): one load per key, shared."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import CoalescingOverflowError
from app.singleflight import SingleFlight


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
