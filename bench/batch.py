"""Batch reads (part of ``make bench``; alone: ``make bench-batch``): keys/s of ``POST /v1/batch``
with 100 gets per request, against single-key GETs of the same keys, and against the naive
proxy's batch (a loop of single-key Redis reads), in A/B pairs on one stack.

Every target is one uvicorn worker (as ``make bench``); k6 runs on the same two cores with the
same virtual users. A batch's keys/s is its requests/s times its size; every op's own status is
checked. Printed: keys/s and p99 per target and pair, and the median per-pair ratios. The target
is at least 10x the keys/s of single-key GETs.
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

BATCH_SIZE = 100
RUNS = (("batch", "gateway", "batch_get.js"), ("single", "gateway", "read_hit.js"),
        ("naive loop", "naive", "batch_get.js"))  # fmt: skip


async def batches(
    stack: Stack, work: Path, common: dict[str, str], *, pairs: int, env: dict[str, str],
    urls: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The runs (each of ``RUNS`` in every pair) and their summary."""
    from bench.run import k6  # the one k6 runner of make bench

    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as servers:
        if urls is None:
            urls = {
                "gateway": servers.enter_context(serve("gateway", stack, env=env)),
                "naive": servers.enter_context(serve("naive", stack)),
            }
            keys = bench_keys(int(common["KEY_COUNT"]))
            for target in urls:
                await seed(urls[target], keys, api_key=common["API_KEY"])
        for pair in range(pairs):
            results: dict[str, Any] = {}
            for name, target, script in RUNS:
                r = await k6(script, urls[target], work, BATCH_SIZE=str(BATCH_SIZE), **common)
                size = 1 if script == "read_hit.js" else BATCH_SIZE
                r["keys_per_s"] = round(r["rps"] * size, 1)
                results[name] = r
                print(
                    f"pair {pair + 1} {name}: {r['keys_per_s']} keys/s ({r['rps']} req/s), "
                    f"p99 {r['p99_ms']} ms, errors {r['errors']}, thresholds ok "
                    f"{r['thresholds_ok']}",
                    flush=True,
                )
            runs.append(results)
    summary = {
        "batch_vs_single": [
            round(run["batch"]["keys_per_s"] / run["single"]["keys_per_s"], 2) for run in runs
        ],
        "batch_vs_naive_loop": [
            round(run["batch"]["keys_per_s"] / run["naive loop"]["keys_per_s"], 2) for run in runs
        ],
    }
    for name in list(summary):
        summary[f"median_{name}"] = statistics.median(summary[name])  # type: ignore[arg-type]
    print(
        f"batch of {BATCH_SIZE}: x{summary['median_batch_vs_single']} the keys/s of single-key "
        f"GETs (pairs {summary['batch_vs_single']}), x{summary['median_batch_vs_naive_loop']} "
        f"the naive loop's",
        flush=True,
    )
    return {"batch_size": BATCH_SIZE, "runs": runs, "summary": summary}


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--vus", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    common = {"DURATION": args.duration, "VUS": str(args.vus), "KEY_COUNT": str(args.keys)}
    with bench_stack() as stack, tempfile.TemporaryDirectory(prefix="cachegw-bench-") as work:
        common["API_KEY"] = create_api_key(stack)
        report = await batches(stack, Path(work), common, pairs=args.pairs, env={})
    save_json("batch", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
