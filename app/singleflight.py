"""Singleflight: concurrent requests for one key share one load.

The load runs in a task of its own, so a caller that disconnects or times out stops waiting but
does not cancel it for the others, and its result still reaches the caches. Errors reach every
waiter. Waiters per key are bounded.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from app import telemetry
from app.errors import CoalescingOverflowError

T = TypeVar("T")


@dataclass(eq=False)
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    deadline: float | None = None  # how long the load itself may run (event-loop time)
    waiters: int = 0


class SingleFlight(Generic[T]):
    """One in-flight load per key.

    ``_flights`` maps a key to its flight. ``do`` adds a flight when there is none; only the
    flight's own done-callback removes it, and only if the map still holds that same flight
    (a later flight for the key may have replaced it), so a finished flight never removes its
    successor.
    """

    def __init__(self, name: str, *, max_waiters: int) -> None:
        self.max_waiters = max_waiters
        self._flights: dict[Hashable, _Flight[T]] = {}
        self._joined = telemetry.COALESCED.labels(kind=name)

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    async def do(
        self,
        key: Hashable,
        load: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        load_deadline: float | None = None,
        patient: bool = False,
    ) -> T:
        """The result of the key's current load, starting ``load`` if none is under way.

        Waits until ``deadline`` (event-loop time): ``TimeoutError`` then, while the load goes on.
        A new flight records ``load_deadline``, the time its load may run until; a ``patient``
        caller waits for a flight until then if that is later than its own deadline (waiting
        costs nobody anything, and an answer a little late beats a 503 that makes its client
        come back). ``CoalescingOverflowError`` when the key already has ``max_waiters`` waiting.
        """
        flight = self._flights.get(key)
        if flight is None:
            task = asyncio.get_running_loop().create_task(_run(load))
            flight = _Flight(task, load_deadline)
            self._flights[key] = flight
            task.add_done_callback(functools.partial(self._land, key, flight))
        elif flight.waiters >= self.max_waiters:
            raise CoalescingOverflowError(f"{flight.waiters} requests already wait for this key")
        else:
            self._joined.inc()
        flight.waiters += 1
        if patient and flight.deadline is not None:
            deadline = max(deadline, flight.deadline)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1

    def _land(self, key: Hashable, flight: _Flight[T], _task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved: a failure nobody waited for is not "lost"


async def _run(load: Callable[[], Awaitable[T]]) -> T:
    return await load()


class _Abandoned(Exception):
    """The caller that was to make a group's read went away first (it was cancelled)."""


class _Reading:
    """One key's read on its way (``done``, made only when somebody waits for it to end) and the
    group of callers that arrived since, who share the next read (``next``)."""

    __slots__ = ("done", "next")

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.next: asyncio.Future[Any] | None = None


class FollowOn(Generic[T]):
    """Concurrent reads of one key share reads, each of which starts after its callers arrived.

    Unlike ``SingleFlight``, a caller never takes a result read before it arrived: the callers
    that arrive while a read is on its way form a group, and the first of them makes one read
    for the whole group once that read has ended. So every answer is one a read of the caller's
    own could have given (a write acknowledged before the caller arrived is in it), and a
    stampede of N callers sends a few reads, one per read's time, instead of N.

    A read with nobody waiting costs a dict entry and one small object; a group's result or
    exception reaches all of its callers. A caller that is cancelled never fails the others: if
    it was the one to read, they each read for themselves. If the one to read runs out of time
    before the read ahead of it has ended, its group gets the ``TimeoutError`` (they came after
    it, so their time is nearly up too, and more reads would only pile onto a slow node).
    """

    def __init__(self, name: str) -> None:
        self._reading: dict[Hashable, _Reading] = {}
        self._joined = telemetry.COALESCED.labels(kind=name)

    def __len__(self) -> int:
        return len(self._reading)

    async def do(self, key: Hashable, read: Callable[[], Awaitable[T]], *, deadline: float) -> T:
        """``read()``'s result, or that of a read started after this call, shared; waits until
        ``deadline`` (event-loop time) for a read made by another caller: ``TimeoutError``."""
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = _Reading()
            return await self._read(key, reading, read, None)
        group = reading.next
        if group is None:
            return await self._read_next(key, reading, read, deadline)
        self._joined.inc()
        try:
            async with asyncio.timeout_at(deadline):
                return cast(T, await asyncio.shield(group))
        except _Abandoned:
            return await read()

    async def _read_next(
        self, key: Hashable, reading: _Reading, read: Callable[[], Awaitable[T]], deadline: float
    ) -> T:
        """The first caller of a group: waits for the read on its way to end, then reads."""
        loop = asyncio.get_running_loop()
        group = reading.next = loop.create_future()
        if reading.done is None:
            reading.done = loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(reading.done)
        except BaseException as exc:
            reading.next = None
            if reading.done.done() and self._reading.get(key) is reading:
                del self._reading[key]
            # Out of time while the read before has not ended: so is the group, near enough
            # (its callers came after); reads of their own would only pile onto a slow node.
            _fail(group, exc if isinstance(exc, TimeoutError) else _Abandoned())
            raise
        self._joined.inc()
        # Whoever comes from now on joins the group after this read.
        following = self._reading[key] = _Reading()
        return await self._read(key, following, read, group)

    async def _read(
        self,
        key: Hashable,
        reading: _Reading,
        read: Callable[[], Awaitable[T]],
        group: asyncio.Future[Any] | None,
    ) -> T:
        try:
            result = await read()
        except Exception as exc:
            if group is not None:
                _fail(group, exc)
            raise
        except BaseException:  # cancelled: the others read for themselves
            if group is not None:
                _fail(group, _Abandoned())
            raise
        else:
            if group is not None:
                group.set_result(result)
            return result
        finally:
            if reading.done is not None:
                reading.done.set_result(None)
            if reading.next is None and self._reading.get(key) is reading:
                del self._reading[key]


def _fail(group: asyncio.Future[Any], exc: BaseException) -> None:
    group.set_exception(exc)
    group.exception()  # retrieved: the group may have nobody else in it
