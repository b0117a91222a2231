"""Stopping a background task: its cancellation is absorbed, the caller's never is."""

from __future__ import annotations

import asyncio

from app import tasks


async def slow_to_stop(stopping: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        stopping.set()
        await asyncio.sleep(0.2)  # cleanup that takes a while
        raise


async def test_stop_absorbs_the_tasks_own_cancellation() -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(slow_to_stop(stopping))
    await asyncio.sleep(0)
    await tasks.stop(task)
    assert task.cancelled()


async def test_a_caller_cancelled_while_stopping_a_task_is_cancelled() -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(slow_to_stop(stopping))
    await asyncio.sleep(0)
    caller = asyncio.create_task(tasks.stop(task))
    await stopping.wait()
    caller.cancel()  # shutdown of the caller itself, while it waits for the task
    await asyncio.gather(caller, return_exceptions=True)
    assert caller.cancelled()
    await asyncio.gather(task, return_exceptions=True)


async def test_stop_reports_a_task_that_failed_instead_of_stopping() -> None:
    async def fails() -> None:
        raise RuntimeError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await tasks.stop(task)  # no "exception was never retrieved", no raise
    assert task.done()
