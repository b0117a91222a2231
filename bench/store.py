"""``make bench-store``: how many writes per second the store commits, with the feed and without.

N pgbench clients drive the store's own write path (``SELECT * FROM cachegw_put(...)``, the very
statement ``Store.put`` sends for a PUT: the entry, its version and its outbox row in one
transaction; plus the batched ``outbox_done`` a gateway sends after the Redis update) on the
benchmark's own Postgres, while M follower processes follow the invalidation feed with the
gateway's own ``InvalidationFeed`` (``bench/store_follower.py``). pgbench, not Python, makes the
load: a client in C costs the two cores the same in every mode, so the ratios are Postgres's.
The delay is measured in a second, shorter phase, through ``Store.put`` itself (4 writers), from
the moment a writer has its commit acknowledged to the moment each follower applied it.

Modes, side by side in every pair (A B C ...): ``bare`` (single-row INSERTs into a table like the
outbox, nothing else: what this Postgres can commit), ``feed-off`` (the write path with no
announcement at all), two floors that no feed design can go below (``entry-only``: the entry's
own locked read and update, as ``cachegw_put`` makes them, with no outbox row; ``append-only``: a
write that appends a version row instead, serialised per key by an advisory lock and checked
against the newest version, as an append-only store's preconditions would need), two candidate
designs past the outbox, also run alone (``chain``: one INSERT per write, the primary key
``(namespace, key, prev)`` as the compare-and-set; ``entry-logged``: the entry carries its
change's transaction id under an index, no outbox row), and one mode per
feed design (``notify``: a NOTIFY from every write's
transaction; ``relay``: one elected relay announces committed rows in batches). Printed and saved
(``bench/results/store-<date>`` ``.json`` and ``.png``): commits/s per mode, the ratio to ``bare``
in the same pair, the delay from a write's commit to its announcement in every follower (p50, p99,
max, and any never announced), and what the followers cost Postgres (connections, statements/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.settings import Settings
from app.store import Store
from bench.common import REPO, RESULTS
from bench.store_follower import PREFIX
from devstack import Stack
from devstack.stacks import postgres_only

FOLLOWER = Path(__file__).with_name("store_follower.py")
STORE_CPU = {0}  # Postgres, pgbench and this process
FOLLOWER_CPU = ("taskset", "-c", "1")
KEYS_PER_WRITER = 1_000
VALUE = b"v" * 100
BARE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_bare (
    id bigserial PRIMARY KEY, namespace text NOT NULL, key text NOT NULL, seq bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now())
"""
KEY = f"'{PREFIX}' || :client_id || '-' || :k"
PGBENCH_SCRIPTS = {
    "bare": f"\\set k random(1, {KEYS_PER_WRITER})\nINSERT INTO bench_bare (namespace, key, seq) "
    f"VALUES ('default', {KEY}, 1);\n",
    "put": f"\\set k random(1, {KEYS_PER_WRITER})\nSELECT * FROM cachegw_put('default', {KEY}, "
    f"'\\x{VALUE.hex()}'::bytea, 'application/octet-stream', NULL, NULL, false, false);\n",
}
# The floors' statements and their tables, in the benchmark's database only (not a migration).
FLOOR_SQL = """
CREATE TABLE IF NOT EXISTS bench_versions (
    namespace text NOT NULL, key text NOT NULL, seq bigint NOT NULL, value bytea,
    content_type text, expires_at timestamptz,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace, key, seq));
CREATE INDEX IF NOT EXISTS bench_versions_xid_idx ON bench_versions (xid);
CREATE OR REPLACE FUNCTION bench_entry_only(p_namespace text, p_key text, p_value bytea,
                                            p_content_type text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE cur_version bigint; new_version bigint;
BEGIN
    SELECT e.version INTO cur_version FROM entries e
     WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
    new_version := nextval('entry_version_seq');
    UPDATE entries SET value = p_value, content_type = p_content_type, version = new_version,
           cache_seq = new_version, expires_at = NULL, updated_at = now()
     WHERE namespace = p_namespace AND key = p_key;
    RETURN new_version;
END $$;
CREATE OR REPLACE FUNCTION bench_append_only(p_namespace text, p_key text, p_value bytea,
                                             p_content_type text)
RETURNS TABLE (r_seq bigint, r_created boolean) LANGUAGE plpgsql AS $$
DECLARE cur_seq bigint; new_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_namespace || chr(1) || p_key, 0));
    SELECT v.seq INTO cur_seq FROM bench_versions v
     WHERE v.namespace = p_namespace AND v.key = p_key ORDER BY v.seq DESC LIMIT 1;
    new_seq := nextval('entry_version_seq');
    INSERT INTO bench_versions (namespace, key, seq, value, content_type)
    VALUES (p_namespace, p_key, new_seq, p_value, p_content_type);
    RETURN QUERY SELECT new_seq, cur_seq IS NULL;
END $$;
CREATE TABLE IF NOT EXISTS bench_chain (
    namespace text NOT NULL, key text NOT NULL, prev bigint NOT NULL, seq bigint NOT NULL,
    value bytea, content_type text, expires_at timestamptz,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (namespace, key, prev));
CREATE INDEX IF NOT EXISTS bench_chain_xid_idx ON bench_chain (xid);
CREATE OR REPLACE FUNCTION bench_chain(p_namespace text, p_key text, p_value bytea,
                                       p_content_type text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE cur_seq bigint; new_seq bigint;
BEGIN
    LOOP  -- a concurrent write took the same successor: read the newest again
        SELECT c.seq INTO cur_seq FROM bench_chain c
         WHERE c.namespace = p_namespace AND c.key = p_key ORDER BY c.prev DESC LIMIT 1;
        new_seq := nextval('entry_version_seq');
        INSERT INTO bench_chain (namespace, key, prev, seq, value, content_type)
        VALUES (p_namespace, p_key, coalesce(cur_seq, 0), new_seq, p_value, p_content_type)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            RETURN new_seq;
        END IF;
    END LOOP;
END $$;
CREATE TABLE IF NOT EXISTS bench_logged (LIKE entries INCLUDING ALL);
ALTER TABLE bench_logged ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS bench_logged_xid_idx ON bench_logged (xid);
CREATE OR REPLACE FUNCTION bench_entry_logged(p_namespace text, p_key text, p_value bytea,
                                              p_content_type text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE cur_version bigint; new_version bigint;
BEGIN
    SELECT e.version INTO cur_version FROM bench_logged e
     WHERE e.namespace = p_namespace AND e.key = p_key FOR UPDATE;
    new_version := nextval('entry_version_seq');
    UPDATE bench_logged SET value = p_value, content_type = p_content_type,
           version = new_version, cache_seq = new_version, expires_at = NULL,
           updated_at = now(), xid = pg_current_xact_id()
     WHERE namespace = p_namespace AND key = p_key;
    RETURN new_version;
END $$;
"""
# Every writer's keys exist before the first run: each mode measures writes over existing keys.
SEED_ENTRIES = f"""
INSERT INTO entries (namespace, key, value, content_type, version, cache_seq)
SELECT 'default', '{PREFIX}' || c || '-' || k, '\\x{VALUE.hex()}'::bytea,
       'application/octet-stream', 0, 0
  FROM generate_series(0, $1::int - 1) c, generate_series(1, {KEYS_PER_WRITER}) k
ON CONFLICT DO NOTHING
"""
# The floors' tables start with the same keys (in the table's columns' order: xid last).
SEED_FLOORS = f"""
INSERT INTO bench_chain (namespace, key, prev, seq, value, content_type)
SELECT namespace, key, -1, 0, value, content_type FROM entries
 WHERE key LIKE '{PREFIX}%' ON CONFLICT DO NOTHING;
INSERT INTO bench_logged SELECT *, '0'::xid8 FROM entries
 WHERE key LIKE '{PREFIX}%' ON CONFLICT DO NOTHING
"""
_ARGS = f"'default', {KEY}, '\\x{VALUE.hex()}'::bytea, 'application/octet-stream'"
PGBENCH_SCRIPTS["entry-only"] = (
    f"\\set k random(1, {KEYS_PER_WRITER})\nSELECT bench_entry_only({_ARGS});\n"
)
PGBENCH_SCRIPTS["append-only"] = (
    f"\\set k random(1, {KEYS_PER_WRITER})\nSELECT * FROM bench_append_only({_ARGS});\n"
)
PGBENCH_SCRIPTS["chain"] = f"\\set k random(1, {KEYS_PER_WRITER})\nSELECT bench_chain({_ARGS});\n"
PGBENCH_SCRIPTS["entry-logged"] = (
    f"\\set k random(1, {KEYS_PER_WRITER})\nSELECT bench_entry_logged({_ARGS});\n"
)
# Modes that run their statement alone: no followers, no outbox trigger, no delay phase.
ALONE = frozenset({"bare", "entry-only", "append-only", "chain", "entry-logged"})
DONE_BATCH = (
    "UPDATE cache_outbox SET applied_at = now() WHERE applied_at IS NULL AND id = ANY(ARRAY("
    "SELECT id FROM cache_outbox WHERE applied_at IS NULL ORDER BY id LIMIT 5000))"
)
DELAY_WRITERS = 4
DELAY_S = 3.0
NOT_WRITES = (
    "query NOT ILIKE '%cachegw_put%' AND query NOT ILIKE '%applied_at = now()%'"
    " AND query NOT ILIKE '%bench_bare%' AND query NOT ILIKE '%pg_stat%'"
)


