"""The key API end to end over the real stack: bytes, versions, preconditions, limits, errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from app.codec import Entry, Tombstone
from app.gateway import Gateway
from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.redis_direct import cached, drop

MiB = 1024 * 1024


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    assert "Traceback" not in response.text
    document: dict[str, object] = body
    return document


async def store_row(stack: Stack, key: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        return await conn.fetchrow(
            "SELECT value, version, cache_seq FROM entries"
            " WHERE namespace = 'default' AND key = $1",
            key,
        )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "value",
    [bytes(range(256)), b"\xff\xfe\xc3\x28\x80", b"", b"x" * MiB],
    ids=["all-bytes", "invalid-utf8", "empty", "exactly-1MiB"],
)
async def test_values_round_trip_byte_for_byte(client: httpx.AsyncClient, value: bytes) -> None:
    key = new_key()
    put = await client.put(f"/v1/keys/{key}", content=value)
    assert put.status_code == 201, put.text
    for _ in range(2):  # from the store (fill), then from the primary
        got = await client.get(f"/v1/keys/{key}")
        assert got.status_code == 200
        assert got.content == value
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["etag"] == put.headers["etag"]
        assert "cache-status" in got.headers
        assert got.headers["age"].isdigit()


async def test_one_byte_over_the_limit_is_413_and_writes_nothing(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    key = new_key()
    response = await client.put(f"/v1/keys/{key}", content=b"x" * (MiB + 1))
    assert_problem(response, 413)
    assert await store_row(stack, key) is None
    assert_problem(await client.get(f"/v1/keys/{key}"), 404)


async def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_whole(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4 MiB offered in 64 KiB chunks, no Content-Length
            sent += 1
            yield b"y" * 65536

    key = new_key()
    response = await client.put(f"/v1/keys/{key}", content=body())
    assert_problem(response, 413)
    assert await store_row(stack, key) is None


async def test_content_type_is_kept(client: httpx.AsyncClient) -> None:
    key = new_key()
    await client.put(
        f"/v1/keys/{key}",
        content=b"{}",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    got = await client.get(f"/v1/keys/{key}")
    assert got.headers["content-type"] == "application/json; charset=utf-8"


async def test_invalid_content_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.put(
        f"/v1/keys/{new_key()}", content=b"x", headers={"Content-Type": "not a type"}
    )
    assert_problem(response, 415)


async def test_put_versions_and_preconditions(client: httpx.AsyncClient, stack: Stack) -> None:
    key = new_key()
    created = await client.put(f"/v1/keys/{key}", content=b"one")
    assert created.status_code == 201
    assert created.headers["location"] == f"/v1/keys/{key}"
    v1 = created.headers["etag"]
    assert created.json()["etag"] == v1

    replaced = await client.put(f"/v1/keys/{key}", content=b"two")
    assert replaced.status_code == 200
    v2 = replaced.headers["etag"]
    assert int(v2.strip('"')) > int(v1.strip('"'))

    stale = await client.put(f"/v1/keys/{key}", content=b"three", headers={"If-Match": v1})
    assert_problem(stale, 412)
    assert stale.headers["etag"] == v2
    assert (await client.get(f"/v1/keys/{key}")).content == b"two"

    ok = await client.put(f"/v1/keys/{key}", content=b"three", headers={"If-Match": v2})
    assert ok.status_code == 200
    v3 = ok.headers["etag"]

    assert_problem(
        await client.put(f"/v1/keys/{key}", content=b"x", headers={"If-None-Match": "*"}), 412
    )
    fresh = new_key()
    assert (
        await client.put(f"/v1/keys/{fresh}", content=b"x", headers={"If-None-Match": "*"})
    ).status_code == 201
    assert_problem(
        await client.put(f"/v1/keys/{new_key()}", content=b"x", headers={"If-Match": "*"}), 412
    )
    assert (
        await client.put(f"/v1/keys/{key}", content=b"four", headers={"If-Match": "*"})
    ).status_code == 200
    v4 = (await client.get(f"/v1/keys/{key}")).headers["etag"]
    assert v4 != v3

    not_modified = await client.get(f"/v1/keys/{key}", headers={"If-None-Match": v4})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == v4
    assert (
        await client.get(f"/v1/keys/{key}", headers={"If-None-Match": f"W/{v4}"})
    ).status_code == 304
    assert (await client.get(f"/v1/keys/{key}", headers={"If-None-Match": v1})).status_code == 200

    assert_problem(
        await client.put(f"/v1/keys/{key}", content=b"x", headers={"If-Match": "nope"}), 400
    )
    assert_problem(await client.get(f"/v1/keys/{key}", headers={"If-None-Match": '"1", '}), 400)

    assert_problem(await client.delete(f"/v1/keys/{key}", headers={"If-Match": v1}), 412)
    assert (await client.delete(f"/v1/keys/{key}", headers={"If-Match": v4})).status_code == 204
    assert_problem(await client.delete(f"/v1/keys/{key}"), 404)
    assert_problem(await client.get(f"/v1/keys/{key}"), 404)
    row = await store_row(stack, key)
    assert row is None


async def test_delete_leaves_a_tombstone_and_the_key_is_gone(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    key = new_key()
    await client.put(f"/v1/keys/{key}", content=b"v")
    assert (await client.delete(f"/v1/keys/{key}")).status_code == 204
    assert isinstance(cached(stack, key), Tombstone)
    assert_problem(await client.get(f"/v1/keys/{key}"), 404)
    again = await client.put(f"/v1/keys/{key}", content=b"back")
    assert again.status_code == 201
    assert (await client.get(f"/v1/keys/{key}")).content == b"back"


async def test_delete_if_match_star_needs_a_current_entry(client: httpx.AsyncClient) -> None:
    """RFC 9110 13.1.1: ``If-Match: *`` is false when there is no current representation."""
    key = new_key()
    reply = await client.delete(f"/v1/keys/{key}", headers={"If-Match": "*"})
    assert assert_problem(reply, 412)["type"] == "/problems/precondition-failed"
    await client.put(f"/v1/keys/{key}", content=b"v")
    assert (await client.delete(f"/v1/keys/{key}", headers={"If-Match": "*"})).status_code == 204


async def test_head_has_the_headers_and_no_body(client: httpx.AsyncClient) -> None:
    key = new_key()
    await client.put(f"/v1/keys/{key}", content=b"12345", headers={"Content-Type": "text/plain"})
    head = await client.head(f"/v1/keys/{key}")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "5"
    assert head.headers["content-type"] == "text/plain"
    assert head.headers["etag"]
    assert_problem(await client.get(f"/v1/keys/{new_key()}"), 404)
    assert (await client.head(f"/v1/keys/{new_key()}")).status_code == 404


async def test_cache_status_names_the_tier(
    gw: tuple[httpx.AsyncClient, Gateway], stack: Stack
) -> None:
    client, gateway = gw
    key = new_key()
    await client.put(f"/v1/keys/{key}", content=b"v")
    status = (await client.get(f"/v1/keys/{key}")).headers["cache-status"]
    assert status == "cachegw; hit; detail=primary"
    drop(stack, key)
    # Redis lost it; this process's local copy is current (the feed is up) and answers.
    status = (await client.get(f"/v1/keys/{key}")).headers["cache-status"]
    assert status == "cachegw; hit; detail=local"
    revalidated = await client.get(f"/v1/keys/{key}", headers={"Cache-Control": "no-cache"})
    assert revalidated.headers["cache-status"] == "cachegw; fwd=request"
    assert revalidated.headers["age"] == "0"
    await gateway.router.drain()  # the background fill that no-cache started
    drop(stack, key)
    async with gateway_client(settings_for(stack)) as (other, _):  # a process with no local copy
        miss = await other.get(f"/v1/keys/{key}")
        assert miss.headers["cache-status"] == "cachegw; fwd=miss; stored"
        status = (await other.get(f"/v1/keys/{key}")).headers["cache-status"]
        assert status == "cachegw; hit; detail=primary"


async def test_ttl_expires_and_is_validated(client: httpx.AsyncClient) -> None:
    key = new_key()
    put = await client.put(f"/v1/keys/{key}?ttl=1", content=b"short")
    assert put.status_code == 201
    assert put.json()["expires_at"]
    got = await client.get(f"/v1/keys/{key}")
    assert got.headers["cache-control"] in ("max-age=0", "max-age=1")
    for _ in range(40):
        await asyncio.sleep(0.1)
        if (await client.get(f"/v1/keys/{key}")).status_code == 404:
            break
    assert_problem(await client.get(f"/v1/keys/{key}"), 404)
    long = await client.put(f"/v1/keys/{new_key()}?ttl=2592000", content=b"x")
    assert long.status_code == 201
    for bad in ("0", "-5", "abc", "2592001", "1.5"):
        assert_problem(await client.put(f"/v1/keys/{new_key()}?ttl={bad}", content=b"x"), 422)
    assert_problem(await client.put(f"/v1/keys/{new_key()}?ttl=5&ttl=6", content=b"x"), 422)


@pytest.mark.parametrize(
    "raw_key",
    ["a" * 513, "%00abc", "a%2Fb", "bad%zzkey", "%C3%28", "tab%09key", "%7F"],
    ids=["513-bytes", "nul", "slash", "malformed-percent", "invalid-utf8", "tab", "del"],
)
async def test_invalid_keys_are_422_and_write_nothing(
    client: httpx.AsyncClient, stack: Stack, raw_key: str
) -> None:
    body = assert_problem(await client.put(f"/v1/keys/{raw_key}", content=b"x"), 422)
    assert body["type"] == "/problems/invalid-key"
    assert_problem(await client.get(f"/v1/keys/{raw_key}"), 422)


async def test_a_512_byte_key_and_unicode_keys_work(client: httpx.AsyncClient) -> None:
    for key in ("é" * 256, "snow☃man", "{user:42}:profile"):
        response = await client.put(f"/v1/keys/{key}", content=key.encode())
        assert response.status_code in (200, 201), response.text
        assert (await client.get(f"/v1/keys/{key}")).content == key.encode()


async def test_wrong_method_is_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v1/keys/{new_key()}", content=b"x")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v2/nothing"), 404)


async def test_concurrent_puts_leave_redis_and_postgres_at_the_highest_version(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    key = new_key()
    responses = await asyncio.gather(
        *(client.put(f"/v1/keys/{key}", content=f"writer-{i}".encode()) for i in range(50))
    )
    assert all(r.status_code in (200, 201) for r in responses)
    versions = [int(r.headers["etag"].strip('"')) for r in responses]
    assert len(set(versions)) == 50
    row = await store_row(stack, key)
    assert row is not None
    assert row["version"] == max(versions)
    record = cached(stack, key)
    assert isinstance(record, Entry)
    assert record.version == max(versions)
    assert record.value == row["value"]
    assert sum(r.status_code == 201 for r in responses) == 1


async def test_invalidate_drops_the_cached_copy_and_keeps_the_value(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    key = new_key()
    etag = (await client.put(f"/v1/keys/{key}", content=b"kept")).headers["etag"]
    assert (await client.post(f"/v1/keys/{key}/invalidate")).status_code == 204
    assert isinstance(cached(stack, key), Tombstone)
    got = await client.get(f"/v1/keys/{key}")
    assert got.content == b"kept"
    assert got.headers["etag"] == etag  # the data version is unchanged
    assert got.headers["cache-status"].startswith("cachegw; fwd=miss")
    assert isinstance(cached(stack, key), Entry)
    assert_problem(await client.post(f"/v1/keys/{new_key()}/invalidate"), 404)


async def test_readyz_and_livez(client: httpx.AsyncClient) -> None:
    live = await client.get("/livez")
    assert live.status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True


async def test_metrics_count_reads_by_status(client: httpx.AsyncClient) -> None:
    key = new_key()
    await client.put(f"/v1/keys/{key}", content=b"v")
    await client.get(f"/v1/keys/{key}")
    text = (await client.get("/metrics")).text
    assert 'redis_fallback_routing_attempts_total{status="primary_hit"}' in text
    assert "redis_fallback_routing_latency_seconds_bucket" in text
    assert "http_requests_total" in text or "http_request_duration" in text


async def test_problem_types_are_documented(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get(f"/v1/keys/{new_key()}"), 404)
    doc = await client.get(str(body["type"]))
    assert doc.status_code == 200
    assert "Key not found" in doc.text
    assert json.loads((await client.get("/openapi.json")).text)["paths"]
