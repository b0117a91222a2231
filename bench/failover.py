"""``make bench-failover``: a primary is SIGKILLed under a constant 1,500 GET/s, gateway vs naive.

For each target in turn (the gateway as deployed, then ``bench/naive_proxy.py``) on the same
local stack: seed 10,000 keys of 100 bytes, start k6 (``tests/load/failover.js``, constant
arrival rate, 20 s), SIGKILL the primary of one shard 5 s in, note when its replica is promoted,
restart the killed node afterwards. Printed per target: errors, dropped iterations, p50/p99/max
latency, requests served per second over time, and the healthy shards' throughput during the
outage against before it. Saved: ``bench/results/failover-<date>.json`` and ``.png``.
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

from bench.common import (
    RESULTS,
    Sample,
    bench_keys,
    bench_stack,
    create_api_key,
    otlp_sink,
    percentile,
    read_samples,
    run_k6,
    seed,
    serve,
    split_by_owner,
)
from devstack import Stack
from devstack.cluster_ops import owner_of, primaries

KILL_AT_S = 5.0


def promotion_watch(
    stack: Stack, slot: int, killed_id: object, *, timeout_s: float
) -> float | None:
    """Seconds until ``slot`` has a new owner (polled every 50 ms), or None."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if owner_of(stack, slot)["id"] != killed_id:
                return time.monotonic() - started
        except Exception:  # the cluster is mid-failover: ask again
            pass
        time.sleep(0.05)
    return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def wait_for_traffic(csv_path: Path, *, timeout_s: float = 60) -> None:
    """Until k6 has sent requests (it writes its CSV about once a second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_size, csv_path) > 4096:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("k6 sent no traffic")


def whole_seconds(samples: list[Sample], start_ms: int) -> int:
    """How many whole seconds from ``start_ms`` to the last sample (a partial last one is left
    out of the per-second series)."""
    return int(max((s.at_ms - start_ms) / 1000 for s in samples)) if samples else 0


def summarize(
    samples: list[Sample], *, start_ms: int, kill_s: float, promoted_s: float | None
) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    durations = [s.duration_ms for s in samples]
    # Whole seconds only: the last one k6 was still sending in is cut short (its few requests
    # still count in the totals), and drawn as a second it looked like a drop to zero.
    seconds = whole_seconds(samples, start_ms)

    def per_second(selected: list[Sample]) -> list[int]:
        counts = [0] * seconds
        for sample in selected:
            index = int((sample.at_ms - start_ms) / 1000)
            if 0 <= index < seconds:
                counts[index] += 1
        return counts

    healthy = [s for s in ok if "shard=healthy" in s.tags]
    by_second: list[list[float]] = [[] for _ in range(seconds)]
    for sample in samples:
        index = int((sample.at_ms - start_ms) / 1000)
        if 0 <= index < seconds:
            by_second[index].append(sample.duration_ms)
    outage_end = kill_s + (promoted_s if promoted_s is not None else 4.0)

    def rate(selected: list[Sample], begin_s: float, end_s: float) -> float:
        if end_s <= begin_s:
            return 0.0
        inside = [s for s in selected if begin_s * 1000 <= s.at_ms - start_ms < end_s * 1000]
        return len(inside) / (end_s - begin_s)

    before = rate(healthy, 1.0, kill_s)
    during = rate(healthy, kill_s, outage_end)
    return {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "p50_ms": round(percentile(durations, 0.50), 2),
        "p99_ms": round(percentile(durations, 0.99), 2),
        "max_ms": round(max(durations, default=0.0), 2),
        "served_per_s": per_second(ok),
        "p99_ms_per_s": [round(percentile(d, 0.99), 1) for d in by_second],
        "healthy_served_per_s": per_second(healthy),
        "victim_served_per_s": per_second([s for s in ok if "shard=victim" in s.tags]),
        "healthy_rps_before": round(before, 1),
        "healthy_rps_during_outage": round(during, 1),
        "healthy_ratio": round(during / before, 3) if before else None,
    }


async def run_target(
    target: str,
    stack: Stack,
    keys: list[str],
    work: Path,
    args: argparse.Namespace,
    api_key: str,
    gateway_env: dict[str, str],
) -> dict[str, Any]:
    victim = primaries(stack)[0]
    victim_port = int(victim["port"])  # type: ignore[call-overload]
    victim_slot = victim["slots"][0][0]  # type: ignore[index]
    split = split_by_owner(stack, target, keys, victim["id"])
    keys_file = work / f"keys-{target}.json"
    keys_file.write_text(json.dumps(split))
    with serve(target, stack, env=gateway_env if target == "gateway" else None) as base_url:
        print(f"{target}: seeding {len(keys)} keys", flush=True)
        await seed(base_url, keys, api_key=api_key)
        csv_path = work / f"{target}.csv"
        summary_path = work / f"{target}-summary.json"
        env = {
            "BASE_URL": base_url, "KEYS_FILE": str(keys_file), "RATE": str(args.rate),
            "DURATION": f"{args.duration}s", "SUMMARY": str(summary_path), "API_KEY": api_key,
        }  # fmt: skip
        print(
            f"{target}: {args.rate} GET/s for {args.duration} s, "
            f"primary :{victim_port} killed at {KILL_AT_S} s",
            flush=True,
        )
        k6 = run_k6("failover.js", env=env, csv_path=csv_path)
        await wait_for_traffic(csv_path)
        start_ms = int(time.time() * 1000)
        await asyncio.sleep(KILL_AT_S - 1)  # the CSV shows traffic about a second late
        kill_ms = int(time.time() * 1000)
        await asyncio.to_thread(stack.kill_node, victim_port)
        promoted_s = await asyncio.to_thread(
            promotion_watch, stack, victim_slot, victim["id"], timeout_s=args.duration
        )
        output, _ = await asyncio.to_thread(k6.communicate, timeout=args.duration + 120)
        if k6.returncode not in (0, 99):
            raise RuntimeError(f"k6 failed ({k6.returncode}):\n{output.decode()[-2000:]}")
    await asyncio.to_thread(stack.start_node, victim_port)
    await asyncio.to_thread(stack.wait_cluster_ok, 60)
    summary = json.loads(summary_path.read_text())
    samples = read_samples(csv_path)
    start_ms = min((s.at_ms for s in samples), default=start_ms)
    kill_s = (kill_ms - start_ms) / 1000
    result = summarize(samples, start_ms=start_ms, kill_s=kill_s, promoted_s=promoted_s)
    result["kill_at_s"] = round(kill_s, 2)
    dropped = summary["metrics"].get("dropped_iterations", {}).get("values", {}).get("count", 0)
    iterations = summary["metrics"].get("iterations", {}).get("values", {}).get("count", 0)
    result["dropped_iterations"] = int(dropped)
    result["dropped_pct"] = round(100 * dropped / max(1, dropped + iterations), 2)
    result["promoted_after_s"] = None if promoted_s is None else round(promoted_s, 2)
    return result


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print()
    header = (
        f"{'target':<8} {'requests':>8} {'errors':>6} {'dropped':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>8} {'healthy during/before':>22}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        ratio = "n/a" if r["healthy_ratio"] is None else f"{100 * r['healthy_ratio']:.0f}%"
        print(
            f"{name:<8} {r['requests']:>8} {r['errors']:>6} {r['dropped_pct']:>7}% "
            f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r['max_ms']:>8} {ratio:>22}"
        )
    for name, r in results.items():
        print(f"\n{name}: served per second: {r['served_per_s']}")
        print(f"{name}: healthy shards per second: {r['healthy_served_per_s']}")
        print(f"{name}: p99 ms per second: {r['p99_ms_per_s']}")
        print(f"{name}: promoted {r['promoted_after_s']} s after the kill")


def plot(results: dict[str, dict[str, Any]], path: Path, *, duration_s: int | None = None) -> None:
    """Per target, requests served per second (all, healthy shards, killed shard) and, on the
    right axis, the p99 of each second; ``duration_s`` trims series saved before the partial
    last second was left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(results), 1, figsize=(10, 3.4 * len(results)), sharex=True, squeeze=False
    )
    axes = axes[:, 0]
    worst_ms = max(max(r["p99_ms_per_s"], default=1.0) for r in results.values())
    for axis, (name, r) in zip(axes, results.items(), strict=True):
        count = len(r["served_per_s"]) if duration_s is None else duration_s
        seconds = [i + 0.5 for i in range(count)]  # each count covers [i, i+1)
        lines = [
            axis.plot(seconds, r[field][:count], label=label, color=color)[0]
            for field, label, color in (
                ("served_per_s", "served (all)", "tab:blue"),
                ("healthy_served_per_s", "served (healthy shards)", "tab:green"),
                ("victim_served_per_s", "served (killed shard)", "tab:red"),
            )
        ]
        latency = axis.twinx()
        lines += latency.plot(
            seconds, r["p99_ms_per_s"][:count], label="p99 of the second (right)",
            color="tab:purple", linestyle="-.", marker=".",
        )  # fmt: skip
        latency.set_yscale("log")
        latency.set_ylim(1, worst_ms * 2)  # one scale for every target, to compare them
        latency.set_ylabel("p99, ms (log)")
        lines.append(
            axis.axvline(r["kill_at_s"], color="black", linestyle="--", label="primary SIGKILL")
        )
        if r["promoted_after_s"] is not None:
            lines.append(
                axis.axvline(
                    r["kill_at_s"] + r["promoted_after_s"], color="grey", linestyle=":",
                    label="replica promoted",
                )
            )  # fmt: skip
        axis.set_title(
            f"{name}: p99 {r['p99_ms']} ms, max {r['max_ms']} ms, errors {r['errors']}, "
            f"dropped {r['dropped_pct']}%"
        )
        axis.set_ylabel("requests/s")
        axis.set_ylim(bottom=0)
        axis.legend(handles=lines, loc="lower left", fontsize=8)
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1500)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--targets", default="gateway,naive")
    parser.add_argument(
        "--replot", type=Path, default=None, help="draw the plot of a saved JSON report again"
    )
    args = parser.parse_args()
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        plot(saved["results"], args.replot.with_suffix(".png"), duration_s=saved["duration_s"])
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = bench_keys(args.keys)
    results: dict[str, dict[str, Any]] = {}
    with (
        bench_stack() as stack,
        otlp_sink() as sink,
        tempfile.TemporaryDirectory(prefix="cachegw-bench-") as tmp,
    ):
        api_key = create_api_key(stack)
        for target in args.targets.split(","):
            results[target] = await run_target(
                target, stack, keys, Path(tmp), args, api_key, sink.env()
            )
        print(f"tracing: {sink.spans} spans exported in {sink.requests} OTLP requests", flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    json_path = RESULTS / f"failover-{stamp}.json"
    json_path.write_text(
        json.dumps(
            {
                "when": stamp,
                "rate": args.rate,
                "duration_s": args.duration,
                "kill_at_s": KILL_AT_S,
                "results": results,
            },
            indent=1,
        )
    )
    png_path = RESULTS / f"failover-{stamp}.png"
    plot(results, png_path)
    print_table(results)
    print(f"\nsaved {json_path.relative_to(RESULTS.parent.parent)} and {png_path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
