"""make bench's plot: throughput and p99 side by side, drawn again from a saved report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(rps: float, p99: float) -> dict[str, float]:
    return {"rps": rps, "p99_ms": p99}


def test_a_saved_report_is_drawn_again(tmp_path: Path) -> None:
    report = {
        "vus": 32, "duration": "10s", "pairs": 2,
        "ceilings": {"raw-asgi": {"rps": 10_000}, "fastapi-constant": {"rps": 7_000}},
        "runs": {
            "read_hit": [
                {"gateway": _run(4_000, 20), "naive": _run(2_800, 70)},
                {"gateway": _run(4_400, 24), "naive": _run(3_000, 72)},
            ],
        },
    }  # fmt: skip
    saved = tmp_path / "bench-x.json"
    saved.write_text(json.dumps(report))
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--replot", str(saved)],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    assert saved.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_failover_series_leave_out_the_partial_last_second(tmp_path: Path) -> None:
    """k6's last second is cut short; counted as a second it drew a false drop to zero."""
    from bench.common import Sample
    from bench.failover import summarize

    start = 1_000_000
    samples = [Sample(start + ms, 1.0, 200, "shard=healthy") for ms in range(0, 3000, 2)]
    samples += [Sample(start + 3000 + ms, 1.0, 200, "shard=healthy") for ms in range(0, 20, 2)]
    result = summarize(samples, start_ms=start, kill_s=1.0, promoted_s=1.0)
    assert result["served_per_s"] == [500, 500, 500]  # not [..., 10]
    assert result["requests"] == len(samples)  # the partial second still counts in the totals
    saved = tmp_path / "failover-x.json"
    result |= {"kill_at_s": 1.0, "promoted_after_s": 1.0, "dropped_pct": 0.0}
    saved.write_text(json.dumps({"duration_s": 3, "results": {"gateway": result}}))
    subprocess.run(
        [sys.executable, "-m", "bench.failover", "--replot", str(saved)],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    assert saved.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
