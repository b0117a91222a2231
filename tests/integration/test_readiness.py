"""``/readyz`` means "can serve", and SIGTERM drains: unready at once, serving through a pause,
then the requests in flight finished before the process stops."""

from __future__ import annotations

import asyncio
import re
import secrets
import signal
import socket
import time
from pathlib import Path

import httpx

from devstack import Stack
from devstack.ports import find_free_port
from devstack.serving import spawn_gateway
from tests.integration.conftest import auth_headers, gateway_client, settings_for


def _unreachable_dsn(stack: Stack) -> str:
    dsn = stack.env()["CACHEGW_PG__DSN"]
    unreachable, replaced = re.subn(r":\d+/", f":{find_free_port()}/", dsn, count=1)
    assert replaced == 1, dsn
    return unreachable


def new_key() -> str:
    return "ready-" + secrets.token_hex(6)


async def test_ready_for_reads_and_writes_while_only_redis_is_down(stack: Stack) -> None:
    settings = settings_for(stack, redis={"nodes": f"127.0.0.1:{find_free_port()}"})
    async with gateway_client(settings) as (client, _):
        ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["serves"] == "reads and writes"
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is False


async def test_unready_when_neither_the_store_nor_redis_answers(stack: Stack) -> None:
    settings = settings_for(
        stack,
        redis={"nodes": f"127.0.0.1:{find_free_port()}"},
        pg={"dsn": _unreachable_dsn(stack), "connect_timeout_s": 0.5},
    )
    async with gateway_client(settings) as (client, _):
        ready = await client.get("/readyz")
        assert (await client.get("/livez")).status_code == 200  # liveness looks at nothing
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["ready"] is False
    assert body["serves"] == "nothing: neither the store nor Redis answers"
    assert body["checks"]["store"]["ok"] is False
    assert body["checks"]["redis"]["detail"].startswith("0 of 16384 slots answer")


def _start_slow_put(port: int, key: str, body: bytes) -> socket.socket:
    """A PUT whose headers and first half of body are sent now, the rest later."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=20)
    token = auth_headers()["Authorization"]
    head = (
        f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: gateway\r\nAuthorization: {token}\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    conn.sendall(head.encode() + body[: len(body) // 2])
    return conn


def _finish_slow_put(conn: socket.socket, body: bytes) -> bytes:
    with conn:
        conn.sendall(body[len(body) // 2 :])
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


async def test_sigterm_drains_unready_first_then_finishes_requests_in_flight(
    stack: Stack, tmp_path: Path
) -> None:
    pause_s = 3.0
    env = {
        "CACHEGW_SERVER__DRAIN_PAUSE_S": str(pause_s),
        "CACHEGW_SERVER__GRACEFUL_TIMEOUT_S": "10",
    }
    key, slow_key = new_key(), new_key()
    slow_body = b"s" * 10_000
    with spawn_gateway(stack, tmp_path, env=env) as served:
        async with httpx.AsyncClient(
            base_url=served.url, timeout=5, headers=auth_headers()
        ) as http:
            assert (await http.put(f"/v1/keys/{key}", content=b"v")).status_code == 201
            slow = _start_slow_put(served.port, slow_key, slow_body)
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            reads, readiness = [], []
            while time.monotonic() - signalled < pause_s - 0.7:  # inside the pause: served
                readiness.append(await http.get("/readyz"))
                async with httpx.AsyncClient(base_url=served.url, timeout=5) as fresh:
                    reads.append(await fresh.get(f"/v1/keys/{key}", headers=auth_headers()))
                await asyncio.sleep(0.2)
            # The pause ends while the PUT is still in flight: it is finished, not cut.
            await asyncio.sleep(pause_s + 0.5 - (time.monotonic() - signalled))
            reply = await asyncio.to_thread(_finish_slow_put, slow, slow_body)
            exit_code = await asyncio.to_thread(served.proc.wait, 15)
            stopped_after_s = time.monotonic() - signalled
    assert len(reads) >= 3, reads
    assert [r.status_code for r in reads] == [200] * len(reads)
    assert {r.status_code for r in readiness} == {503}, [r.text for r in readiness]
    assert readiness[0].json()["checks"]["drain"] == {
        "ok": False,
        "detail": "draining after SIGTERM",
    }
    assert reply.startswith(b"HTTP/1.1 201"), reply[:300]
    assert pause_s <= stopped_after_s < pause_s + 10, stopped_after_s
    assert exit_code in (0, -signal.SIGTERM), exit_code
    async with gateway_client(settings_for(stack)) as (client, _):
        assert (await client.get(f"/v1/keys/{slow_key}")).content == slow_body  # acknowledged


async def test_sigint_stops_without_the_pause(stack: Stack, tmp_path: Path) -> None:
    env = {"CACHEGW_SERVER__DRAIN_PAUSE_S": "30"}
    with spawn_gateway(stack, tmp_path, env=env) as served:
        served.proc.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        await asyncio.to_thread(served.proc.wait, 15)
        assert time.monotonic() - signalled < 10
