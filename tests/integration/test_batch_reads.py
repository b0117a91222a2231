"""The batch's reads taken together (``FallbackRouter.get_many``) answer exactly what single-key
reads answer, key by key: hits, misses, deletes, invalidated keys, versions asked for, and a
paused primary."""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import httpx

from app.cluster.slots import key_slot
from devstack import Stack
from devstack.cluster_ops import owner_of
from tests.integration.conftest import gateway_client, settings_for

COUNT = 120


async def _batch_get(client: httpx.AsyncClient, ops: list[dict[str, Any]]) -> list[Any]:
    response = await client.post("/v1/batch", json={"ops": ops})
    assert response.status_code == 200, response.text
    results: list[Any] = response.json()["results"]
    return results


def _single(response: httpx.Response) -> tuple[int, str | None, bytes | None]:
    if response.status_code != 200:
        return response.status_code, None, None
    return 200, response.headers["etag"], response.content


def _batched(result: dict[str, Any]) -> tuple[int, str | None, bytes | None]:
    if result["status"] != 200:
        return result["status"], None, None
    return 200, result["etag"], base64.b64decode(result["value"])


async def test_batch_reads_answer_what_single_reads_answer(stack: Stack) -> None:
    prefix = "many-" + secrets.token_hex(4)
    keys = [f"{prefix}-{i}" for i in range(COUNT)]
    async with gateway_client(settings_for(stack)) as (client, _):
        for i, key in enumerate(keys):
            if i % 6 != 5:  # every sixth key is never written
                await client.put(f"/v1/keys/{key}", content=f"value {i}".encode())
        for key in keys[::6]:
            await client.delete(f"/v1/keys/{key}")
        for key in keys[1::6]:
            await client.post(f"/v1/keys/{key}/invalidate")
        ops: list[dict[str, Any]] = [{"op": "get", "key": key} for key in keys]
        ops[2]["min_version"] = 10**15  # newer than anything: 412
        ops.append({"op": "get", "key": keys[3]})  # the same key twice
        batched = await _batch_get(client, ops)
        singles = [_single(await client.get(f"/v1/keys/{key}")) for key in keys]
    assert [_batched(r) for r in batched[:COUNT]][3:] == singles[3:]
    assert _batched(batched[0]) == singles[0] == (404, None, None)  # deleted
    assert batched[2]["status"] == 412
    assert _batched(batched[COUNT]) == singles[3]
    tiers = {r.get("cache_status") for r in batched if r["status"] == 200}
    assert "cachegw; hit; detail=primary" in tiers


async def test_batch_reads_with_a_paused_primary_fall_back_key_by_key(stack: Stack) -> None:
    prefix = "many-" + secrets.token_hex(4)
    keys = [f"{prefix}-{i}" for i in range(60)]
    async with gateway_client(settings_for(stack)) as (client, _):
        for key in keys:
            await client.put(f"/v1/keys/{key}", content=key.encode())
        owner = owner_of(stack, key_slot(f"cg:default:{keys[0]}".encode()))
        port = int(owner["port"])  # type: ignore[call-overload]
        await asyncio.to_thread(stack.pause_node, port)
        try:
            results = await _batch_get(client, [{"op": "get", "key": key} for key in keys])
        finally:
            await asyncio.to_thread(stack.resume_node, port)
    assert [r["status"] for r in results] == [200] * len(keys), results[:3]
    details = {r["cache_status"] for r in results}
    assert any("detail=replica" in d or "detail=local" in d for d in details), details


async def test_a_batch_of_misses_is_read_from_the_store_in_one_statement(stack: Stack) -> None:
    """100 keys only the store has: one get_many statement (or a few), not 100 reads."""
    prefix = "many-" + secrets.token_hex(4)
    keys = [f"{prefix}-{i}" for i in range(100)]
    async with gateway_client(settings_for(stack)) as (client, _):
        for key in keys:
            await client.put(f"/v1/keys/{key}", content=key.encode())
            await client.post(f"/v1/keys/{key}/invalidate")  # only the store can answer now
        before = _store_queries()
        results = await _batch_get(client, [{"op": "get", "key": key} for key in keys])
        after = _store_queries()
    assert [r["status"] for r in results] == [200] * len(keys), results[:3]
    assert all("fwd=miss" in r["cache_status"] for r in results), results[:3]
    many = after.get("get_many", 0) - before.get("get_many", 0)
    single = after.get("get", 0) - before.get("get", 0)
    assert 1 <= many <= 3, (many, single)
    assert single <= 3, (many, single)


def _store_queries() -> dict[str, float]:
    from prometheus_client import REGISTRY

    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "cachegw_store_queries":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels.get("outcome") == "ok":
                    operation = sample.labels["operation"]
                    out[operation] = out.get(operation, 0) + sample.value
    return out