@dataclass
class Run:
    mode: str
    commits: int = 0
    seconds: float = 0.0
    committed: dict[int, float] = field(default_factory=dict)  # seq -> when its commit returned

    @property
    def rate(self) -> float:
        return round(self.commits / self.seconds, 1) if self.seconds else 0.0


def feed_env(stack: Stack, mode: str) -> dict[str, str]:
    env = {**os.environ, **stack.env(), "PYTHONPATH": str(REPO)}
    # Feed off: the followers only listen (nothing is announced, no relay polls).
    env["CACHEGW_FEED__MODE"] = "relay" if mode == "relay" else "notify"
    return env


@contextlib.contextmanager
def followers(stack: Stack, mode: str, count: int, work: Path) -> Any:
    """``count`` follower processes, ready; yields the files they write their records to."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for index in range(count):
            out = work / f"{mode}-{index}-{time.monotonic_ns()}.json"
            # In production the gateways run beside, not on, the store's cores: here the
            # followers get CPU 1 of their own (Postgres and pgbench have CPU 0, see main), so
            # what they spend does not pass for the store's ceiling.
            proc = subprocess.Popen(
                [*FOLLOWER_CPU, sys.executable, str(FOLLOWER), str(out)], cwd=REPO,
                env=feed_env(stack, mode),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append((proc, out))
        for proc, _ in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("a follower did not start")
        yield [out for _, out in procs]
    finally:
        for proc, _ in procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


async def write_path(stack: Stack, mode: str, writers: int, duration_s: float) -> Run:
    """``writers`` concurrent PUTs through ``Store.put`` for ``duration_s``."""
    feed = {"mode": mode} if mode in ("notify", "relay") else {}
    settings = Settings(pg={"dsn": stack.pg_dsn, "pool_max_size": writers}, feed=feed)
    store = Store(settings.pg)
    await store.start()
    run = Run(mode)
    done: list[int] = []
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration_s

    async def writer(index: int) -> None:
        i = 0
        while loop.time() < stop_at:
            key = f"{PREFIX}{index}-{i % KEYS_PER_WRITER}"
            result = await store.put(
                "default", key, VALUE, content_type="application/octet-stream", ttl_ms=None,
                if_match=None, if_exists=False, if_none_match=False, deadline=loop.time() + 10,
            )  # fmt: skip
            run.committed[result.seq] = time.time()
            done.append(result.outbox_id)
            run.commits += 1
            i += 1

    async def mark_done() -> None:  # as the gateway's outbox does, in batches
        while True:
            await asyncio.sleep(0.05)
            ids, done[:] = list(done), []
            await store.outbox_done(ids, deadline=loop.time() + 10)

    marker = loop.create_task(mark_done())
    started = loop.time()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    run.seconds = loop.time() - started
    marker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await marker
    await store.aclose()
    return run


async def pgbench(stack: Stack, script: str, *, clients: int, duration_s: float, work: Path,
                  options: str = "") -> float:  # fmt: skip
    """pgbench's committed transactions per second (connection time excluded)."""
    path = work / f"script-{time.monotonic_ns()}.sql"
    path.write_text(script)
    parts = urlsplit(stack.pg_dsn)
    env = {
        **os.environ, "PGHOST": parts.hostname or "127.0.0.1", "PGPORT": str(parts.port),
        "PGUSER": parts.username or "", "PGDATABASE": parts.path.lstrip("/"),
        "PGOPTIONS": options,
    }  # fmt: skip
    if parts.password:
        env["PGPASSWORD"] = parts.password
    proc = await asyncio.create_subprocess_exec(
        str(stack.postgres.host.pg_bin() / "pgbench"), "-n", "-c", str(clients), "-j", "2",
        "-T", str(int(duration_s)), "-f", str(path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    match = re.search(rb"tps = ([0-9.]+) \(without initial connection time\)", out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed: {err.decode()[-500:]}")
    return float(match.group(1))


async def mark_done(dsn: str, stop: asyncio.Event) -> None:
    """What the gateways' outboxes do after each Redis update, in batches every 50 ms."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            await conn.execute(DONE_BATCH)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await conn.close()


async def pg_counts(conn: asyncpg.Connection[asyncpg.Record]) -> tuple[int, int]:
    """Client connections now, and statements other than the writes' so far."""
    connections = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    )
    statements = await conn.fetchval(
        f"SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements WHERE {NOT_WRITES}"
    )
    return int(connections), int(statements)


def delays(run: Run, records: list[Path]) -> dict[str, Any]:
    """Commit-to-announcement delay in every follower, in ms; writes some follower never got."""
    values: list[float] = []
    missed = 0
    for path in records:
        applied = {int(k): v for k, v in json.loads(path.read_text())["applied"].items()}
        for seq, at in run.committed.items():
            got = applied.get(seq)
            if got is None:
                missed += 1
            else:
                values.append(max(0.0, got - at) * 1000)
    if not values:
        return {"missed": missed}
    values.sort()
    return {
        "p50_ms": round(values[len(values) // 2], 2),
        "p99_ms": round(values[int(len(values) * 0.99)], 2),
        "max_ms": round(values[-1], 2),
        "announcements": len(values),
        "missed": missed,
    }


async def one(stack: Stack, mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        trigger = "DISABLE" if mode in ("feed-off", "bare") else "ENABLE"
        await conn.execute(f"ALTER TABLE cache_outbox {trigger} TRIGGER cache_outbox_notify")
        base_connections, _ = await pg_counts(conn)
        with followers(stack, mode, args.followers if mode != "bare" else 0, work) as records:
            await asyncio.sleep(1.0)  # the followers settle (a relay is elected)
            connections, statements = await pg_counts(conn)
            stop = asyncio.Event()
            marker = asyncio.get_running_loop().create_task(mark_done(stack.pg_dsn, stop))
            begun = time.monotonic()
            script = PGBENCH_SCRIPTS[mode if mode in ALONE else "put"]
            options = "-c cachegw.feed_notify=off" if mode == "relay" else ""
            tps = await pgbench(
                stack, script, clients=args.writers, duration_s=args.duration, work=work,
                options=options,
            )  # fmt: skip
            _, statements_after = await pg_counts(conn)
            spent = time.monotonic() - begun
            stop.set()
            await marker
            result: dict[str, Any] = {"commits_per_s": round(tps, 1)}
            if mode not in ALONE and mode != "feed-off":
                run = await write_path(stack, mode, DELAY_WRITERS, DELAY_S)
                await asyncio.sleep(2.0)  # what is still on its way arrives
        if mode not in ALONE:
            # The followers' own statements: catch-up, position checks, a relay's reads.
            result["followers"] = {
                "connections": connections - base_connections,
                "statements_per_s": round((statements_after - statements) / spent, 1),
            }
            if mode != "feed-off":
                result["delay"] = delays(run, records)
        return result
    finally:
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--followers", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--modes", default="bare,entry-only,append-only,chain,entry-logged,feed-off,notify,relay"
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    # Postgres (started below, a child of this process) and pgbench inherit CPU 0 alone.
    os.sched_setaffinity(0, STORE_CPU)
    report: dict[str, Any] = {
        "writers": args.writers, "followers": args.followers, "duration_s": args.duration,
        "pairs": args.pairs, "modes": modes, "runs": [],
    }  # fmt: skip
    with (
        postgres_only(REPO / ".bench-stack-store") as stack,
        tempfile.TemporaryDirectory(prefix="cachegw-store-") as tmp,
    ):
        conn = await asyncpg.connect(stack.pg_dsn)
        try:
            await conn.execute(BARE_TABLE)
            await conn.execute(FLOOR_SQL)
            await conn.execute(SEED_ENTRIES, args.writers)
            await conn.execute(SEED_FLOORS)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()
        for pair in range(args.pairs):
            results = {}
            for mode in modes:
                results[mode] = await one(stack, mode, args, Path(tmp))
                r = results[mode]
                print(
                    f"pair {pair + 1} {mode}: {r['commits_per_s']} commits/s"
                    + (f", delay {r['delay']}" if "delay" in r else "")
                    + (f", followers {r['followers']}" if "followers" in r else ""),
                    flush=True,
                )
            report["runs"].append(results)
    summary: dict[str, Any] = {}
    for mode in modes:
        ratios = [r[mode]["commits_per_s"] / r["bare"]["commits_per_s"] for r in report["runs"]]
        summary[mode] = {
            "median_commits_per_s": round(
                statistics.median(r[mode]["commits_per_s"] for r in report["runs"]), 1
            ),
            "ratios_to_bare": [round(x, 3) for x in ratios],
            "median_ratio_to_bare": round(statistics.median(ratios), 3),
        }
        print(
            f"{mode:<9} {summary[mode]['median_commits_per_s']:>9} commits/s, "
            f"x{summary[mode]['median_ratio_to_bare']} of bare "
            f"(pairs {summary[mode]['ratios_to_bare']})"
        )
    report["summary"] = summary
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"store-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    plot(report, RESULTS / f"store-{stamp}.png")
    print(f"saved bench/results/{path.name} and store-{stamp}.png")
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    modes = report["modes"]
    medians = [report["summary"][m]["median_commits_per_s"] for m in modes]
    colours = ["grey" if m in ALONE else "tab:blue" for m in modes]
    bars = axis.bar(modes, medians, color=colours)
    for bar, mode in zip(bars, modes, strict=True):
        axis.annotate(
            f"x{report['summary'][mode]['median_ratio_to_bare']}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
        )  # fmt: skip
    axis.set_ylabel("commits/s (median of pairs)")
    axis.set_title(
        f"{report['writers']} writers, {report['followers']} followers, "
        f"{report['duration_s']:g} s per run, {report['pairs']} pairs"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
