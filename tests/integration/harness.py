"""Fault tests' harness: a gateway in its own process, and readers that check every answer.

Readers (50 by default) loop over a key set, and a few writers keep changing values. Every answer
is checked against what the writers sent: a 200 must carry a body that was written for that key,
under the version that write was acknowledged with, and no older than the newest write that was
acknowledged before the read started, unless the answer says it is stale (``fwd=stale``).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from devstack import Stack
from devstack.rawhttp import Connection, Reply
from devstack.serving import serve_gateway
from tests.integration.conftest import auth_headers

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def gateway_process(stack: Stack, log_dir: Path, **env: str) -> Iterator[str]:
    """``cachegw serve`` on a free port against the stack; stopped (by PID) afterwards."""
    with serve_gateway(stack, log_dir, env=env) as base:
        yield base


@dataclass
class Observation:
    at: float
    key: str
    status: int
    latency_s: float
    cache_status: str
    version: int | None


@dataclass
class Workload:
    """Keys, what was written to them, and what readers saw."""

    base_url: str
    keys: list[str]
    written: dict[tuple[str, bytes], int | None] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    write_latencies: list[float] = field(default_factory=list)
    write_failures: list[str] = field(default_factory=list)
    write_failed_at: list[float] = field(default_factory=list)  # offsets, as Observation.at
    read_failed_at: list[float] = field(default_factory=list)  # reads that got no answer
    started: float = 0.0

    async def write(self, client: httpx.AsyncClient, key: str) -> int | None:
        body = f"{key}|{uuid.uuid4().hex}".encode()
        self.written[(key, body)] = None  # sent, not yet acknowledged
        began = time.monotonic()
        try:
            response = await client.put(f"/v1/keys/{key}", content=body)
        except httpx.TransportError as exc:  # no answer: the outcome is unknown, as for a 503
            self.write_failures.append(f"{key}: {type(exc).__name__}")
            self.write_failed_at.append(began - self.started)
            return None
        self.write_latencies.append(time.monotonic() - began)
        if response.status_code not in (200, 201):
            self.write_failures.append(f"{key}: {response.status_code} {response.text[:200]}")
            self.write_failed_at.append(began - self.started)
            return None
        version = int(response.headers["etag"].strip('"'))
        self.written[(key, body)] = version
        self.acked[key] = max(self.acked.get(key, 0), version)
        return version

    async def seed(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=10, headers=auth_headers()
        ) as client:
            for i in range(0, len(self.keys), 50):
                await asyncio.gather(*(self.write(client, key) for key in self.keys[i : i + 50]))
        if self.write_failures:
            raise AssertionError(f"seeding failed: {self.write_failures[:3]}")
        self.write_latencies.clear()

    def check(self, key: str, response: httpx.Response | Reply, floor: int) -> int | None:
        if _status(response) != 200:
            self.problems.append(f"{key}: status {_status(response)} {response.content[:200]!r}")
            return None
        version = int(response.headers["etag"].strip('"'))
        sent = (key, response.content)
        if sent not in self.written:
            self.problems.append(f"{key}: a value that was never written for it")
        elif self.written[sent] is not None and self.written[sent] != version:
            self.problems.append(
                f"{key}: body of version {self.written[sent]} under ETag {version}"
            )
        stale = "fwd=stale" in response.headers.get("cache-status", "")
        if version < floor and not stale:
            self.problems.append(
                f"{key}: version {version} older than acknowledged {floor} "
                f"({response.headers.get('cache-status')})"
            )
        return version

    async def _reader(self, until: float, interval_s: float) -> None:
        """Read keys at random until ``until``: back to back, or one per ``interval_s`` (an
        open loop: a slow answer does not lower the rate asked for, nor is it made up later)."""
        rng = random.Random()
        parts = urlsplit(self.base_url)
        connection = Connection(
            parts.hostname or "127.0.0.1", parts.port or 80, headers=auth_headers()
        )
        due = time.monotonic()
        try:
            while time.monotonic() < until:
                await self._read_one(connection, rng.choice(self.keys))
                if interval_s:
                    due = max(due + interval_s, time.monotonic() - interval_s)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await connection.close()

    async def _read_one(self, connection: Connection, key: str) -> None:
        floor = self.acked.get(key, 0)
        began = time.monotonic()
        try:
            response = await connection.request("GET", f"/v1/keys/{key}")
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.problems.append(f"{key}: {type(exc).__name__}")
            self.read_failed_at.append(began - self.started)
            await asyncio.sleep(0.01)
            return
        latency = time.monotonic() - began
        version = self.check(key, response, floor)
        self.observations.append(
            Observation(
                began - self.started, key, _status(response), latency,
                response.headers.get("cache-status", ""), version,
            )
        )  # fmt: skip

    async def _writer(self, client: httpx.AsyncClient, until: float, interval_s: float) -> None:
        rng = random.Random()
        while time.monotonic() < until:
            await self.write(client, rng.choice(self.keys))
            await asyncio.sleep(interval_s)

    async def run(
        self,
        duration_s: float,
        *,
        readers: int = 50,
        writers: int = 2,
        write_interval_s: float = 0.05,
        read_rate_per_s: float = 0.0,
        events: Sequence[tuple[float, Callable[[], Awaitable[None]]]] = (),
    ) -> None:
        """Read and write for ``duration_s``; run each event at its offset (seconds). Readers
        go back to back, or together at ``read_rate_per_s``."""
        read_interval_s = readers / read_rate_per_s if read_rate_per_s else 0.0
        limits = httpx.Limits(max_connections=readers + writers + 5)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=5, limits=limits, headers=auth_headers()
        ) as client:
            self.started = time.monotonic()
            until = self.started + duration_s

            async def timeline() -> None:
                for offset, event in sorted(events, key=lambda e: e[0]):
                    await asyncio.sleep(max(0.0, self.started + offset - time.monotonic()))
                    await event()

            await asyncio.gather(
                timeline(),
                *(self._reader(until, read_interval_s) for _ in range(readers)),
                *(self._writer(client, until, write_interval_s) for _ in range(writers)),
            )

    async def verify_final(self, *, timeout_s: float = 10.0) -> None:
        """Every key answers its last acknowledged version, fresh (bounded wait for repairs)."""
        parts = urlsplit(self.base_url)
        connection = Connection(
            parts.hostname or "127.0.0.1", parts.port or 80, headers=auth_headers()
        )
        deadline = time.monotonic() + timeout_s
        try:
            pending = set(self.keys)
            while pending and time.monotonic() < deadline:
                for key in sorted(pending):
                    reply = await connection.request("GET", f"/v1/keys/{key}")
                    fresh = "fwd=stale" not in reply.headers.get("cache-status", "")
                    if reply.status == 200 and fresh and self._is_last(key, reply):
                        pending.discard(key)
                if pending:
                    await asyncio.sleep(0.2)
        finally:
            await connection.close()
        assert not pending, f"{len(pending)} keys not at their last acknowledged version"

    def _is_last(self, key: str, reply: Reply) -> bool:
        """The last acknowledged version, or a newer one from a write that was answered 503
        "outcome unknown" and did commit (the gateway said it may have: that is allowed)."""
        version = int(reply.headers["etag"].strip('"'))
        if version == self.acked[key]:
            return True
        unknown = (key, reply.content) in self.written and self.written[
            (key, reply.content)
        ] is None
        return unknown and version > self.acked[key]

    def latencies(self, start: float = 0.0, end: float = 1e9) -> list[float]:
        return sorted(o.latency_s for o in self.observations if start <= o.at < end)

    def tiers(self, keys: set[str], start: float = 0.0, end: float = 1e9) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.observations:
            if o.key in keys and start <= o.at < end:
                out[o.cache_status] = out.get(o.cache_status, 0) + 1
        return out


def _status(response: httpx.Response | Reply) -> int:
    return response.status_code if isinstance(response, httpx.Response) else response.status


def metric(base_url: str, name: str, labels: str = "") -> float:
    """A counter's value from the gateway's /metrics (0 when absent)."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def spread_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]
