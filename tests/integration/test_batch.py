"""``POST /v1/batch`` on the real stack: a result per op in request order, each op what its
single-key form is, one op's failure only its own, and request-level errors changing nothing."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import httpx

from devstack import Stack
from tests.integration.conftest import auth_headers, create_key, gateway_client, settings_for


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def new_key() -> str:
    return "batch-" + secrets.token_hex(6)


async def batch(client: httpx.AsyncClient, ops: list[dict[str, object]], **kw: object) -> Any:
    response = await client.post("/v1/batch", json={"ops": ops}, **kw)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return response.json()["results"]


async def test_a_mixed_batch_answers_each_op_in_order(stack: Stack) -> None:
    k1, k2, k3, absent = new_key(), new_key(), new_key(), new_key()
    async with gateway_client(settings_for(stack)) as (client, _):
        v3 = (await client.put(f"/v1/keys/{k3}", content=b"three")).headers["etag"]
        results = await batch(client, [
            {"op": "put", "key": k1, "value": b64(b"one"), "content_type": "text/plain",
             "ttl": 60},
            {"op": "get", "key": k1},  # after the put: ops on one key run in order
            {"op": "get", "key": absent},
            {"op": "put", "key": k2, "value": b64(b"\x00\xff"), "if_match": '"1"'},
            {"op": "delete", "key": k3, "if_match": v3},
            {"op": "get", "key": k3},
            {"op": "get", "key": "bad/key"},
            {"op": "put", "key": k2, "value": "not base64!"},
            {"op": "touch", "key": k1, "ttl": 3600},
        ])  # fmt: skip
        single = await client.get(f"/v1/keys/{k1}")
        absent_after = await client.get(f"/v1/keys/{k2}")
    assert [r["status"] for r in results] == [201, 200, 404, 412, 204, 404, 422, 400, 200]
    put, got = results[0], results[1]
    assert base64.b64decode(got["value"]) == b"one"
    assert got["etag"] == put["etag"] == results[8]["etag"]  # a touch keeps the version
    assert got["content_type"] == "text/plain"
    assert got["cache_status"].startswith("cachegw;")
    assert results[2]["problem"]["type"] == "/problems/key-not-found"
    assert results[3]["problem"]["type"] == "/problems/precondition-failed"
    assert results[6]["problem"]["type"] == "/problems/invalid-key"
    assert results[7]["problem"]["type"] == "/problems/invalid-batch"
    assert single.headers["etag"] == put["etag"]  # the batch's writes are the single-key ones
    assert absent_after.status_code == 404  # the failed ops wrote nothing


async def test_request_level_errors_are_problems_and_change_nothing(stack: Stack) -> None:
    key = new_key()
    put = {"op": "put", "key": key, "value": b64(b"x")}
    async with gateway_client(settings_for(stack)) as (client, _):
        cases = {
            "not json": (b"{ops: [", {"content-type": "application/json"}, 400),
            "unknown op": (json.dumps({"ops": [put, {"op": "incr", "key": key}]}).encode(),
                           {}, 400),
            "no ops": (b'{"ops": []}', {}, 400),
            "too many ops": (json.dumps({"ops": [put] * 1001}).encode(), {}, 400),
            "a field too many": (json.dumps({"ops": [{**put, "colour": "red"}]}).encode(), {},
                                 400),
            "not json media": (json.dumps({"ops": [put]}).encode(),
                               {"content-type": "text/plain"}, 415),
            "over 8 MiB": (json.dumps({"ops": [{**put, "value": "A" * (8 << 20)}]}).encode(),
                           {}, 413),
        }  # fmt: skip
        for name, (body, headers, status) in cases.items():
            response = await client.post(
                "/v1/batch", content=body, headers={"content-type": "application/json", **headers}
            )
            assert response.status_code == status, (name, response.text[:300])
            assert response.headers["content-type"] == "application/problem+json", name
        assert (await client.get("/v1/batch")).status_code == 405
        assert (await client.get(f"/v1/keys/{key}")).status_code == 404  # nothing ran


async def test_each_op_needs_its_own_scope_and_the_policy_applies_to_every_get(
    stack: Stack,
) -> None:
    cached, uncached = new_key(), new_key()
    reader = create_key(stack, "default", "read")
    async with gateway_client(settings_for(stack)) as (client, _):
        await client.put(f"/v1/keys/{cached}", content=b"c")
        await client.get(f"/v1/keys/{cached}")
        # written to the store behind the caches' back: only the store has it
        await client.put(f"/v1/keys/{uncached}", content=b"u")
        await client.post(f"/v1/keys/{uncached}/invalidate")
        results = await batch(
            client,
            [{"op": "get", "key": cached}, {"op": "get", "key": uncached},
             {"op": "put", "key": new_key(), "value": ""}],
            headers={**auth_headers(reader), "Cache-Control": "only-if-cached"},
        )  # fmt: skip
        version = int(results[0]["etag"].strip('"'))
        ahead = await batch(client, [{"op": "get", "key": cached, "min_version": version + 10**6}])
    assert [r["status"] for r in results] == [200, 504, 403]
    assert results[2]["problem"]["type"] == "/problems/forbidden"
    assert ahead[0]["status"] == 412
    assert ahead[0]["etag"] == results[0]["etag"]
