"""Degraded mode: the slow-fallback runbook (RUNBOOK.md), automated.

When the p95 of fallback latency stays above the threshold over the window, retries drop to
``retries`` and coalescing applies to every read, not only to loads from the store. The mode ends
by itself once the p95 over the window is back under the threshold (or fallbacks stop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from app import tasks, telemetry
from app.settings import DegradedSettings

log = logging.getLogger(__name__)

MAX_SAMPLES = 100_000


class DegradedMode:
    """Owns ``active``: only ``evaluate`` changes it; the router reads it on every request."""

    def __init__(
        self, settings: DegradedSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.active = False
        self.since: float | None = None
        self.p95_s: float | None = None
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self._task: asyncio.Task[None] | None = None
        telemetry.DEGRADED.set(0)

    def observe(self, latency_s: float) -> None:
        """The latency of one read that the primary did not answer."""
        self._samples.append((self.clock(), latency_s))

    def retries(self, normal: int) -> int:
        return min(normal, self.settings.retries) if self.active else normal

    def evaluate(self) -> bool:
        """Recompute the window's p95 and switch the mode if needed; returns whether active."""
        horizon = self.clock() - self.settings.window_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        if len(self._samples) < self.settings.min_samples:
            self.p95_s = None
            slow = False
        else:
            ordered = sorted(latency for _, latency in self._samples)
            self.p95_s = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            slow = self.p95_s > self.settings.p95_threshold_s
        if slow != self.active:
            self.active = slow
            self.since = self.clock() if slow else None
            telemetry.DEGRADED.set(int(slow))
            log.warning(
                "degraded mode %s (fallback p95 %s over %.0f s)",
                "on" if slow else "off",
                "n/a" if self.p95_s is None else f"{self.p95_s * 1000:.1f} ms",
                self.settings.window_s,
            )
        return self.active

    def snapshot(self) -> dict[str, object]:
        return {
            "active": self.active,
            "since_s": None if self.since is None else round(self.clock() - self.since, 1),
            "fallback_p95_ms": None if self.p95_s is None else round(self.p95_s * 1000, 2),
            "threshold_ms": self.settings.p95_threshold_s * 1000,
            "window_s": self.settings.window_s,
            "samples": len(self._samples),
        }

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.evaluate_interval_s)
            self.evaluate()
