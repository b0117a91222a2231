"""``make bench-hotpath``: the gateway's own cost per request, without an HTTP server or a client.

GET hits of seeded keys are sent straight to the ASGI app, 32 at a time, in this process (as
deployed otherwise: API keys on, metrics on), and the CPU time per request is measured. Against
``--baseline COMMIT`` (the code at that commit, from a temporary work tree), runs alternate
A B A B for ``--pairs`` pairs, each in a fresh process, so a change to the hot path is measured
against the code before it in one run. It is the part of ``make bench``'s figures that the code
controls; uvicorn, the client and the event loop's socket work are left out.
Saved: ``bench/results/hotpath-<date>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_stack, checkout, create_api_key, save_json

WORKER = Path(__file__).with_name("hotpath_worker.py")


def run_worker(source: Path | None, env: dict[str, str], args: argparse.Namespace) -> Any:
    extra = {} if source is None else {"PYTHONPATH": str(source)}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(args.requests), str(args.keys)],
        env={**os.environ, **env, **extra}, cwd=source or Path.cwd(), check=True,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--baseline", default="", help="a commit to measure beside this code")
    args = parser.parse_args()
    report: dict[str, Any] = {"requests": args.requests, "pairs": args.pairs, "runs": []}
    with bench_stack() as stack, tempfile.TemporaryDirectory(prefix="cachegw-hot-") as tmp:
        env = {**stack.env(), "CACHEGW_API_KEY": create_api_key(stack)}
        targets: dict[str, Path | None] = {"gateway": None}
        with contextlib.ExitStack() as exits:
            if args.baseline:
                report["baseline"] = args.baseline
                targets["baseline"] = exits.enter_context(checkout(args.baseline, Path(tmp)))
            for pair in range(args.pairs):
                results = {name: run_worker(src, env, args) for name, src in targets.items()}
                report["runs"].append(results)
                print(
                    f"pair {pair + 1}: "
                    + ", ".join(f"{n} {r['cpu_us']} us CPU/request" for n, r in results.items()),
                    flush=True,
                )
    for name in targets:
        values = [run[name]["cpu_us"] for run in report["runs"]]
        report[f"{name}_median_cpu_us"] = round(statistics.median(values), 1)
    if args.baseline:
        ratios = [r["baseline"]["cpu_us"] / r["gateway"]["cpu_us"] for r in report["runs"]]
        report["baseline_over_gateway"] = [round(x, 3) for x in ratios]
        print(f"baseline/gateway CPU per request: median x{statistics.median(ratios):.3f} "
              f"(pairs {report['baseline_over_gateway']})")  # fmt: skip
    print({k: v for k, v in report.items() if k.endswith("median_cpu_us")})
    save_json("hotpath", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
