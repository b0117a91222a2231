"""One measurement of ``bench/hotpath.py``, in its own process: whichever ``app`` is first on
``sys.path`` (this repository, or a checkout of an older commit) serves the requests.

Prints one JSON line: requests, seconds, CPU seconds and CPU microseconds per request.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from asgi_lifespan import LifespanManager

from app.main import create_app

CONCURRENCY = 32


async def call(app: Any, state: dict[str, Any], method: str, path: str, body: bytes = b"") -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"authorization", AUTH),
                    (b"content-length", b"%d" % len(body))],
        "state": state,
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


AUTH = f"Bearer {os.environ['CACHEGW_API_KEY']}".encode()


async def main(requests: int, keys: int) -> dict[str, Any]:
    app = create_app()
    state: dict[str, Any] = {}

    async def served(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = state
        await app(scope, receive, send)

    async with LifespanManager(served, startup_timeout=30):
        names = [f"hot-{i}" for i in range(keys)]
        for name in names:
            assert await call(served, state, "PUT", f"/v1/keys/{name}", b"v" * 100) in (200, 201)
        for name in names:  # warm: every key read once
            assert await call(served, state, "GET", f"/v1/keys/{name}") == 200
        per_worker = requests // CONCURRENCY

        async def worker(offset: int) -> None:
            for i in range(per_worker):
                status = await call(served, state, "GET", f"/v1/keys/{names[(offset + i) % keys]}")
                if status != 200:
                    raise RuntimeError(f"GET answered {status}")

        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(w * 31) for w in range(CONCURRENCY)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    done = per_worker * CONCURRENCY
    return {"requests": done, "seconds": round(wall, 3), "cpu_s": round(cpu, 3),
            "cpu_us": round(cpu / done * 1e6, 1)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
