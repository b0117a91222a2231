"""``POST /v1/keys/{key}/touch?ttl=N`` on the real stack: a new TTL without the value, the ETag
unchanged, and every tier of every instance agreeing on the new expiry."""

from __future__ import annotations

import asyncio
import re
import secrets

import httpx

from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for


def _max_age(response: httpx.Response) -> int:
    found = re.search(r"max-age=(\d+)", response.headers.get("cache-control", ""))
    assert found is not None, response.headers
    return int(found.group(1))


def new_key() -> str:
    return "touch-" + secrets.token_hex(6)


async def test_a_touch_extends_the_ttl_everywhere_and_keeps_the_etag(stack: Stack) -> None:
    settings = settings_for(stack)
    key = new_key()
    async with gateway_client(settings) as (a, _), gateway_client(settings) as (b, _):
        put = await a.put(f"/v1/keys/{key}?ttl=60", content=b"value")
        assert put.status_code == 201
        for client in (a, b):  # both instances hold copies expiring in 60 s
            read = await client.get(f"/v1/keys/{key}")
            assert _max_age(read) <= 60
        touched = await a.post(f"/v1/keys/{key}/touch?ttl=3600")
        assert touched.status_code == 200, touched.text
        assert touched.headers["etag"] == put.headers["etag"]  # the value did not change
        body = touched.json()
        assert (body["key"], body["etag"]) == (key, put.headers["etag"])
        assert body["expires_at"] is not None
        await asyncio.sleep(0.2)  # the announcement reaches b
        for client in (a, b):
            read = await client.get(f"/v1/keys/{key}")
            assert (read.status_code, read.content) == (200, b"value")
            assert read.headers["etag"] == put.headers["etag"]
            assert 3500 < _max_age(read) <= 3600, (read.headers, read.headers["cache-status"])
            # a conditional read with the old ETag is still a 304: the value is the same
            again = await client.get(
                f"/v1/keys/{key}", headers={"If-None-Match": put.headers["etag"]}
            )
            assert again.status_code == 304


async def test_a_shorter_ttl_expires_the_key_on_every_instance(stack: Stack) -> None:
    settings = settings_for(stack)
    key = new_key()
    async with gateway_client(settings) as (a, _), gateway_client(settings) as (b, _):
        assert (await a.put(f"/v1/keys/{key}", content=b"v")).status_code == 201
        assert (await b.get(f"/v1/keys/{key}")).status_code == 200  # b caches it, no ttl
        assert (await a.post(f"/v1/keys/{key}/touch?ttl=1")).status_code == 200
        await asyncio.sleep(1.5)
        for client in (a, b):
            gone = await client.get(f"/v1/keys/{key}")
            assert gone.status_code == 404, (gone.headers, gone.text)


async def test_touch_preconditions_and_bad_input_change_nothing(stack: Stack) -> None:
    key = new_key()
    async with gateway_client(settings_for(stack)) as (client, _):
        missing = await client.post(f"/v1/keys/{new_key()}/touch?ttl=60")
        assert missing.status_code == 404
        assert missing.json()["type"] == "/problems/key-not-found"
        put = await client.put(f"/v1/keys/{key}?ttl=60", content=b"v")
        etag = put.headers["etag"]
        wrong = await client.post(f"/v1/keys/{key}/touch?ttl=600", headers={"If-Match": '"1"'})
        assert wrong.status_code == 412
        assert wrong.headers["etag"] == etag
        for query in ("", "?ttl=", "?ttl=abc", "?ttl=0", "?ttl=999999999", "?ttl=5&ttl=6"):
            bad = await client.post(f"/v1/keys/{key}/touch{query}")
            assert bad.status_code == 422, (query, bad.text)
            assert bad.headers["content-type"] == "application/problem+json"
            assert bad.json()["type"] == "/problems/invalid-ttl"
        assert (await client.get(f"/v1/keys/{key}/touch")).status_code == 405
        unchanged = await client.get(f"/v1/keys/{key}")
        assert _max_age(unchanged) <= 60  # none of these touched it
        right = await client.post(f"/v1/keys/{key}/touch?ttl=600", headers={"If-Match": etag})
        assert right.status_code == 200
        assert 590 < _max_age(await client.get(f"/v1/keys/{key}")) <= 600
