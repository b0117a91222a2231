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
from typing import Generic, TypeVar

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
