"""Degraded mode on a fake clock: on after sustained slow fallbacks, off after recovery."""

from __future__ import annotations

from app.degraded import DegradedMode
from app.settings import DegradedSettings
from tests.unit.fakes import FakeClock

SETTINGS = DegradedSettings(p95_threshold_s=0.05, window_s=10, min_samples=20, retries=2)


def test_sustained_slow_fallbacks_switch_it_on_and_recovery_off() -> None:
    clock = FakeClock()
    mode = DegradedMode(SETTINGS, clock=clock)
    for _ in range(100):
        mode.observe(0.010)
    assert not mode.evaluate()
    assert mode.retries(3) == 3
    for _ in range(100):
        clock.now += 0.05
        mode.observe(0.120)
    assert mode.evaluate()
    assert mode.retries(3) == 2
    assert mode.snapshot()["active"] is True
    clock.now += 11  # the slow samples leave the window
    for _ in range(100):
        mode.observe(0.005)
    assert not mode.evaluate()
    assert mode.retries(3) == 3


def test_too_few_samples_never_switch_it_on() -> None:
    clock = FakeClock()
    mode = DegradedMode(SETTINGS, clock=clock)
    for _ in range(10):
        mode.observe(1.0)
    assert not mode.evaluate()


def test_it_ends_by_itself_when_fallbacks_stop() -> None:
    clock = FakeClock()
    mode = DegradedMode(SETTINGS, clock=clock)
    for _ in range(50):
        mode.observe(0.5)
    assert mode.evaluate()
    clock.now += 30
    assert not mode.evaluate()
