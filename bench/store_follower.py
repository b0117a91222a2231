"""One follower of ``bench/store.py``: a process that follows the invalidation feed as a gateway
does (the gateway's own ``InvalidationFeed`` over the gateway's own ``Store``), and records when
each announcement of the benchmark's keys arrived.

Runs until its stdin closes, then writes ``{"applied": {seq: unix time}, ...}`` to the file named
by its first argument. The feed's settings come from the environment (``CACHEGW_*``), as a
gateway's would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from app.feed import FeedState, InvalidationFeed, VersionMap
from app.settings import Settings
from app.store import Store

PREFIX = "bench-store-"


async def follow() -> dict[int, float]:
    """Follow the feed until stdin closes; when each benchmark key's announcement arrived."""
    settings = Settings()
    store = Store(settings.pg)
    await store.start()
    applied: dict[int, float] = {}

    def on_invalidate(_namespace: str, key: str, seq: int) -> None:
        if key.startswith(PREFIX) and seq not in applied:
            applied[seq] = time.time()

    feed = InvalidationFeed(
        store,
        settings.feed,
        versions=VersionMap(max_keys=1_000_000, ttl_s=3600),
        state=FeedState(),
        on_invalidate=on_invalidate,
        catch_up_window_s=settings.outbox.retain_s,
    )
    await feed.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin
    await feed.aclose()
    await store.aclose()
    return applied


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps({"applied": asyncio.run(follow())}))
