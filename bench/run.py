"""``make bench``: the gateway side by side with the naive proxy, on one stack, measured by k6.

Both targets run as deployed: one uvicorn worker each (uvloop, httptools), metrics on. Each
throughput scenario runs against each target in turn, A B A B, for ``--pairs`` pairs; the table
gives requests/s, p50, p95, p99 and errors, the gateway-to-naive ratios per pair and their medians.
The two ceilings (a raw ASGI app and a FastAPI route answering a constant) are measured in the same
run, and so are batch reads (``bench/batch.py``: keys/s of 100 gets per request against single-key
GETs and the naive proxy's loop). The stampede (1,000 users, one cold key, at once) reports store
queries as Postgres counted them (pg_stat_statements). Compare-and-set writers run against the
gateway only (the naive proxy has no preconditions). Saved: ``bench/results/bench-<date>.json``
and ``.png``.

``--baseline COMMIT`` (``make bench BASELINE=COMMIT``) adds a third target in every pair: the
gateway as it was at that commit, served from a temporary work tree over the same stack and the
same seeded keys, so a change is measured against the code before it in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.batch import batches
from bench.common import (
    RESULTS,
    TRACE_SAMPLE_RATIO,
    bench_keys,
    bench_stack,
    checkout,
    create_api_key,
    otlp_sink,
    run_k6,
    seed,
    serve,
)
from bench.fleet import fleet
from devstack import Stack

THROUGHPUT = ("read_hit", "mixed")
TARGETS = ("gateway", "naive")  # the stampede and the plot; the pairs add the baseline


async def k6(script: str, base_url: str, work: Path, **env: str) -> dict[str, Any]:
    """Run a scenario to the end; the figures from its JSON summary."""
    summary_path = work / f"{script}-{uuid.uuid4().hex[:8]}.json"
    proc = run_k6(script, env={"BASE_URL": base_url, "SUMMARY": str(summary_path), **env})
    output, _ = await asyncio.to_thread(proc.communicate, timeout=600)
    if proc.returncode not in (0, 99):  # 99: thresholds crossed, still a result to report
        raise RuntimeError(f"k6 {script} failed ({proc.returncode}):\n{output.decode()[-2000:]}")
    metrics = json.loads(summary_path.read_text())["metrics"]
    duration = metrics["http_req_duration"]["values"]
    failed = metrics.get("http_req_failed", {}).get("values", {})
    result = {
        "rps": round(metrics["http_reqs"]["values"]["rate"], 1),
        "requests": int(metrics["http_reqs"]["values"]["count"]),
        "p50_ms": round(duration["med"], 2),
        "p95_ms": round(duration["p(95)"], 2),
        "p99_ms": round(duration["p(99)"], 2),
        "max_ms": round(duration["max"], 2),
        "errors": int(failed.get("passes", 0)),
        "thresholds_ok": proc.returncode == 0,
    }
    for name in ("cas_won", "cas_lost"):
        if name in metrics:
            result[name] = int(metrics[name]["values"]["count"])
    return result


async def cold_key(stack: Stack, target: str) -> str:
    """A key that only the target's store holds (no cache, no outbox row, no feed message)."""
    key = f"cold-{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        if target == "gateway":
            await conn.execute(
                "INSERT INTO entries (namespace, key, value, content_type, version, cache_seq) "
                "VALUES ('default', $1, $2, 'application/octet-stream', "
                "nextval('entry_version_seq'), currval('entry_version_seq'))",
                key, b"v" * 100,
            )  # fmt: skip
        else:
            await conn.execute(
                "INSERT INTO naive_entries (key, value) VALUES ($1, $2)", key, b"v" * 100
            )
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()
    return key


