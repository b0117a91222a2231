"""``make bench-versions``: what the version map costs per note, per key, and to the event loop.

Three figures, each against its goal (issue 11, item 6):

* ``note`` at 100,000 live keys, in the two steady states a busy gateway lives in: new keys
  pushing the oldest out, and announced keys noted again (goal: under 5 us each);
* the longest event-loop stall while ``Outbox.note_pending`` notes 50,000 pending keys read from
  a real Postgres (goal: under 20 ms), measured by a task that asks to wake every millisecond;
* memory per key (tracemalloc), with keys of 19 characters.

Saved: ``bench/results/versions-<date>.json``. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg

from app.feed import VersionMap
from app.outbox import Outbox
from app.settings import OutboxSettings, PostgresSettings
from app.store import Store
from bench.common import REPO, RESULTS
from devstack import stacks

LIVE_KEYS = 100_000
NOTES = 50_000
PENDING_KEYS = 50_000
NOTE_GOAL_US = 5.0
STALL_GOAL_MS = 20.0


def key(i: int) -> str:
    return f"user:{i:014d}"  # 19 characters


def note_cost_us() -> dict[str, float]:
    """Mean cost of one note with 100,000 live keys, for new keys and for keys noted again."""
    versions = VersionMap(max_keys=LIVE_KEYS, ttl_s=3600)
    for i in range(LIVE_KEYS):
        versions.note("default", key(i), i)
    fresh = [key(LIVE_KEYS + i) for i in range(NOTES)]
    began = time.perf_counter()
    for i, name in enumerate(fresh):
        versions.note("default", name, i)  # each pushes the oldest key out
    new_keys = (time.perf_counter() - began) / NOTES * 1e6
    rng = random.Random(7)
    again = [key(LIVE_KEYS + rng.randrange(NOTES)) for _ in range(NOTES)]
    began = time.perf_counter()
    for i, name in enumerate(again):
        versions.note("default", name, i)
    noted_again = (time.perf_counter() - began) / NOTES * 1e6
    # Expiry by age: a clock that moves so that one key expires for each new one noted.
    now = [0.0]
    ttl_s = 120.0
    versions = VersionMap(max_keys=10 * LIVE_KEYS, ttl_s=ttl_s, clock=lambda: now[0])
    for i in range(LIVE_KEYS):
        now[0] += ttl_s / LIVE_KEYS
        versions.note("default", key(i), i)
    began = time.perf_counter()
    for i, name in enumerate(fresh):
        now[0] += ttl_s / LIVE_KEYS
        versions.note("default", name, i)
    expiring = (time.perf_counter() - began) / NOTES * 1e6
    return {
        "new_keys_us": round(new_keys, 3),
        "noted_again_us": round(noted_again, 3),
        "expiring_us": round(expiring, 3),
    }


def bytes_per_key() -> float:
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    versions = VersionMap(max_keys=LIVE_KEYS, ttl_s=3600)
    for i in range(LIVE_KEYS):
        versions.note("default", key(i), i)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    del versions
    return total / LIVE_KEYS


@contextlib.contextmanager
def postgres_only() -> Iterator[str]:
    """A private Postgres of the bench's own (no Redis), migrated: its DSN."""
    with stacks.postgres_only(
        REPO / ".bench-stack-versions", echo=lambda line: print(f"  stack: {line}", flush=True)
    ) as stack:
        yield stack.pg_dsn


class NoCache:
    """``note_pending`` never writes to Redis: nothing is needed here."""

    name = "primary"


async def longest_stall_ms(dsn: str) -> dict[str, float]:
    """The longest time the loop was kept from a 1 ms timer while pending keys were noted."""
    conn = await asyncpg.connect(dsn)
    store = Store(PostgresSettings(dsn=dsn))  # type: ignore[arg-type]
    await store.start()
    try:
        await conn.execute("DELETE FROM cache_outbox WHERE namespace = 'bench-pending'")
        await conn.execute(
            "INSERT INTO cache_outbox (namespace, key, seq) "
            "SELECT 'bench-pending', 'user:' || lpad(g::text, 14, '0'), g "
            "FROM generate_series(1, $1::int) g",
            PENDING_KEYS,
        )
        versions = VersionMap(max_keys=200_000, ttl_s=120)
        outbox = Outbox(
            store, NoCache(), OutboxSettings(), key_prefix="cg",  # type: ignore[arg-type]
            versions=versions,
        )  # fmt: skip
        await outbox.note_pending()  # warm: the plan, the connection
        # As the gateway does after start-up (app/main.py): long-lived objects out of the
        # collector's reach, so a full collection costs what the request path leaves.
        gc.collect()
        gc.freeze()
        rounds: list[float] = []
        for _ in range(3):
            stalls: list[float] = []
            done = asyncio.Event()

            async def ticker(stalls: list[float] = stalls, done: asyncio.Event = done) -> None:
                loop = asyncio.get_running_loop()
                while not done.is_set():
                    asked = loop.time()
                    await asyncio.sleep(0.001)
                    stalls.append(loop.time() - asked - 0.001)

            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.01)
            began = time.perf_counter()
            await outbox.note_pending()
            round_s = time.perf_counter() - began
            done.set()
            await task
            rounds.append(max(stalls) * 1000)
            assert len(versions) >= PENDING_KEYS
        return {"longest_stall_ms": round(max(rounds), 2), "round_s": round(round_s, 3)}
    finally:
        await conn.execute("DELETE FROM cache_outbox WHERE namespace = 'bench-pending'")
        await conn.close()
        await store.aclose()


def main() -> int:
    cost = note_cost_us()
    print(
        f"note at {LIVE_KEYS:,} live keys: new keys {cost['new_keys_us']} us, noted again "
        f"{cost['noted_again_us']} us, expiring by age {cost['expiring_us']} us "
        f"(goal < {NOTE_GOAL_US} us)"
    )
    memory = bytes_per_key()
    print(f"memory: {memory:.0f} bytes per key (19-character keys)")
    with postgres_only() as dsn:
        stall = asyncio.run(longest_stall_ms(dsn))
    print(
        f"noting {PENDING_KEYS:,} pending keys from Postgres: longest loop stall "
        f"{stall['longest_stall_ms']} ms (goal < {STALL_GOAL_MS} ms), round {stall['round_s']} s"
    )
    met = max(cost.values()) < NOTE_GOAL_US and stall["longest_stall_ms"] < STALL_GOAL_MS
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "live_keys": LIVE_KEYS,
        "note": cost,
        "bytes_per_key": round(memory),
        "pending_keys": PENDING_KEYS,
        **stall,
        "goals": {"note_us": NOTE_GOAL_US, "stall_ms": STALL_GOAL_MS, "met": met},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"versions-{datetime.now(UTC).strftime('%Y-%m-%dT%H%M')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path.relative_to(REPO)}; goals {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
