"""Read-your-writes (``Cachegw-Min-Version``) on the real stack, across two gateway instances:
a read that names the version its caller wrote is never answered with an older copy, even right
after the write went through the other instance and while the key's primary is paused.

The invalidation feed usually tells the second instance of the write before its writer has the
answer (a NOTIFY is delivered at commit), which hides the race this header closes: a feed that
lags (a slow network, a busy event loop, a relay's batching). The test makes instance B's feed
lag by holding back what it would apply, then lets it go."""

from __future__ import annotations

import asyncio
import secrets

import httpx

from app.cluster.slots import key_slot
from app.gateway import Gateway
from devstack import Stack
from devstack.cluster_ops import owner_of
from tests.integration.conftest import gateway_client, settings_for

KEYS = 40


class Held:
    def __init__(self, gateway: Gateway) -> None:
        self.feed = gateway.feed
        self.apply = gateway.feed.announce
        self.rows: list[tuple[str, str, int]] = []

    def hold(self, namespace: str, key: str, seq: int) -> None:
        self.rows.append((namespace, key, seq))

    def release(self) -> None:
        del self.feed.announce  # the method again
        for row in self.rows:
            self.apply(*row)


def lag(gateway: Gateway) -> Held:
    """The feed of ``gateway`` holds back every announcement until ``release``."""
    held = Held(gateway)
    gateway.feed.announce = held.hold  # type: ignore[method-assign]
    return held


def _version(response: httpx.Response) -> int:
    return int(response.headers["etag"].strip('"'))


async def test_a_read_naming_the_version_just_written_elsewhere_is_never_older(
    healthy_stack: Stack,
) -> None:
    stack = healthy_stack
    settings = settings_for(stack)
    prefix = "ryw-" + secrets.token_hex(4)
    keys = [f"{prefix}-{i}" for i in range(KEYS)]
    async with gateway_client(settings) as (a, _), gateway_client(settings) as (b, b_gateway):
        for key in keys:
            assert (await a.put(f"/v1/keys/{key}", content=b"v1")).status_code == 201
            assert (await b.get(f"/v1/keys/{key}")).content == b"v1"  # b keeps a copy
        held = lag(b_gateway)
        # The primary of the first key's slot paused: b's copies of its keys are in its local
        # tier and on the replica, both older than what a writes next.
        owner = owner_of(stack, key_slot(f"cg:default:{keys[0]}".encode()))
        port = int(owner["port"])  # type: ignore[call-overload]
        await asyncio.to_thread(stack.pause_node, port)
        try:
            seen = []
            for key in keys:
                written = await a.put(f"/v1/keys/{key}", content=b"v2")
                assert written.status_code == 200, written.text
                version = _version(written)
                if key == keys[0]:
                    without = await b.get(f"/v1/keys/{key}")  # no header: b knows no better
                read = await b.get(f"/v1/keys/{key}", headers={"Cachegw-Min-Version": str(version)})
                assert read.status_code == 200, read.text
                seen.append((key, _version(read), version, read.content))
        finally:
            await asyncio.to_thread(stack.resume_node, port)
            held.release()
    assert without.content == b"v1", "the feed did not lag: this test shows nothing"
    older = [s for s in seen if s[1] < s[2] or s[3] != b"v2"]
    assert older == [], older[:5]


async def test_a_min_version_the_store_has_not_reached_is_a_412_problem(stack: Stack) -> None:
    key = "ryw-" + secrets.token_hex(4)
    async with gateway_client(settings_for(stack)) as (client, _):
        version = _version(await client.put(f"/v1/keys/{key}", content=b"x"))
        cached = await client.get(
            f"/v1/keys/{key}", headers={"Cachegw-Min-Version": f'"{version}"'}
        )
        assert cached.status_code == 200
        assert "detail=primary" in cached.headers["cache-status"]  # at or under: a plain hit
        ahead = await client.get(
            f"/v1/keys/{key}", headers={"Cachegw-Min-Version": str(version + 10**9)}
        )
        assert ahead.status_code == 412, ahead.text
        assert ahead.headers["content-type"] == "application/problem+json"
        assert ahead.json()["type"] == "/problems/min-version-unavailable"
        assert _version(ahead) == version  # the store's version, for the caller to judge
        for bad in ("abc", "-1", "", "1.5", '"7', "9" * 30):
            refused = await client.get(f"/v1/keys/{key}", headers={"Cachegw-Min-Version": bad})
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["type"] == "/problems/invalid-min-version"
        after = await client.get(f"/v1/keys/{key}")
    assert (after.status_code, after.content, _version(after)) == (200, b"x", version)
