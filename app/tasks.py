"""Background tasks: each component that runs one stops it the same way."""

from __future__ import annotations

import asyncio
import logging
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
