"""Metrics. The first dashboards' names (``redis_fallback_*``, ``redis_cache_*``) are kept
exactly; everything else is ``cachegw_*``.

Label values are bounded sets chosen in code (tier names, outcomes, triggers); a key is never a
label value.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, multiprocess

# Buckets that resolve p50/p95/p99 between 0.1 ms and 1 s.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

FALLBACK_ATTEMPTS = Counter(
    "redis_fallback_routing_attempts",
    "Reads by how the fallback router answered them",
    ["status"],
)
FALLBACK_LATENCY = Histogram(
    "redis_fallback_routing_latency_seconds",
    "Time spent answering a read after its first tier could not",
    buckets=LATENCY_BUCKETS,
)
# With several worker processes (prometheus multiprocess mode), each gauge says how the values of
# the processes combine: "livemax"/"livemin" for views every process shares, "livesum" for
# per-process quantities that add up. Only the live modes forget a dead worker's values, once a
# worker reaps it (``reap_dead_workers``); "max" or "min" would keep them for ever.
SLOTS_ASSIGNED = Gauge(
    "redis_cluster_slots_assigned", "cluster_slots_assigned from CLUSTER INFO",
    multiprocess_mode="livemax",
)  # fmt: skip
SLOTS_OK = Gauge(
    "redis_cluster_slots_ok", "cluster_slots_ok from CLUSTER INFO", multiprocess_mode="livemin"
)

TIER_RESULTS = Counter(
    "cachegw_tier_results_total",
    "Answers of each tier: hit, miss, stale (rejected as older than known), error",
    ["tier", "result"],
)
STORE_QUERIES = Counter(
    "cachegw_store_queries_total", "Queries sent to the store", ["operation", "outcome"]
)
REDIRECTS = Counter(
    "cachegw_redis_redirects_total", "MOVED/ASK/TRYAGAIN replies followed", ["kind"]
)
TOPOLOGY_REFRESHES = Counter(
    "cachegw_topology_refreshes_total", "Slot map refreshes by what triggered them", ["trigger"]
)
SLOTS_MAPPED = Gauge(
    "cachegw_slots_mapped", "Slots that have an owner in the slot map", multiprocess_mode="livemin"
)
CACHE_UPDATES = Counter(
    "cachegw_cache_updates_total",
    "Versioned writes of cache records to Redis: applied, skipped (newer there), failed",
    ["source", "result"],
)
OUTBOX_REPAIRS = Counter(
    "cachegw_outbox_repairs_total", "Outbox rows the repairer applied or failed", ["result"]
)
PRIMARY_SUSPECTED = Counter(
    "cachegw_primary_suspected_total",
    "Primaries whose data stopped being believed (restarted, promoted, new history), by reason",
    ["reason"],
)
PRIMARY_REPAIRS = Counter(
    "cachegw_primary_repairs_total",
    "Suspect primaries repaired: outbox rows replayed into them, or emptied of the gateway's keys",
    ["how"],
)
PRIMARY_REPAIR_KEYS = Counter(
    "cachegw_primary_repair_keys_total",
    "Keys repaired in suspect primaries: replayed from the store, or removed",
    ["how"],
)
FEED_LAG = Histogram(
    "cachegw_invalidation_feed_lag_seconds",
    "From a write to this process applying its announcement (notify mode: from the NOTIFY "
    "trigger's clock; relay mode: from the outbox row's created_at, the writing transaction's "
    "start), on the store's clock",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FEED_UP = Gauge(
    "cachegw_invalidation_feed_up", "1 while every process receives the feed",
    multiprocess_mode="livemin",
)  # fmt: skip
FEED_RELAY = Gauge(
    "cachegw_feed_relay", "1 while this process is the feed relay (relay mode)",
    multiprocess_mode="livesum",
)  # fmt: skip
FEED_RELAY_MESSAGES = Counter(
    "cachegw_feed_relay_messages_total", "Batches (NOTIFY payloads) the relay published"
)
FEED_RELAY_ROWS = Counter(
    "cachegw_feed_relay_rows_total", "Outbox rows (newest per key) the relay announced"
)
COALESCED = Counter(
    "cachegw_coalesced_waits_total",
    "Requests that shared a load or a Redis read with others (kind: what was shared)",
    ["kind"],
)
BREAKER_STATE = Gauge(
    "cachegw_breaker_state", "Circuit breaker per route: 0 closed, 1 half-open, 2 open", ["route"],
    multiprocess_mode="livemax",
)  # fmt: skip
BREAKER_TRANSITIONS = Counter(
    "cachegw_breaker_transitions_total", "Breaker state changes per route", ["route", "to"]
)
DEGRADED = Gauge(
    "cachegw_degraded_mode", "1 while the degraded-mode policy is on", multiprocess_mode="livemax"
)
AUTH_REFUSALS = Counter(
    "cachegw_auth_refusals_total", "Requests refused by authentication, scopes or rate", ["reason"]
)
RATE_DECISIONS = Counter(
    "cachegw_rate_limit_decisions_total",
    "Rate-limit decisions taken by a shared bucket (fleet) or, while Redis cannot answer, by "
    "this process's own (process)",
    ["bucket"],
)
SHED = Counter("cachegw_shed_total", "Requests shed because of local saturation", ["reason"])
LOCAL_ENTRIES = Gauge(
    "cachegw_local_entries", "Entries in the local tiers", multiprocess_mode="livesum"
)
LOCAL_BYTES = Gauge(
    "cachegw_local_bytes", "Approximate bytes held by the local tiers", multiprocess_mode="livesum"
)
OUTBOX_DEPTH = Gauge(
    "cachegw_outbox_pending", "Outbox rows whose cache update has not reached Redis",
    multiprocess_mode="livemax",
)  # fmt: skip
OUTBOX_OLDEST_AGE = Gauge(
    "cachegw_outbox_oldest_age_seconds", "Age of the oldest outbox row not yet applied",
    multiprocess_mode="livemax",
)  # fmt: skip
REPLICA_LAG = Gauge(
    "cachegw_replica_lag_bytes", "Replication offset a replica is behind its primary",
    ["replica"], multiprocess_mode="livemax",
)  # fmt: skip

# HTTP metrics, the same for routes served by FastAPI (recorded through
# prometheus-fastapi-instrumentator) and for the key operations (recorded by app/api/dispatch.py).
HTTP_REQUESTS = Counter(
    "http_requests", "HTTP requests by route template, method and status class",
    ["handler", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request duration by route template and method",
    ["handler", "method"], buckets=LATENCY_BUCKETS,
)  # fmt: skip


_http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def record_http(handler: str, method: str, status: int, duration_s: float) -> None:
    children = _http_children.get((handler, method, status))
    if children is None:  # resolve the labelled children once per (route, method, status)
        children = (
            HTTP_REQUESTS.labels(handler, method, f"{status // 100}xx"),
            HTTP_DURATION.labels(handler, method),
        )
        _http_children[(handler, method, status)] = children
    children[0].inc()
    children[1].observe(duration_s)


_tier_children: dict[tuple[str, str], Counter] = {}


def tier_result(tier: str, result: str, count: int = 1) -> None:
    """Count ``count`` answers of a tier: hit, miss, stale (older than known), error."""
    child = _tier_children.get((tier, result))
    if child is None:
        child = _tier_children[(tier, result)] = TIER_RESULTS.labels(tier=tier, result=result)
    child.inc(count)


def _multiprocess_dir() -> Path | None:
    """The directory of the workers' metric files, in multiprocess mode (else None)."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def forget(gauge: Gauge, *labels: str) -> None:
    """Drop a labelled series of ``gauge`` (its route or node is gone). In multiprocess mode
    prometheus_client cannot remove it from the file it shares with the other workers, so it
    is set to 0 instead (closed, no lag): never left at its last value."""
    if _multiprocess_dir() is not None:
        gauge.labels(*labels).set(0)
        return
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


_DB_FILE = re.compile(r"_(\d+)\.db$")


def reap_dead_workers(directory: Path | None = None) -> int:
    """Mark every worker whose metric files remain but whose process is gone as dead, so the
    live gauge modes drop its values (its counters keep counting in the sums); how many.
    Any worker may do it for the others: each does every few seconds."""
    path = directory if directory is not None else _multiprocess_dir()
    if path is None:
        return 0
    pids = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            match = _DB_FILE.search(entry.name)
            if match is not None and entry.name.startswith("gauge_live"):
                pids.add(int(match.group(1)))
    reaped = 0
    for pid in pids:
        if pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
            reaped += 1
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
