"""Gauges of several worker processes (prometheus multiprocess mode), as ``/metrics`` combines
them: a dead worker's values must not outlive it, and a gauge removed in a process must not stay
behind with its last value (an alert on it would fire for ever)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from app import telemetry

ROOT = Path(__file__).resolve().parents[2]


def worker(directory: Path, code: str) -> None:
    """A process that imports the gateway's metrics in multiprocess mode, runs ``code`` and
    exits without a word (as a SIGKILLed worker would)."""
    script = "from app import telemetry\n" + textwrap.dedent(code) + "\nimport os; os._exit(0)\n"
    subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def samples(directory: Path, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                found[labels] = sample.value
    return found


def test_a_dead_workers_gauges_are_dropped_once_it_is_reaped(tmp_path: Path) -> None:
    worker(tmp_path, "telemetry.FEED_UP.set(0); telemetry.DEGRADED.set(1)")  # died like this
    worker(tmp_path, "telemetry.FEED_UP.set(1); telemetry.DEGRADED.set(0)")  # also gone
    telemetry.reap_dead_workers(tmp_path)
    assert samples(tmp_path, "cachegw_invalidation_feed_up") == {}
    assert samples(tmp_path, "cachegw_degraded_mode") == {}


def test_a_dead_workers_counters_still_count(tmp_path: Path) -> None:
    worker(tmp_path, "telemetry.SHED.labels(reason='x').inc(3)")
    telemetry.reap_dead_workers(tmp_path)
    assert samples(tmp_path, "cachegw_shed_total") == {(("reason", "x"),): 3.0}


def test_a_live_worker_is_not_reaped(tmp_path: Path) -> None:
    (tmp_path / f"gauge_livemin_{os.getpid()}.db").write_bytes(b"")
    (tmp_path / "gauge_livemin_1.db").write_bytes(b"")  # init: always alive
    assert telemetry.reap_dead_workers(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gauge_livemin_1.db",
        f"gauge_livemin_{os.getpid()}.db",
    ]


def test_a_removed_breaker_gauge_does_not_stay_open(tmp_path: Path) -> None:
    code = """
        telemetry.BREAKER_STATE.labels("primary@10.0.0.1:7000").set(2)
        telemetry.forget(telemetry.BREAKER_STATE, "primary@10.0.0.1:7000")
    """
    worker(tmp_path, code)
    values = samples(tmp_path, "cachegw_breaker_state")
    assert all(value == 0 for value in values.values()), values
