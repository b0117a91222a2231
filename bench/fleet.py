"""Read hits through HAProxy with one, two and three gateway instances (part of ``make bench``).

Three gateways (one uvicorn worker each, separate ports) over one stack, and HAProxy in front of
the first one, two or all three (``devstack/haproxy.py``: round robin, keep-alive, health checks
of ``/readyz``), in
pairs: 1, 2, 3 instances in every pair, the same k6 read-hit scenario through the balancer.
Printed: requests/s and p99 per fleet size, and the ratio to one instance in the same pair.

This machine has two cores, shared by k6, HAProxy and the gateways: a second instance can add a
core's worth at most, and a third only shares the same two cores, so the figures show what the
balancer and the fleet cost, not how a fleet scales on its own machines.

``python -m bench.fleet`` runs it alone (``--pairs``, ``--duration``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_keys, bench_stack, create_api_key, save_json, seed, serve
from devstack import Stack
from devstack.haproxy import balancer

SIZES = (1, 2, 3)


async def fleet(
    stack: Stack, work: Path, common: dict[str, str], *, pairs: int, env: dict[str, str]
) -> dict[str, Any]:
    """The runs (one per fleet size per pair) and their summary."""
    from bench.run import k6  # the one k6 runner of make bench

    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as servers:
        urls = [servers.enter_context(serve("gateway", stack, env=env)) for _ in range(SIZES[-1])]
        await seed(urls[0], bench_keys(int(common["KEY_COUNT"])), api_key=common["API_KEY"])
        for pair in range(pairs):
            results: dict[str, Any] = {}
            for size in SIZES:
                with balancer(urls[:size], work) as lb:
                    results[str(size)] = await k6("read_hit.js", lb.url, work, **common)
                r = results[str(size)]
                print(
                    f"pair {pair + 1} fleet of {size}: {r['rps']} rps, p99 {r['p99_ms']} ms, "
                    f"errors {r['errors']}",
                    flush=True,
                )
            runs.append(results)
    summary = {}
    for size in SIZES:
        ratios = [run[str(size)]["rps"] / run["1"]["rps"] for run in runs]
        summary[str(size)] = {
            "median_rps": round(statistics.median(run[str(size)]["rps"] for run in runs), 1),
            "median_p99_ms": round(statistics.median(run[str(size)]["p99_ms"] for run in runs), 2),
            "rps_ratio_to_one": [round(x, 3) for x in ratios],
            "median_rps_ratio_to_one": round(statistics.median(ratios), 3),
        }
        s = summary[str(size)]
        print(
            f"fleet of {size}: {s['median_rps']} rps (x{s['median_rps_ratio_to_one']} of one), "
            f"p99 {s['median_p99_ms']} ms"
        )
    return {"runs": runs, "summary": summary}


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", default="15s")
    parser.add_argument("--vus", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    common = {"DURATION": args.duration, "VUS": str(args.vus), "KEY_COUNT": str(args.keys)}
    with bench_stack() as stack, tempfile.TemporaryDirectory(prefix="cachegw-fleet-") as tmp:
        common["API_KEY"] = create_api_key(stack)
        report = await fleet(stack, Path(tmp), common, pairs=args.pairs, env={})
    report.update({"pairs": args.pairs, "duration": args.duration, "vus": args.vus})
    save_json("fleet", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
