"""Circuit breakers, one per route: a tier at a node (``primary@host:port``, ``replica@host:port``)
or the store.

A breaker counts outcomes in a sliding time window of one-second buckets. It opens when, with at
least ``min_calls`` calls in the window, the failure rate or the rate of calls slower than the
latency SLO reaches its threshold, or at once after ``consecutive_failures`` failures in a row: a
route that was busy and healthy has thousands of successes in its window, and a rate alone would
take half the window to notice that it now fails every call. Open means callers skip the route at
once. After a jittered wait (doubling on every failed probe, up to a cap) it is half-open: exactly
one call goes through as a probe, and its outcome closes or reopens it. The board's prober makes
that probe itself when no request arrives, so a breaker never stays open or half-open for lack of
traffic.

Only infrastructure failures are recorded as failures; local saturation is not the route's fault
and is never recorded. A breaker made with ``count_slow=False`` (the store's write route) ignores
latency: it opens on failures only. Clocks and randomness are injected.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app import tasks, telemetry
from app.settings import BreakerSettings

log = logging.getLogger(__name__)


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(slots=True)
class _Bucket:
    second: int
    calls: int = 0
    failures: int = 0
    slow: int = 0


class Breaker:
    def __init__(
        self,
        route: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        count_slow: bool = True,
    ) -> None:
        self.route = route
        self.settings = settings
        self.slow_call_s = settings.slow_call_s if count_slow else math.inf
        self.clock = clock
        self.rng = rng or random.Random()
        self.state = State.CLOSED
        self._buckets: deque[_Bucket] = deque()
        self._reopen_at = 0.0
        self._wait_s = settings.wait_s
        self._probing = False
        self._failing_run = 0
        self.opened_count = 0
        telemetry.BREAKER_STATE.labels(route=route).set(State.CLOSED)

    # -- the request path ---------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go to the route now? In half-open, True for exactly one caller (the probe)."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self.clock() < self._reopen_at:
                return False
            self._move(State.HALF_OPEN)
        if self._probing:
            return False
        self._probing = True
        return True

    def record(self, *, ok: bool, duration_s: float, in_run: bool = True) -> None:
        """The outcome of a call that ``allow`` let through. A failure with ``in_run`` False (a
        large value's transfer, slow for its size) counts in the rates but not in the run of
        failures: a busy process reading megabytes must not open the node for small reads."""
        if self.state is State.HALF_OPEN:
            self._probing = False
            if ok and duration_s <= self.slow_call_s:
                self._close()
            else:
                self._open(backoff=True)
            return
        if self.state is State.OPEN:
            return  # a call that started before the breaker opened
        buckets = self._buckets
        if ok:
            self._failing_run = 0
        elif in_run:
            self._failing_run += 1
        if ok and duration_s <= self.slow_call_s and buckets:
            current = buckets[-1]
            if current.second == int(self.clock()):  # the common case, kept cheap
                current.calls += 1
                return
        bucket = self._bucket()
        slow = duration_s > self.slow_call_s
        bucket.calls += 1
        bucket.failures += not ok
        bucket.slow += slow
        if slow or not ok:  # only a bad outcome can tip the rates over a threshold
            self._evaluate()

    def release(self) -> None:
        """A probe that ended without an outcome (cancelled): let another caller probe."""
        if self.state is State.HALF_OPEN:
            self._probing = False

    # -- transitions ---------------------------------------------------------------------------

    def _bucket(self) -> _Bucket:
        second = int(self.clock())
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
        horizon = second - self.settings.window_s
        while self._buckets and self._buckets[0].second <= horizon:
            self._buckets.popleft()
        return self._buckets[-1]

    def _evaluate(self) -> None:
        run = self.settings.consecutive_failures
        if run and self._failing_run >= run:
            self._open(backoff=False)
            return
        calls = sum(b.calls for b in self._buckets)
        if calls < self.settings.min_calls:
            return
        failures = sum(b.failures for b in self._buckets)
        slow = sum(b.slow for b in self._buckets)
        if (
            failures / calls >= self.settings.failure_rate
            or slow / calls >= self.settings.slow_call_rate
        ):
            self._open(backoff=False)

    def _open(self, *, backoff: bool) -> None:
        if backoff:
            self._wait_s = min(self._wait_s * 2, self.settings.max_wait_s)
        else:
            self._wait_s = self.settings.wait_s
        # Full jitter around the wait, so breakers of many processes do not probe in step.
        self._reopen_at = self.clock() + self._wait_s * self.rng.uniform(0.5, 1.5)
        self.opened_count += 1
        self._move(State.OPEN)

    def _close(self) -> None:
        self._buckets.clear()
        self._failing_run = 0
        self._wait_s = self.settings.wait_s
        self._move(State.CLOSED)

    def _move(self, state: State) -> None:
        if state is self.state:
            return
        log.warning("breaker %s: %s -> %s", self.route, self.state.name, state.name)
        self.state = state
        self._probing = False
        telemetry.BREAKER_STATE.labels(route=self.route).set(state)
        telemetry.BREAKER_TRANSITIONS.labels(route=self.route, to=state.name.lower()).inc()

    def due_for_probe(self) -> bool:
        return (
            self.state is not State.CLOSED and self.clock() >= self._reopen_at and not self._probing
        )

    def snapshot(self) -> dict[str, object]:
        calls = sum(b.calls for b in self._buckets)
        return {
            "route": self.route,
            "state": self.state.name.lower(),
            "calls_in_window": calls,
            "failures_in_window": sum(b.failures for b in self._buckets),
            "slow_in_window": sum(b.slow for b in self._buckets),
            "retry_in_s": max(0.0, round(self._reopen_at - self.clock(), 3))
            if self.state is State.OPEN
            else None,
            "times_opened": self.opened_count,
        }


Probe = Callable[[], Awaitable[None]]


class BreakerBoard:
    """Every route's breaker, and the background prober that tests open routes by itself."""

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self._breakers: dict[str, Breaker] = {}
        self._probes: dict[str, Probe] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, route: str, *, probe: Probe | None = None, count_slow: bool = True) -> Breaker:
        breaker = self._breakers.get(route)
        if breaker is None:
            breaker = Breaker(
                route, self.settings, clock=self.clock, rng=self.rng, count_slow=count_slow
            )
            self._breakers[route] = breaker
        if probe is not None and route not in self._probes:
            self._probes[route] = probe
        return breaker

    def breakers(self) -> list[Breaker]:
        return list(self._breakers.values())

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forget the breakers (and their gauges) of routes that no longer exist."""
        for route in [r for r in self._breakers if not keep(r)]:
            del self._breakers[route]
            self._probes.pop(route, None)
            telemetry.forget(telemetry.BREAKER_STATE, route)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            await self.probe_due()

    async def probe_due(self) -> None:
        """Probe every breaker whose wait is over and that no request is probing."""
        due = [b for b in self._breakers.values() if b.due_for_probe() and b.route in self._probes]
        await asyncio.gather(*(self._probe(b) for b in due))

    async def _probe(self, breaker: Breaker) -> None:
        if not breaker.allow():
            return
        started = self.clock()
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                await self._probes[breaker.route]()
        except asyncio.CancelledError:
            breaker.release()
            raise
        except Exception as exc:  # every failure of a probe is recorded, none is raised
            log.info("probe of %s failed: %s", breaker.route, exc)
            breaker.record(ok=False, duration_s=self.clock() - started)
        else:
            breaker.record(ok=True, duration_s=self.clock() - started)