async def store_reads(stack: Stack, target: str) -> int:
    pattern = "%FROM entries WHERE namespace%" if target == "gateway" else "%FROM naive_entries%"
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        calls: int = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE query LIKE $1",
            pattern,
        )
        return calls
    finally:
        await conn.close()


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--vus", type=int, default=32)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--baseline", default="", help="a commit to measure beside this code")
    parser.add_argument(
        "--replot", type=Path, default=None, help="draw the plot of a saved JSON report again"
    )
    args = parser.parse_args()
    if args.replot is not None:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = bench_keys(args.keys)
    common = {"DURATION": args.duration, "VUS": str(args.vus), "KEY_COUNT": str(args.keys)}
    report: dict[str, Any] = {"vus": args.vus, "duration": args.duration, "pairs": args.pairs}
    with contextlib.ExitStack() as stack_of:
        stack = stack_of.enter_context(bench_stack())
        sink = stack_of.enter_context(otlp_sink())
        work = Path(stack_of.enter_context(tempfile.TemporaryDirectory(prefix="cachegw-bench-")))
        paired: tuple[str, ...] = ("gateway", "naive")
        if args.baseline:
            baseline = stack_of.enter_context(checkout(args.baseline, work))
            report["baseline"] = args.baseline
            paired = ("gateway", "baseline", "naive")
        api_key = create_api_key(stack)
        common["API_KEY"] = api_key  # the naive proxy and the ceilings ignore it
        ceilings: dict[str, Any] = {}
        for ceiling in ("raw-asgi", "fastapi-constant"):
            with serve(ceiling, stack) as base_url:
                ceilings[ceiling] = await k6("read_hit.js", base_url, work, **common)
                print(f"ceiling {ceiling}: {ceilings[ceiling]['rps']} requests/s", flush=True)
        report["ceilings"] = ceilings
        with contextlib.ExitStack() as servers:
            gateway = servers.enter_context(serve("gateway", stack, env=sink.env()))
            urls = {"gateway": gateway, "naive": servers.enter_context(serve("naive", stack))}
            if args.baseline:
                urls["baseline"] = servers.enter_context(
                    serve("baseline", stack, env=sink.env(), source=baseline)
                )
            for name in TARGETS:  # the baseline reads what the gateway wrote: one store
                print(f"{name}: seeding {len(keys)} keys", flush=True)
                await seed(urls[name], keys, api_key=api_key)
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in THROUGHPUT}
            for pair in range(args.pairs):
                for scenario in THROUGHPUT:
                    results = {}
                    for target in paired:  # A then B (then C), every pair
                        results[target] = await k6(f"{scenario}.js", urls[target], work, **common)
                        r = results[target]
                        print(
                            f"pair {pair + 1} {scenario} {target}: {r['rps']} rps, "
                            f"p99 {r['p99_ms']} ms",
                            flush=True,
                        )
                    runs[scenario].append(results)
            report["runs"] = runs
            stampede: dict[str, Any] = {}
            for target in TARGETS:
                key = await cold_key(stack, target)
                result = await k6("stampede.js", urls[target], work, KEY=key, API_KEY=api_key)
                result["store_queries"] = await store_reads(stack, target)
                stampede[target] = result
                print(
                    f"stampede {target}: {result['store_queries']} store queries, "
                    f"p99 {result['p99_ms']} ms",
                    flush=True,
                )
            report["stampede"] = stampede
            report["cas_gateway"] = await k6("cas.js", gateway, work, **common)
            # Batch reads of 100 keys, single-key GETs, the naive proxy's loop (bench/batch.py).
            report["batch"] = await batches(
                stack, work, common, pairs=min(args.pairs, 3), env=sink.env(), urls=urls
            )
        # Read after the gateway stopped, which flushes its last spans.
        report["tracing"] = {
            "sampler": "parentbased_traceidratio", "ratio": float(TRACE_SAMPLE_RATIO),
            "spans_exported": sink.spans, "export_requests": sink.requests,
        }  # fmt: skip
        print(f"tracing: {sink.spans} spans exported in {sink.requests} OTLP requests", flush=True)
        # Read hits through HAProxy with one, two and three instances (bench/fleet.py).
        report["fleet"] = await fleet(stack, work, common, pairs=min(args.pairs, 3), env=sink.env())
    print_report(report)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    json_path = RESULTS / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=1))
    plot(report, RESULTS / f"bench-{stamp}.png")
    print(f"\nsaved bench/results/{json_path.name} and bench-{stamp}.png")
    return 0


