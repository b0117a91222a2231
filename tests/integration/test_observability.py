"""Metrics summed over worker processes, request ids, the admin endpoints and explain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from devstack import Stack
from devstack.rawhttp import Connection
from tests.integration.conftest import auth_headers, gateway_client, settings_for
from tests.integration.harness import gateway_process
from tests.integration.test_api_keys import new_key


def sample(text: str, name: str, labels: dict[str, str]) -> float:
    """The sum of a metric's samples that carry every one of ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_with_two_workers_metrics_are_the_sum_over_processes(
    stack: Stack, tmp_path: Path
) -> None:
    with gateway_process(stack, tmp_path, WORKERS="2") as base:
        async with httpx.AsyncClient(base_url=base, timeout=5, headers=auth_headers()) as client:
            key = new_key("mp")
            await client.put(f"/v1/keys/{key}", content=b"v")
            host, port = base.removeprefix("http://").rsplit(":", 1)
            connections = [Connection(host, int(port), headers=auth_headers()) for _ in range(30)]
            try:
                for _ in range(10):
                    replies = await asyncio.gather(
                        *(c.request("GET", f"/v1/keys/{key}") for c in connections)
                    )
                    assert {r.status for r in replies} == {200}
            finally:
                await asyncio.gather(*(c.close() for c in connections))
            labels = {"handler": "/v1/keys/{key}", "method": "GET", "status": "2xx"}
            seen = [
                sample((await client.get("/metrics")).text, "http_requests_total", labels)
                for _ in range(6)
            ]
            workers = {
                line.split('pid="')[1].split('"')[0]
                for line in (await client.get("/metrics")).text.splitlines()
                if line.startswith("cachegw_local_entries{") and 'pid="' in line
            }
    assert seen == [300.0] * 6  # whichever worker answers, the total is the same
    assert len(workers) <= 2


async def test_every_answer_carries_a_request_id(gw: tuple[httpx.AsyncClient, object]) -> None:
    client, _ = gw
    given = await client.get(f"/v1/keys/{new_key()}", headers={"X-Request-ID": "trace-me-42"})
    assert given.status_code == 404
    assert given.headers["x-request-id"] == "trace-me-42"
    fresh = await client.get("/livez")
    assert len(fresh.headers["x-request-id"]) == 16
    hostile = await client.get("/livez", headers={"X-Request-ID": "x" * 200})
    assert hostile.headers["x-request-id"] != "x" * 200


async def test_explain_routes_without_the_value(stack: Stack) -> None:
    async with gateway_client(settings_for(stack)) as (client, _):
        key = new_key("explained")
        await client.put(f"/v1/keys/{key}", content=b"secret-value")
        await client.get(f"/v1/keys/{key}")
        response = await client.get(f"/v1/keys/{key}", params={"explain": "1"})
        assert response.status_code == 200
        document = response.json()
        assert document["key"] == key
        assert 0 <= document["redis_key_slot"] < 16384
        assert document["owner"]
        assert document["tier_order"][0].startswith("primary@")
        assert document["tier_order"][-2:] == ["local", "store"]
        assert document["local_copy"]["seq"] > 0
        assert document["load_in_flight"] is False
        assert b"secret-value" not in response.content


async def test_admin_summary_breakers_and_topology(stack: Stack) -> None:
    async with gateway_client(settings_for(stack)) as (client, _):
        await client.get(f"/v1/keys/{new_key()}")
        summary = (await client.get("/v1/admin")).json()
        assert summary["degraded_mode"]["active"] is False
        assert summary["invalidation_feed"]["up"] is True
        assert summary["slots_mapped"] == 16384
        breakers = (await client.get("/v1/admin/breakers")).json()["breakers"]
        assert any(b["route"] == "store" for b in breakers)
        topology = (await client.get("/v1/admin/topology")).json()
        assert len(topology["shards"]) == 3
        roles = sorted(n["role"] for n in topology["nodes"])
        assert roles == ["primary"] * 3 + ["replica"] * 3
        assert all(n["cluster_info"]["cluster_state"] == "ok" for n in topology["nodes"])
        # A replica of an empty shard is "loading" in CLUSTER SHARDS, so not yet in the map.
        assert all(n["in_slot_map"] in (n["role"], None) for n in topology["nodes"])
        assert sum(n["in_slot_map"] == "primary" for n in topology["nodes"]) == 3
        assert all(0 <= n["last_seen_s_ago"] < 5 for n in topology["nodes"])
        assert json.dumps(topology)  # plain JSON all the way down
