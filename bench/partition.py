"""``make bench-partition``: network faults in the fault lab, the gateway beside the naive proxy.

In a lab of its own (``devstack/labcluster.py``: six Redis nodes and a Postgres, each in a
network namespace, one node behind a delay proxy), each target in turn (the gateway with its
default settings, API keys off; then ``bench/naive_proxy.py``) takes the same load: one writer
per key (PUT only, a new body every time), readers on persistent connections, every read checked
against the acknowledged writes around it (``bench/history.py``), through two faults:

1. **A minority primary** (the issue's scenario 1 and its heal): a primary cut off from the rest
   of the cluster, not from the targets, for ``SPLIT_S``; then healed, and ``AFTER_S`` more of
   load once it has rejoined as a replica.
2. **Latency and loss on one primary** (scenario 4): 50-200 ms added to each round trip (the
   node's delay proxy, 25-100 ms each way) and 20% of the packets between it and the targets
   dropped, for ``SLOW_S``.

Printed per target and fault: reads, failed requests (no answer, or an answer other than 200 and
404; writes too), reads older than an acknowledged write (beyond the staleness the answer
declared: the naive proxy declares none), answers the gateway marked stale, p99 and max, over
the fault's window (from its start to the end of the load after it).
Saved: ``bench/results/partition-<date>.json``. Needs root (namespaces, nftables).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import percentile, save_json, serve
from bench.history import check_read
from bench.soak import Soak
from devstack.labcluster import LabCluster
from devstack.netlab import require

KEYS = 45
READERS = 24
SPLIT_S = 10.0
AFTER_S = 8.0
SLOW_S = 12.0
LEAD_S = 3.0
SLOWED = 3  # the lab node behind the delay proxy (promoted before the latency fault)
NODE_TIMEOUT_MS = 2000

Fault = Callable[[LabCluster], Awaitable[tuple[float, float]]]


async def _until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s} s")
        await asyncio.sleep(0.1)


async def minority_primary(lab: LabCluster) -> tuple[float, float]:
    """Cut a primary off from the other nodes; heal; wait until it is a replica; the fault's
    window, from the cut to the end of the load after the heal (seconds since it began)."""
    victim = lab.primaries()[0]
    others = [node.address for node in lab.nodes if node is not victim]
    began = time.monotonic()
    await asyncio.to_thread(lab.lab.cut, victim.member, others)
    await asyncio.sleep(SPLIT_S)
    await asyncio.to_thread(lab.lab.heal, victim.member)
    await _until(lambda: lab.role(victim) == "slave", timeout_s=30)
    await asyncio.sleep(AFTER_S)
    return 0.0, time.monotonic() - began


async def slow_primary(lab: LabCluster) -> tuple[float, float]:
    victim = lab.nodes[SLOWED]
    began = time.monotonic()
    await asyncio.to_thread(lab.delay, victim, 25, 100)
    await asyncio.to_thread(lab.lab.lose, victim.member, 20, peers=[lab.lab.gateway_address])
    await asyncio.sleep(SLOW_S)
    await asyncio.to_thread(lab.lab.heal, victim.member)
    await asyncio.to_thread(lab.delay, victim, 0)
    return 0.0, time.monotonic() - began


FAULTS: dict[str, Fault] = {
    "minority primary": minority_primary,
    "slow, lossy primary": slow_primary,
}


async def _prepare(lab: LabCluster, fault: str) -> None:
    """Every node up and healthy, no rule; the slowed node a primary for its fault."""
    for node in lab.nodes:
        lab.lab.heal(node.member)
        if node.proxied:
            lab.delay(node, 0)
    await asyncio.to_thread(lab.wait_healthy, 60)
    victim = lab.nodes[SLOWED]
    if fault == "slow, lossy primary" and lab.role(victim) != "master":
        await asyncio.to_thread(lab.cli, victim, "CLUSTER", "FAILOVER")
        await _until(lambda: lab.role(victim) == "master", timeout_s=15)
        await asyncio.to_thread(lab.wait_healthy, 60)


async def run_fault(lab: LabCluster, base: str, target: str, fault: str) -> dict[str, Any]:
    await _prepare(lab, fault)
    soak = Soak(base, "unused", [f"part-{uuid.uuid4().hex[:6]}-{i}" for i in range(KEYS)])
    soak.delete_share = 0.0
    soak.started = time.monotonic()
    until = time.monotonic() + 120.0  # a bound: the load stops once the fault is over
    tasks = [
        *(asyncio.create_task(soak.writer(key, until)) for key in soak.keys),
        *(asyncio.create_task(soak.reader(until)) for _ in range(READERS)),
    ]
    try:
        await asyncio.sleep(LEAD_S)
        start, end = await FAULTS[fault](lab)
        await asyncio.sleep(1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(soak, target, fault, LEAD_S + start, LEAD_S + end)


def summarize(soak: Soak, target: str, fault: str, start: float, end: float) -> dict[str, Any]:
    reads = violations = declared = 0
    samples: list[str] = []
    for key, history in soak.histories.items():
        for read in history.reads:
            if not start <= read.start < end:
                continue
            reads += 1
            declared += read.stale
            problem = check_read(history, read, soak.written)
            if problem is not None and read.status == 200:  # a 500 is a failed read
                violations += 1
                if len(samples) < 5:
                    samples.append(f"{key} at {read.start:.2f} s: {problem}")
    latencies = [s for at, s, _status in soak.latencies if start <= at < end]
    failed_reads = sum(1 for at, _s, status in soak.latencies
                       if start <= at < end and status not in (200, 404))  # fmt: skip
    failed_writes = sum(
        1 for h in soak.histories.values() for op in h.ops
        if start <= op.start < end and op.outcome != "ok"
    )  # fmt: skip
    return {
        "target": target,
        "fault": fault,
        "window_s": round(end - start, 1),
        "reads": reads,
        "failed_reads": failed_reads,
        "failed_writes": failed_writes,
        "stale_reads": violations,
        "declared_stale": declared,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies, default=0.0) * 1000, 1),
        "violation_samples": samples,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'fault':<20} {'target':<8} {'reads':>7} {'failed r/w':>11} {'stale':>6} "
          f"{'declared':>8} {'p99 ms':>8} {'max ms':>8}")  # fmt: skip
    for r in rows:
        failed = f"{r['failed_reads']}/{r['failed_writes']}"
        print(f"{r['fault']:<20} {r['target']:<8} {r['reads']:>7} {failed:>11} "
              f"{r['stale_reads']:>6} {r['declared_stale']:>8} {r['p99_ms']:>8} "
              f"{r['max_ms']:>8}")  # fmt: skip
    for r in rows:
        for sample in r["violation_samples"]:
            print(f"  {r['target']}, {r['fault']}: {sample}")


async def run(lab: LabCluster) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for target in ("gateway", "naive"):
        with serve(target, lab, env={"CACHEGW_AUTH__ENABLED": "false"}) as base:
            for fault in FAULTS:
                print(f"  {target}: {fault} ...", flush=True)
                rows.append(await run_fault(lab, base, target, fault))
    return rows


def main() -> int:
    require()
    root = Path(tempfile.mkdtemp(prefix="cachegw-bench-lab-"))
    lab = LabCluster(root, node_timeout_ms=NODE_TIMEOUT_MS, postgres=True, proxied=[SLOWED])
    print("bench-partition: starting the fault lab ...", flush=True)
    lab.up()
    try:
        rows = asyncio.run(run(lab))
    finally:
        lab.down()
        with contextlib.suppress(OSError):
            root.rmdir()
    print_table(rows)
    save_json(
        "partition",
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), "node_timeout_ms": NODE_TIMEOUT_MS,
         "keys": KEYS, "readers": READERS, "results": rows},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
