"""``make soak``: two workers, one writer per key, many readers, a fault every minute, checked.

On a stack of its own (``.soak-stack/``), ``cachegw serve --workers 2`` with the default settings
(the real TTLs: version map 120 s, tombstones 60 s, outbox retention 120 s) takes, for ``SOAK_S``
seconds (600 by default):

* one writer per key (``--keys``, 40), each doing PUT (90%) or DELETE (10%) in turn, with a new
  body every time, so a read's body says which write it came from;
* ``--readers`` (32) readers on persistent connections, each reading random keys;
* a fault every ``--fault-every-s`` (60 s), in turn: a primary SIGKILLed (and started again once
  its replica took over), a primary started again from an older snapshot (``SAVE``, 20 s of
  writes, SIGKILL, start at once: before any failover), a replica restarted empty, Postgres
  restarted, the invalidation feed's listening connections terminated.

Every read is checked against the acknowledged operations that precede and overlap it
(``bench/history.py``); at the end each key's row in Postgres is compared with its last
acknowledged operation (a lost write), after a bounded wait for the caches to converge. Printed:
violations, lost writes, and per phase (the time from one fault to the next) reads, errors, p99
and max. Saved: ``bench/results/soak-<date>.json`` and ``.png``. Exits 1 on any violation or lost
write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import REPO, RESULTS, create_api_key, percentile
from bench.history import WRONG_STATUSES, KeyHistory, Op, Read, check_read, last_acknowledged
from devstack import Stack
from devstack.cluster_ops import primaries
from devstack.rawhttp import Connection
from devstack.serving import GATEWAY, serve_gateway
from devstack.stacks import full_stack

UNKNOWN_OUTCOME = "/problems/write-outcome-unknown"


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    detail: str = ""


@dataclass
class Soak:
    base: str
    api_key: str
    keys: list[str]
    histories: dict[str, KeyHistory] = field(default_factory=dict)
    written: dict[bytes, Op] = field(default_factory=dict)
    latencies: list[tuple[float, float, int]] = field(default_factory=list)  # at, s, status
    phases: list[Phase] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wrong_writes: list[str] = field(default_factory=list)  # a 500, a 401, a 403
    started: float = 0.0
    delete_share: float = 0.1

    def __post_init__(self) -> None:
        self.histories = {key: KeyHistory() for key in self.keys}

    def connection(self) -> Connection:
        host, port = self.base.removeprefix("http://").rsplit(":", 1)
        return Connection(host, int(port), headers={"Authorization": f"Bearer {self.api_key}"})

    def now(self) -> float:
        return time.monotonic() - self.started

    async def writer(self, key: str, until: float) -> None:
        rng = random.Random()
        connection = self.connection()
        history = self.histories[key]
        try:
            while time.monotonic() < until:
                await asyncio.sleep(rng.uniform(0.1, 0.4))
                deleting = bool(history.ops) and rng.random() < self.delete_share
                body = None if deleting else f"{key}|{uuid.uuid4().hex}".encode()
                start = self.now()
                method, payload = ("DELETE", b"") if body is None else ("PUT", body)
                try:
                    reply = await asyncio.wait_for(
                        connection.request(method, f"/v1/keys/{key}", body=payload), 10
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    await connection.close()
                    op = Op("delete" if deleting else "put", start, self.now(), "unknown", body)
                else:
                    end = self.now()
                    if reply.status in (200, 201, 204, 404):
                        version = None
                        if reply.status in (200, 201) and "etag" in reply.headers:
                            version = int(reply.headers["etag"].strip('"'))
                        op = Op("delete" if deleting else "put", start, end, "ok", body, version)
                    elif UNKNOWN_OUTCOME.encode() in reply.content:
                        op = Op("delete" if deleting else "put", start, end, "unknown", body)
                    else:
                        op = Op("delete" if deleting else "put", start, end, "failed", body)
                        self._count(f"write {reply.status}")
                        if reply.status in WRONG_STATUSES:
                            self.wrong_writes.append(
                                f"{key}: {reply.status} {reply.content[:200]!r}"
                            )
                history.ops.append(op)
                if body is not None:
                    self.written[body] = op
        finally:
            await connection.close()

    async def reader(self, until: float) -> None:
        rng = random.Random()
        connection = self.connection()
        try:
            while time.monotonic() < until:
                key = rng.choice(self.keys)
                start = self.now()
                try:
                    reply = await asyncio.wait_for(connection.request("GET", f"/v1/keys/{key}"), 10)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    await connection.close()
                    self._count(f"read {type(exc).__name__}")
                    self.latencies.append((start, self.now() - start, 0))
                    await asyncio.sleep(0.05)
                    continue
                end = self.now()
                self.latencies.append((start, end - start, reply.status))
                if reply.status not in (200, 404):
                    self._count(f"read {reply.status}")
                etag = reply.headers.get("etag")
                self.histories[key].reads.append(
                    Read(
                        start, end, reply.status, reply.content if reply.status == 200 else b"",
                        int(etag.strip('"')) if etag else None,
                        "fwd=stale" in reply.headers.get("cache-status", ""),
                        float(reply.headers.get("age", "0") or 0),
                    )
                )  # fmt: skip
        finally:
            await connection.close()

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


# -- faults --------------------------------------------------------------------------------


def _primary(stack: Stack, rng: random.Random) -> dict[str, object]:
    return rng.choice(primaries(stack))


def _port(node: dict[str, object]) -> int:
    return int(node["port"])  # type: ignore[call-overload]


async def kill_a_primary(stack: Stack, rng: random.Random) -> str:
    victim = _primary(stack, rng)
    port = _port(victim)
    await asyncio.to_thread(stack.kill_node, port)
    promoted = await _wait(
        lambda: all(n["id"] != victim["id"] for n in primaries(stack)), timeout_s=30
    )
    await asyncio.to_thread(stack.start_node, port)
    return f"primary :{port} SIGKILLed, replica promoted: {promoted}, node started again"


async def primary_from_an_older_snapshot(stack: Stack, rng: random.Random) -> str:
    victim = _primary(stack, rng)
    port = _port(victim)
    await asyncio.to_thread(stack.snapshot_node, port)
    await asyncio.sleep(20)  # writes go on: the snapshot falls behind them
    await asyncio.to_thread(stack.kill_node, port)
    await asyncio.to_thread(stack.start_node, port)
    return f"primary :{port} restarted from a snapshot 20 s old, before any failover"


async def restart_a_replica_empty(stack: Stack, rng: random.Random) -> str:
    replicas = [n for n in stack.cluster_nodes() if n["role"] == "replica"]
    victim = rng.choice(replicas)
    port = _port(victim)
    await asyncio.to_thread(stack.kill_node, port)
    await asyncio.to_thread(stack.forget_snapshot, port)
    await asyncio.to_thread(stack.start_node, port)
    return f"replica :{port} restarted empty"


async def restart_postgres(stack: Stack, rng: random.Random) -> str:
    await asyncio.to_thread(stack.stop_postgres)
    await asyncio.sleep(2)
    await asyncio.to_thread(stack.start_postgres)
    return "Postgres stopped for 2 s and started again"


async def kill_the_feed_listeners(stack: Stack, rng: random.Random) -> str:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND (query LIKE 'LISTEN%' "
            "OR query LIKE '%pg_current_snapshot%')"
        )
    finally:
        await conn.close()
    return f"{killed} feed listener connections terminated"


FAULTS: list[tuple[str, Callable[[Stack, random.Random], Awaitable[str]]]] = [
    ("primary SIGKILL", kill_a_primary),
    ("primary from an older snapshot", primary_from_an_older_snapshot),
    ("replica restarted empty", restart_a_replica_empty),
    ("Postgres restart", restart_postgres),
    ("feed listener killed", kill_the_feed_listeners),
]


async def _wait(predicate: Callable[[], bool], *, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await asyncio.to_thread(predicate):
                return True
        await asyncio.sleep(0.2)
    return False


async def faults(
    soak: Soak, stack: Stack, until: float, every_s: float, rng: random.Random, only: str
) -> None:
    soak.phases.append(Phase("steady", 0.0))
    turn = 0
    while True:
        wake = soak.started + (turn + 0.5) * every_s
        if wake >= until - 10:
            break
        await asyncio.sleep(max(0.0, wake - time.monotonic()))
        chosen = [FAULTS[int(n) - 1] for n in only.split(",")] if only else FAULTS
        name, fault = chosen[turn % len(chosen)]
        soak.phases[-1].end = soak.now()
        phase = Phase(name, soak.now())
        soak.phases.append(phase)
        print(f"  {phase.start:6.1f} s: {name}", flush=True)
        try:
            phase.detail = await fault(stack, rng)
        except Exception as exc:  # a fault that could not be made is reported, not fatal
            phase.detail = f"could not be made: {exc!r}"
        print(f"           {phase.detail}", flush=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(stack.up)  # every node running again, the cluster ok
        turn += 1
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    soak.phases[-1].end = soak.now()


# -- the run --------------------------------------------------------------------------------


@contextlib.contextmanager
def soak_stack() -> Iterator[Stack]:
    with full_stack(
        REPO / ".soak-stack", echo=lambda line: print(f"  stack: {line}", flush=True)
    ) as stack:
        yield stack


async def final_states(stack: Stack, keys: list[str]) -> dict[str, tuple[bytes | None, int | None]]:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT key, value, version FROM entries WHERE namespace = 'default' "
            "AND key = ANY($1::text[]) AND (expires_at IS NULL OR expires_at > now())",
            keys,
        )
    finally:
        await conn.close()
    found = {row["key"]: (bytes(row["value"]), row["version"]) for row in rows}
    return {key: found.get(key, (None, None)) for key in keys}


async def converged(soak: Soak, *, timeout_s: float) -> list[str]:
    """Keys whose fresh read does not show their last acknowledged state (after a wait)."""
    connection = soak.connection()
    deadline = time.monotonic() + timeout_s
    pending = set(soak.keys)
    try:
        while pending and time.monotonic() < deadline:
            for key in sorted(pending):
                reply = await connection.request("GET", f"/v1/keys/{key}")
                body = reply.content if reply.status == 200 else None
                fresh = "fwd=stale" not in reply.headers.get("cache-status", "")
                finals = last_acknowledged(soak.histories[key].ops)
                if fresh and reply.status in (200, 404) and body in {b for b, _ in finals}:
                    pending.discard(key)
            if pending:
                await asyncio.sleep(0.5)
    finally:
        await connection.close()
    return sorted(pending)


def phase_table(soak: Soak) -> list[dict[str, Any]]:
    table = []
    for phase in soak.phases:
        inside = [(d, s) for at, d, s in soak.latencies if phase.start <= at < phase.end]
        durations = [d for d, _ in inside]
        table.append(
            {
                **asdict(phase),
                "reads": len(inside),
                "errors": sum(1 for _, s in inside if s not in (200, 404)),
                "p99_ms": round(percentile(durations, 0.99) * 1000, 1),
                "max_ms": round(max(durations, default=0.0) * 1000, 1),
            }
        )
    return table


def plot(result: dict[str, Any], soak: Soak, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 5.0
    buckets: dict[int, list[float]] = {}
    failed: dict[int, int] = {}
    for at, duration, status in soak.latencies:
        buckets.setdefault(int(at // width), []).append(duration)
        if status not in (200, 404):
            failed[int(at // width)] = failed.get(int(at // width), 0) + 1
    xs = sorted(buckets)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot([x * width for x in xs], [percentile(buckets[x], 0.99) * 1000 for x in xs],
             label="read p99 (5 s)", color="tab:blue")  # fmt: skip
    top.set_yscale("log")
    top.set_ylabel("ms")
    bottom.bar([x * width for x in xs], [len(buckets[x]) / width for x in xs], width=width,
               color="tab:green", label="reads/s")  # fmt: skip
    bottom.bar([x * width for x in xs], [failed.get(x, 0) / width for x in xs], width=width,
               color="tab:red", label="failed reads/s")  # fmt: skip
    bottom.set_ylabel("reads/s")
    for axis in (top, bottom):
        for phase in soak.phases[1:]:
            axis.axvline(phase.start, color="grey", linestyle=":")
    for phase in soak.phases[1:]:
        top.text(phase.start, top.get_ylim()[1], phase.name, rotation=90, va="top", fontsize=7)
    top.set_title(
        f"soak {result['duration_s']} s: {result['reads']} reads, {result['writes']} writes, "
        f"{result['violations']} violations, {result['lost_writes']} lost writes"
    )
    top.legend(loc="lower right", fontsize=8)
    bottom.legend(loc="lower right", fontsize=8)
    bottom.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with soak_stack() as stack, contextlib.ExitStack() as exits:
        api_key = create_api_key(stack)
        base_url = exits.enter_context(
            serve_gateway(
                stack,
                RESULTS,
                command=[*GATEWAY, "--workers", "2"],
                log_name=".soak-gateway",
                keep_log=args.keep_log,
                timeout_s=60,
            )
        )
        run_id = uuid.uuid4().hex[:6]
        soak = Soak(base_url, api_key, [f"soak-{run_id}-{i}" for i in range(args.keys)])
        soak.started = time.monotonic()
        until = soak.started + args.duration
        print(f"soak: {args.duration} s, {args.keys} keys, {args.readers} readers, "
              f"a fault every {args.fault_every_s:g} s", flush=True)  # fmt: skip
        await asyncio.gather(
            *(soak.writer(key, until) for key in soak.keys),
            *(soak.reader(until) for _ in range(args.readers)),
            faults(soak, stack, until, args.fault_every_s, rng, args.faults),
        )
        print("  converging ...", flush=True)
        await asyncio.to_thread(stack.up)
        unconverged = await converged(soak, timeout_s=90)
        finals = await final_states(stack, soak.keys)
    violations: list[dict[str, Any]] = []
    reads = 0
    for key, history in soak.histories.items():
        for read in history.reads:
            reads += 1
            problem = check_read(history, read, soak.written)
            if problem is not None:
                violations.append({"key": key, "at_s": round(read.start, 3), "problem": problem})
    violations += [{"key": "", "at_s": None, "problem": f"write: {w}"} for w in soak.wrong_writes]
    lost = [
        {"key": key, "store": None if state[1] is None else state[1]}
        for key, state in finals.items()
        if state[0] not in {b for b, _ in last_acknowledged(soak.histories[key].ops)}
    ]
    writes = sum(len(h.ops) for h in soak.histories.values())
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "keys": args.keys,
        "readers": args.readers,
        "reads": reads,
        "writes": writes,
        "unknown_outcome_writes": sum(
            1 for h in soak.histories.values() for op in h.ops if op.outcome == "unknown"
        ),
        "violations": len(violations),
        "lost_writes": len(lost),
        "not_converged": unconverged,
        "errors": soak.errors,
        "phases": phase_table(soak),
        "violation_samples": violations[:50],
        "lost_samples": lost[:50],
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    json_path = RESULTS / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, soak, RESULTS / f"soak-{stamp}.png")
    print()
    print(f"{'phase':<32} {'reads':>7} {'errors':>6} {'p99 ms':>8} {'max ms':>8}")
    for row in result["phases"]:
        print(f"{row['name']:<32} {row['reads']:>7} {row['errors']:>6} {row['p99_ms']:>8} "
              f"{row['max_ms']:>8}")  # fmt: skip
    print(
        f"\nreads {reads}, writes {writes} ({result['unknown_outcome_writes']} of unknown outcome)"
    )
    print(f"errors: {soak.errors}")
    print(f"violations: {len(violations)}; lost writes: {len(lost)}; not converged: {unconverged}")
    for v in violations[:10]:
        print(f"  {v}")
    print(f"saved {json_path.name} and soak-{stamp}.png")
    return 1 if violations or lost else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_S", "600")))
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--fault-every-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--faults", default="", help="comma-separated fault numbers (1-5) only")
    parser.add_argument("--keep-log", action="store_true", help="keep the gateway's log")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the stack on SIGTERM too
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
