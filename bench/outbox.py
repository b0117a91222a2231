"""``make bench-outbox``: does the outbox stay bounded under sustained writes?

The gateway as deployed (one worker, ``CACHEGW_OUTBOX__RETAIN_S`` short so that the steady state
comes within the run) takes a constant 300 PUT/s for 60 s from k6 (``tests/load/put_rate.js``)
over 10,000 keys. Every 5 s the benchmark counts the rows of ``cache_outbox``, and those applied
longer ago than the retention (what pruning should already have deleted). Bounded means: the row
count levels off near rate x (retention + the maintenance period) and the overdue rows stay near
zero. Saved: ``bench/results/outbox-<date>.json`` and ``.png``. Exits 1 when not bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from app.outbox import MAINTAIN_EVERY_N_ROUNDS
from app.settings import OutboxSettings
from bench.common import RESULTS, bench_stack, create_api_key, run_k6, serve

SAMPLE_EVERY_S = 5.0


async def count_rows(dsn: str, retain_s: float) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(*) FILTER (WHERE applied_at < now() - $1::float8 "
            "* interval '1 second') FROM cache_outbox",
            retain_s,
        )
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 3.6))
    seconds = [s["at_s"] for s in result["samples"]]
    axis.plot(seconds, [s["rows"] for s in result["samples"]], label="rows", color="tab:blue")
    axis.plot(
        seconds, [s["overdue"] for s in result["samples"]],
        label="applied longer ago than retain_s", color="tab:red",
    )  # fmt: skip
    axis.axhline(result["bound"], color="grey", linestyle="--", label="bound")
    axis.set_title(
        f"outbox rows at {result['rate']} PUT/s, retain_s {result['retain_s']:g}: "
        f"final {result['final_rows']}, max {result['max_rows']}"
    )
    axis.set_xlabel("seconds")
    axis.set_ylabel("rows")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--retain-s", type=float, default=10.0)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    interval_s = OutboxSettings().interval_s
    maintenance_s = MAINTAIN_EVERY_N_ROUNDS * interval_s
    # A row lives its retention after it was applied, plus up to one maintenance period (and a
    # round of slack) before it is deleted.
    bound = int(args.rate * (args.retain_s + maintenance_s + 2 * interval_s) * 1.2)
    samples: list[dict[str, float]] = []
    with bench_stack() as stack, tempfile.TemporaryDirectory(prefix="cachegw-bench-") as tmp:
        api_key = create_api_key(stack)
        env = {"CACHEGW_OUTBOX__RETAIN_S": str(args.retain_s)}
        with serve("gateway", stack, env=env) as base_url:
            summary_path = Path(tmp) / "summary.json"
            print(
                f"{args.rate} PUT/s for {args.duration} s, retain_s {args.retain_s:g}", flush=True
            )
            k6 = run_k6(
                "put_rate.js",
                env={
                    "BASE_URL": base_url, "RATE": str(args.rate),
                    "DURATION": f"{args.duration}s", "SUMMARY": str(summary_path),
                    "API_KEY": api_key,
                },
            )  # fmt: skip
            started = time.monotonic()
            while k6.poll() is None and time.monotonic() - started < args.duration + 120:
                rows, overdue = await count_rows(stack.pg_dsn, args.retain_s)
                at = round(time.monotonic() - started, 1)
                samples.append({"at_s": at, "rows": rows, "overdue": overdue})
                print(f"  {at:6.1f} s: {rows:7d} rows, {overdue:6d} overdue", flush=True)
                await asyncio.sleep(SAMPLE_EVERY_S)
            output, _ = await asyncio.to_thread(k6.communicate, timeout=60)
            if k6.returncode not in (0, 99):
                raise RuntimeError(f"k6 failed ({k6.returncode}):\n{output.decode()[-2000:]}")
        summary = json.loads(summary_path.read_text())
    metrics = summary["metrics"]
    requests = int(metrics["http_reqs"]["values"]["count"])
    failed = round(metrics["http_req_failed"]["values"]["rate"] * requests)
    steady = [s for s in samples if s["at_s"] >= args.retain_s + maintenance_s + 5]
    final_rows = int(samples[-1]["rows"]) if samples else 0
    max_rows = int(max((s["rows"] for s in samples), default=0))
    bounded = bool(steady) and max(s["rows"] for s in steady) <= bound
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rate": args.rate,
        "duration_s": args.duration,
        "retain_s": args.retain_s,
        "maintenance_every_s": maintenance_s,
        "requests": requests,
        "failed": failed,
        "bound": bound,
        "final_rows": final_rows,
        "max_rows": max_rows,
        "max_overdue": int(max((s["overdue"] for s in samples), default=0)),
        "bounded": bounded,
        "samples": samples,
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    json_path = RESULTS / f"outbox-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / f"outbox-{stamp}.png")
    print(
        f"{requests} PUTs ({failed} failed); rows: final {final_rows}, max {max_rows}, bound "
        f"{bound}; most overdue {result['max_overdue']}: {'bounded' if bounded else 'NOT bounded'}"
    )
    print(f"saved {json_path.name} and outbox-{stamp}.png")
    return 0 if bounded else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
