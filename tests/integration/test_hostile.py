"""Hostile input against the real server: each answer a problem body, nothing written, and the
server keeps serving everyone else."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from devstack import Stack
from tests.integration.conftest import TEST_KEY, auth_headers
from tests.integration.harness import gateway_process
from tests.integration.test_api_keys import new_key


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_process(stack, tmp_path_factory.mktemp("hostile")) as base:
        yield base


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_request(
    base: str, request: bytes, *, timeout_s: float = 5
) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(address(base), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split(" ")[1]), headers, body


def problem(status: int, headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["content-type"] == "application/problem+json", (status, body[:200])
    document: dict[str, object] = json.loads(body)
    assert document["status"] == status
    return document


async def stored(stack: Stack, key: str) -> bool:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM entries WHERE key = $1", key))
    finally:
        await conn.close()


def auth() -> bytes:
    return f"Authorization: Bearer {TEST_KEY[0]}\r\n".encode()


async def test_huge_headers_are_431(server: str, stack: Stack) -> None:
    key = new_key("bigheader")
    request = (
        f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: x\r\n".encode() + auth()
        + b"X-Filler: " + b"a" * 200_000 + b"\r\nContent-Length: 1\r\n\r\nx"
    )  # fmt: skip
    status, headers, body = await asyncio.to_thread(raw_request, server, request)
    assert status == 431
    problem(431, headers, body)
    assert not await stored(stack, key)


async def test_a_long_target_is_414(server: str) -> None:
    async with httpx.AsyncClient(base_url=server, headers=auth_headers(), timeout=5) as client:
        response = await client.get(f"/v1/keys/{new_key()}?pad={'x' * 10_000}")
    assert response.status_code == 414
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_chunked_body_over_the_limit_is_413_and_the_server_stays_usable(
    server: str, stack: Stack
) -> None:
    key = new_key("chunked")

    def send_chunked() -> tuple[int, dict[str, str], bytes, float]:
        with socket.create_connection(address(server), timeout=10) as sock:
            sock.sendall(
                f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: x\r\n".encode() + auth()
                + b"Transfer-Encoding: chunked\r\n\r\n"
            )  # fmt: skip
            started = time.monotonic()
            chunk = b"z" * 65536
            sent = 0
            try:
                for _ in range(64):  # offers 4 MiB; the limit is 1 MiB
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed: it did not read the rest
            sock.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
            }
            return int(lines[0].split(" ")[1]), headers, body, time.monotonic() - started

    status, headers, _, _ = await asyncio.to_thread(send_chunked)
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert not await stored(stack, key)
    async with httpx.AsyncClient(base_url=server, headers=auth_headers(), timeout=5) as client:
        assert (await client.get("/livez")).status_code == 200


async def test_slow_loris_clients_do_not_stop_others(server: str) -> None:
    host, port = address(server)
    loris = []
    for _ in range(50):
        _, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /v1/keys/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        loris.append(writer)
    try:
        async with httpx.AsyncClient(base_url=server, headers=auth_headers(), timeout=5) as client:
            for _ in range(3):
                for writer in loris:
                    writer.write(b"a")  # one more byte each, never finishing the headers
                began = time.monotonic()
                key = new_key()
                assert (await client.put(f"/v1/keys/{key}", content=b"v")).status_code == 201
                assert (await client.get(f"/v1/keys/{key}")).status_code == 200
                assert time.monotonic() - began < 1.0
                await asyncio.sleep(0.2)
    finally:
        for writer in loris:
            writer.close()


@pytest.mark.parametrize(
    ("target", "headers", "status"),
    [
        ("/v1/keys/a%ZZb", {}, 422),
        ("/v1/keys/%00nul", {}, 422),
        ("/v1/keys/a%2Fb", {}, 422),
        ("/v1/keys/tab%09", {}, 422),
        ("/v1/keys/" + "k" * 513, {}, 422),
        ("/v1/keys/ok?ttl=abc", {}, 422),
        ("/v1/keys/ok?ttl=-1", {}, 422),
        ("/v1/keys/ok?ttl=1&ttl=2", {}, 422),
        ("/v1/keys/ok", {"If-Match": 'W"broken'}, 400),
        ("/v1/keys/ok", {"If-None-Match": "1"}, 400),
        ("/v1/keys/ok", {"Content-Type": "no/slash/twice; x"}, 415),
    ],
)
async def test_malformed_writes_are_problems_and_write_nothing(
    server: str, stack: Stack, target: str, headers: dict[str, str], status: int
) -> None:
    request = (
        f"PUT {target} HTTP/1.1\r\nHost: x\r\n".encode() + auth()
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        + b"Content-Length: 5\r\n\r\nvalue"
    )  # fmt: skip
    got, response_headers, body = await asyncio.to_thread(raw_request, server, request)
    assert got == status, body[:300]
    problem(status, response_headers, body)
    assert not await stored(stack, "ok")


@pytest.mark.parametrize(
    ("method", "target", "header", "status"),
    [
        ("GET", "/v1/keys/{key}", b"Cache-Control: max-age=\xb2", 400),
        ("GET", "/v1/keys/{key}", b"Cache-Control: stale-if-error=\xb9", 400),
        ("PUT", "/v1/keys/{key}?ttl=%C2%B2", b"X-Nothing: 1", 422),
        ("PUT", "/v1/keys/{key}", b'If-Match: "\xb2"', 412),
    ],
    ids=["max-age", "stale-if-error", "ttl", "if-match"],
)
async def test_digits_outside_ascii_are_refused_as_malformed_not_a_500(
    server: str, stack: Stack, method: str, target: str, header: bytes, status: int
) -> None:
    """Characters that str.isdigit() calls digits ("²", "¹") are not numbers of seconds or
    versions: the request is refused as the contract says, never answered with a 500."""
    key = new_key("digits")
    request = (
        f"{method} {target.format(key=key)} HTTP/1.1\r\nHost: x\r\n".encode() + auth()
        + header + b"\r\nContent-Length: 5\r\n\r\nvalue"
    )  # fmt: skip
    got, response_headers, body = await asyncio.to_thread(raw_request, server, request)
    assert got == status, body[:300]
    problem(status, response_headers, body)
    assert not await stored(stack, key)


@pytest.mark.parametrize("header", ["If-Match", "If-None-Match"])
async def test_an_empty_precondition_is_absent(server: str, stack: Stack, header: str) -> None:
    """RFC 9110 5.6.1: an empty list. The schema allows it, so the write goes ahead."""
    key = new_key("empty-precondition")
    request = (
        f"PUT /v1/keys/{key} HTTP/1.1\r\nHost: x\r\n".encode() + auth()
        + f"{header}: \r\nContent-Length: 5\r\n\r\nvalue".encode()
    )  # fmt: skip
    got, _, body = await asyncio.to_thread(raw_request, server, request)
    assert got == 201, body[:300]
    assert await stored(stack, key)