def _ratios(pairs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    rps = [ratio(p[a]["rps"], p[b]["rps"]) for p in pairs]
    p99 = [ratio(p[a]["p99_ms"], p[b]["p99_ms"]) for p in pairs]
    return {
        "rps_ratios": rps,
        "p99_ratios": p99,
        "median_rps_ratio": round(statistics.median(rps), 3),
        "median_p99_ratio": round(statistics.median(p99), 3),
    }


def summarize(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scenario, the gateway against the naive proxy (and, with a baseline, the baseline
    against the naive proxy and the gateway against the baseline), pair by pair."""
    out: dict[str, dict[str, Any]] = {}
    for scenario, pairs in report["runs"].items():
        out[scenario] = _ratios(pairs, "gateway", "naive")
        if "baseline" in pairs[0]:
            out[scenario]["baseline_vs_naive"] = _ratios(pairs, "baseline", "naive")
            out[scenario]["gateway_vs_baseline"] = _ratios(pairs, "gateway", "baseline")
    report["summary"] = out
    return out


def print_report(report: dict[str, Any]) -> None:
    summary = summarize(report)
    print()
    columns = ("req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "rps ratio", "p99 ratio")
    widths = (8, 7, 7, 7, 6, 9, 9)
    header = f"{'scenario':<9} {'pair':>4} {'target':<8} " + " ".join(
        f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)
    )
    print(header)
    print("-" * len(header))
    for scenario, pairs in report["runs"].items():
        for index, pair in enumerate(pairs):
            for target in pair:
                r = pair[target]
                tail = ""
                if target in ("gateway", "baseline"):
                    naive = pair["naive"]
                    tail = (
                        f" {ratio(r['rps'], naive['rps']):>9}"
                        f" {ratio(r['p99_ms'], naive['p99_ms']):>9}"
                    )
                figures = (r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"])
                cells = " ".join(f"{v:>{w}}" for v, w in zip(figures, widths, strict=False))
                print(f"{scenario:<9} {index + 1:>4} {target:<8} {cells}{tail}")
        s = summary[scenario]
        print(
            f"{scenario:<9} median gateway/naive: requests/s x{s['median_rps_ratio']}, "
            f"p99 x{s['median_p99_ratio']}"
        )
        for name, label in (("baseline_vs_naive", "baseline/naive"), ("gateway_vs_baseline",
                            "gateway/baseline")):  # fmt: skip
            if name in s:
                print(
                    f"{scenario:<9} median {label}: requests/s x{s[name]['median_rps_ratio']} "
                    f"(pairs {s[name]['rps_ratios']}), p99 x{s[name]['median_p99_ratio']}"
                )
    for name, r in report["ceilings"].items():
        print(f"ceiling {name:<17} {r['rps']:>8} req/s, p99 {r['p99_ms']} ms")
    for target, r in report["stampede"].items():
        print(
            f"stampede {target:<8} 1,000 users, one cold key: {r['store_queries']} store "
            f"queries, p99 {r['p99_ms']} ms, errors {r['errors']}"
        )
    cas = report["cas_gateway"]
    print(
        f"compare-and-set (gateway): {cas['rps']} req/s, won {cas.get('cas_won')}, "
        f"lost (412) {cas.get('cas_lost')}, errors {cas['errors']}"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput and p99 side by side, per scenario and target: the median of the pairs as the
    bar, the spread over the pairs as its whisker, and the headline ratio over the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rps_axis, p99_axis) = plt.subplots(1, 2, figsize=(11, 4))
    scenarios = list(report["runs"])
    width = 0.35
    for axis, field, label in (
        (rps_axis, "rps", "requests/s"), (p99_axis, "p99_ms", "p99 latency, ms"),
    ):  # fmt: skip
        for offset, target in enumerate(TARGETS):
            values = [[p[target][field] for p in report["runs"][s]] for s in scenarios]
            medians = [statistics.median(v) for v in values]
            spread = [
                [m - min(v) for m, v in zip(medians, values, strict=True)],
                [max(v) - m for m, v in zip(medians, values, strict=True)],
            ]
            positions = [i + (offset - 0.5) * width for i in range(len(scenarios))]
            axis.bar(positions, medians, width, yerr=spread, capsize=4, label=target)
        for i, scenario in enumerate(scenarios):
            ratios = [p["gateway"][field] / p["naive"][field] for p in report["runs"][scenario]]
            top = max(max(p[t][field] for t in TARGETS) for p in report["runs"][scenario])
            axis.annotate(
                f"x{statistics.median(ratios):.2f}", (i, top), ha="center", va="bottom",
                fontsize=9, xytext=(0, 3), textcoords="offset points",
            )  # fmt: skip
        axis.set_xticks(range(len(scenarios)), scenarios)
        axis.set_ylabel(label)
        axis.margins(y=0.15)
    for name, style in (("raw-asgi", ":"), ("fastapi-constant", "--")):
        rps_axis.axhline(
            report["ceilings"][name]["rps"], linestyle=style, color="grey", label=f"ceiling: {name}"
        )
    rps_axis.set_title("throughput (gateway / naive proxy above the bars)", fontsize=10)
    p99_axis.set_title("p99 (lower is better)", fontsize=10)
    rps_axis.legend(fontsize=8, loc="upper right")
    figure.suptitle(
        f"{report['vus']} users, {report['duration']} per run, {report['pairs']} A/B pairs: "
        "bars the median of the pairs, whiskers their spread"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
