"""``make bench-ratelimit``: one API key's rate, held by three gateways together.

Three gateway processes (separate ports) over one stack; one key limited to 50 requests a second
with a burst of 50; each process offered 100 GETs a second of that key for 10 s (300/s in all).
Run twice, side by side: ``fleet`` (``rate_scope=fleet``, the default: one token bucket in Redis)
and ``process`` (each process its own bucket). Printed and saved (``bench/results/ratelimit-<date>``
``.json``): requests admitted in all, against the bucket's allowance (burst + rate x time). The
goal: ``fleet`` within 10% of the allowance. Exits 1 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

import httpx

from bench.common import REPO, bench_stack, save_json, serve
from devstack import Stack

INSTANCES = 3
RATE = 50.0
BURST = 50
OFFERED_PER_INSTANCE = 100.0
TOLERANCE = 0.10


def limited_key(stack: Stack) -> str:
    proc = subprocess.run(
        [
            sys.executable, "-m", "app.cli", "keys", "create", "--namespace", "default",
            "--scopes", "read", "--rate", str(RATE), "--burst", str(BURST),
            "--description", "bench-ratelimit",
        ],
        cwd=REPO, env={**os.environ, **stack.env()}, check=True, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


async def offer(base_url: str, key: str, *, duration_s: float, counts: dict[int, int]) -> None:
    """``OFFERED_PER_INSTANCE`` GETs a second (open loop: a slow answer does not slow the
    arrivals), each counted by its status."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def one(i: int) -> None:
            try:
                status = (await client.get(f"/v1/keys/rate-{i % 100}", timeout=5)).status_code
            except httpx.HTTPError:
                status = 0
            counts[status] = counts.get(status, 0) + 1

        loop = asyncio.get_running_loop()
        began = loop.time()
        pending: set[asyncio.Task[None]] = set()
        total = int(duration_s * OFFERED_PER_INSTANCE)
        for i in range(total):
            await asyncio.sleep(max(0.0, began + i / OFFERED_PER_INSTANCE - loop.time()))
            task = loop.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=10)


async def one_run(stack: Stack, scope: str, duration_s: float) -> dict[str, Any]:
    key = limited_key(stack)  # a fresh key: a bucket of its own, full
    env = {"CACHEGW_AUTH__RATE_SCOPE": scope}
    with contextlib.ExitStack() as servers:
        urls = [servers.enter_context(serve("gateway", stack, env=env)) for _ in range(INSTANCES)]
        counts: dict[int, int] = {}
        began = time.monotonic()
        await asyncio.gather(*(offer(u, key, duration_s=duration_s, counts=counts) for u in urls))
        elapsed = time.monotonic() - began
    admitted = sum(n for status, n in counts.items() if status in (200, 404))
    allowance = BURST + RATE * duration_s
    return {
        "scope": scope,
        "offered": sum(counts.values()),
        "statuses": {str(k): v for k, v in sorted(counts.items())},
        "admitted": admitted,
        "allowance": allowance,
        "ratio_to_allowance": round(admitted / allowance, 3),
        "elapsed_s": round(elapsed, 2),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    runs = []
    with bench_stack() as stack:
        for scope in ("fleet", "process"):
            run = await one_run(stack, scope, args.duration)
            runs.append(run)
            print(
                f"{scope:<8} admitted {run['admitted']} of {run['offered']} offered; allowance "
                f"{run['allowance']:g} (x{run['ratio_to_allowance']}); statuses {run['statuses']}",
                flush=True,
            )
    fleet = runs[0]
    met = abs(fleet["ratio_to_allowance"] - 1) <= TOLERANCE
    report = {
        "instances": INSTANCES, "rate_per_s": RATE, "burst": BURST,
        "offered_per_s": OFFERED_PER_INSTANCE * INSTANCES, "duration_s": args.duration,
        "runs": runs, "goal": f"fleet within {TOLERANCE:.0%} of the allowance", "met": met,
    }  # fmt: skip
    print(f"goal {'met' if met else 'MISSED'}")
    save_json("ratelimit", report)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
