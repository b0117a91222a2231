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
