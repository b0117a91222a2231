"""Background tasks: each component that runs one stops it the same way; fire-and-forget work
of the request path is held by a ``Spawner``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


async def stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished.

    The task's own cancellation (or failure, which is logged) is absorbed; a cancellation of the
    caller while it waits is not: it propagates, as every cancellation must.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s had failed", task.get_name(), exc_info=task.exception())


class Spawner:
    """Work started on the request path that nobody waits for: fills, early refreshes, unlocks.

    ``_tasks`` holds every such task while it runs (asyncio keeps only a weak reference to a
    task, so one not held here could be collected mid-run). ``spawn`` adds a task; only that
    task's done-callback removes it. Its failure (the store or Redis down) has been counted where
    it happened, and is retrieved here, not left to asyncio's "never retrieved" warnings.
    """

    def __init__(self, *, drain_timeout_s: float) -> None:
        self.drain_timeout_s = drain_timeout_s
        self._tasks: set[asyncio.Task[object]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coroutine: Coroutine[object, object, object]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("background cache work failed: %s", exc)

    async def drain(self) -> None:
        """Wait for what is running, up to ``drain_timeout_s`` (at shutdown, and in tests)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.drain_timeout_s)
