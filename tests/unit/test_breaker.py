"""The breaker's state machine on a fake clock."""

from __future__ import annotations

import random

from app.breaker import Breaker, BreakerBoard, State
from app.settings import BreakerSettings
from tests.unit.fakes import FakeClock

SETTINGS = BreakerSettings(
    window_s=10, min_calls=10, failure_rate=0.5, slow_call_s=0.05, slow_call_rate=0.8,
    wait_s=1.0, max_wait_s=4.0, probe_interval_s=0.25, probe_timeout_s=0.25,
)  # fmt: skip


def breaker(clock: FakeClock) -> Breaker:
    return Breaker("primary@h:1", SETTINGS, clock=clock, rng=random.Random(1))


def test_opens_on_the_failure_rate_only_after_min_calls() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(4):
        b.record(ok=False, duration_s=0.001)
    assert b.state is State.CLOSED  # 4 calls: fewer than min_calls
    for _ in range(5):
        b.record(ok=True, duration_s=0.001)
    b.record(ok=False, duration_s=0.001)
    assert b.state is State.OPEN  # 5 of 10 failed
    assert not b.allow()


def test_opens_on_the_slow_call_rate() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(ok=True, duration_s=0.2)
    assert b.state is State.OPEN


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(9):
        b.record(ok=False, duration_s=0.001)
    clock.now += 11
    for _ in range(9):
        b.record(ok=True, duration_s=0.001)
    b.record(ok=False, duration_s=0.001)
    assert b.state is State.CLOSED


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(ok=False, duration_s=0.001)
    clock.now += SETTINGS.wait_s * 1.5 + 0.01  # past the longest jittered wait
    assert b.allow()
    assert b.state is State.HALF_OPEN
    assert not b.allow()
    b.record(ok=True, duration_s=0.001)
    assert b.state is State.CLOSED
    assert b.allow()


def test_a_failed_probe_reopens_with_a_longer_wait() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(ok=False, duration_s=0.001)
    clock.now += 1.6
    assert b.allow()
    b.record(ok=False, duration_s=0.001)
    assert b.state is State.OPEN
    clock.now += 1.6
    assert not b.allow()  # the wait doubled
    clock.now += 1.6
    assert b.allow()


def test_a_cancelled_probe_lets_another_caller_probe() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        b.record(ok=False, duration_s=0.001)
    clock.now += 1.6
    assert b.allow()
    b.release()
    assert b.allow()


async def test_no_traffic_at_all_the_dependency_comes_back_the_breaker_closes() -> None:
    clock = FakeClock()
    board = BreakerBoard(SETTINGS, clock=clock, rng=random.Random(1))
    healthy = False

    async def probe() -> None:
        if not healthy:
            raise ConnectionRefusedError

    b = board.get("primary@h:1", probe=probe)
    for _ in range(10):
        b.record(ok=False, duration_s=0.001)
    assert b.state is State.OPEN
    clock.now += 1.6
    await board.probe_due()  # still down: reopened, and no request ever came
    assert b.state is State.OPEN
    healthy = True
    for _ in range(10):
        clock.now += 1.0
        await board.probe_due()
        if b.state is State.CLOSED:
            break
    assert b.state is State.CLOSED


def test_local_saturation_is_never_recorded() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(10):
        assert b.allow()
        b.release()  # what the slot router does on NodeBusyError
    assert b.state is State.CLOSED
    assert b.snapshot()["calls_in_window"] == 0


def test_the_board_forgets_routes_that_no_longer_exist() -> None:
    board = BreakerBoard(BreakerSettings())

    async def probe() -> None:
        return None

    board.get("primary@10.0.0.1:6379", probe=probe)
    board.get("replica@10.0.0.2:6379")
    board.get("store")
    board.retain(lambda route: route != "primary@10.0.0.1:6379")
    assert sorted(b.route for b in board.breakers()) == ["replica@10.0.0.2:6379", "store"]
    assert board.get("primary@10.0.0.1:6379").state is State.CLOSED  # a fresh one, if it returns


def test_a_run_of_failures_opens_a_busy_route_at_once() -> None:
    """A node that stops answering after a busy minute: the window still holds thousands of
    successes, so the rate would take half the window to cross its threshold; the run of
    failures opens the breaker at once."""
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(2000):
        b.record(ok=True, duration_s=0.001)
    for _ in range(SETTINGS.consecutive_failures - 1):
        b.record(ok=False, duration_s=0.06)
    assert b.state is State.CLOSED
    b.record(ok=True, duration_s=0.001)  # a success ends the run
    for _ in range(SETTINGS.consecutive_failures - 1):
        b.record(ok=False, duration_s=0.06)
    assert b.state is State.CLOSED
    b.record(ok=False, duration_s=0.06)
    assert b.state is State.OPEN
