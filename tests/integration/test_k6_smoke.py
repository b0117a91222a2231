"""Every k6 scenario in tests/load/, run for a couple of seconds against a real server.

A smoke test of the scripts, not a benchmark: the server (``cachegw serve`` on the test stack)
has its 200 keys seeded the way the benchmarks seed them (``bench.common.seed``), each script runs
with a few users for about 2 s with ``SMOKE=1`` (the scripts then keep their error thresholds and
drop their latency ones), and each must exit 0, have made requests, and have had no failed one.

The scripts send the test API key (``API_KEY``), as the benchmarks do.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.common import bench_keys, run_k6, seed
from devstack import Stack
from tests.integration.conftest import TEST_KEY, auth_headers
from tests.integration.harness import gateway_process

KEY_COUNT = 200
SMOKE_ENV = {"SMOKE": "1", "KEY_COUNT": str(KEY_COUNT), "VALUE_BYTES": "100"}


@dataclass(frozen=True)
class Seeded:
    base: str
    keys_file: Path
    work: Path


@pytest.fixture(scope="module")
def seeded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    work = tmp_path_factory.mktemp("k6-smoke")
    with gateway_process(stack, work) as base:
        keys = bench_keys(KEY_COUNT)
        asyncio.run(seed(base, keys, api_key=TEST_KEY[0]))
        # failover.js tags reads by shard; no node is killed here, so any split will do.
        keys_file = work / "keys.json"
        keys_file.write_text(json.dumps({"victim": keys[:20], "healthy": keys[20:]}))
        yield Seeded(base, keys_file, work)


def k6(script: str, seeded: Seeded, **env: str) -> dict[str, Any]:
    """Run one scenario to completion; its JSON summary (after checking exit code and errors)."""
    summary_path = seeded.work / f"{script}.summary.json"
    summary_path.unlink(missing_ok=True)
    run_env = {**SMOKE_ENV, "API_KEY": TEST_KEY[0], "BASE_URL": seeded.base}
    proc = run_k6(script, env={**run_env, "SUMMARY": str(summary_path), **env})
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate(timeout=10)
        raise AssertionError(
            f"k6 {script} did not finish in 60 s:\n{output.decode()[-3000:]}"
        ) from None
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"k6 {script} exited {proc.returncode}:\n{text[-4000:]}"
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    metrics = summary["metrics"]
    requests = metrics["http_reqs"]["values"]["count"]
    failed = metrics["http_req_failed"]["values"]
    assert requests > 0, f"k6 {script} made no request:\n{text[-2000:]}"
    assert failed["passes"] == 0, (
        f"k6 {script}: {failed['passes']} of {requests} requests failed:\n{text[-2000:]}"
    )
    return summary


def test_read_hit(seeded: Seeded) -> None:
    k6("read_hit.js", seeded, VUS="4", DURATION="2s")


def test_mixed(seeded: Seeded) -> None:
    k6("mixed.js", seeded, VUS="4", DURATION="2s")


def test_cas(seeded: Seeded) -> None:
    summary = k6("cas.js", seeded, VUS="4", DURATION="2s", HOT_KEYS="4")
    assert summary["metrics"]["cas_won"]["values"]["count"] > 0


def test_stampede_on_a_cold_key(seeded: Seeded) -> None:
    key = "smoke-cold"
    with httpx.Client(base_url=seeded.base, headers=auth_headers(), timeout=10) as http:
        assert http.put(f"/v1/keys/{key}", content=b"cold").status_code in (200, 201)
        # In the store only: every cache tier drops it, so the stampede starts on a miss.
        assert http.post(f"/v1/keys/{key}/invalidate").status_code == 204
    summary = k6("stampede.js", seeded, STAMPEDE_VUS="20", KEY=key)
    assert summary["metrics"]["http_reqs"]["values"]["count"] == 20


def test_failover_reads(seeded: Seeded) -> None:
    k6("failover.js", seeded, KEYS_FILE=str(seeded.keys_file), RATE="50", DURATION="2s")


def test_batch_get(seeded: Seeded) -> None:
    summary = k6("batch_get.js", seeded, VUS="4", DURATION="2s", BATCH_SIZE="20")
    assert summary["metrics"]["batch_ops_failed"]["values"]["count"] == 0


# Scripts not smoked here, and why.
NOT_SMOKED = {"put_rate.js": "make bench-outbox runs it (an arrival rate for 60 s, no summary)"}


def test_every_scenario_has_a_smoke_test() -> None:
    scripts = {path.name for path in (Path(__file__).parents[1] / "load").glob("*.js")}
    source = Path(__file__).read_text().split("NOT_SMOKED =")[0]
    assert {s for s in scripts if f'"{s}"' not in source} == set(NOT_SMOKED)
