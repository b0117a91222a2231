"""Redis that returns with old data is never believed .

A primary is snapshotted (``SAVE``: what ``save`` persistence leaves on disk), its keys are then
written again or deleted through the gateway, the gateway forgets them (a short ``versions_ttl``),
and the primary is SIGKILLed and started again at once, before any failover, from the snapshot.
Its old copies must never be served: not as a primary hit, not at all. Before, they were, as
``hit; detail=primary``, with their old ETag, until their TTL ran out.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY

from app.codec import Entry, Tombstone
from app.gateway import Gateway
from devstack import Stack
from devstack.cluster_ops import key_in_node, primaries
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.redis_direct import cached

KEYS = 12


def repairs(how: str) -> float:
    return REGISTRY.get_sample_value("cachegw_primary_repairs_total", {"how": how}) or 0.0


async def wait_believed(gateway: Gateway, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while gateway.slots.provenance.suspects() or gateway.slots.provenance.unverified():
        assert time.monotonic() < deadline, gateway.slots.provenance.suspects()
        await asyncio.sleep(0.05)


async def back_from_an_older_snapshot(
    stack: Stack, client: httpx.AsyncClient, gateway: Gateway
) -> tuple[dict[str, int | None], list[str]]:
    """Keys of one primary written, snapshotted, written again or deleted, then the primary
    restarted from the snapshot. What each key must read now (its version, None: deleted), and
    the problems seen while reading them during and after the restart."""
    victim = primaries(stack)[0]
    port = int(victim["port"])  # type: ignore[call-overload]
    run = uuid.uuid4().hex[:6]
    keys = [key_in_node(stack, victim, f"snap-{run}-{i}") for i in range(KEYS)]
    for key in keys:
        assert (await client.put(f"/v1/keys/{key}", content=b"old " + key.encode())).is_success
    await asyncio.sleep(1.2)  # a marker round or two after the writes
    await asyncio.to_thread(stack.snapshot_node, port)
    expected: dict[str, int | None] = {}
    for i, key in enumerate(keys):
        if i % 3 == 0:
            assert (await client.delete(f"/v1/keys/{key}")).status_code == 204
            expected[key] = None
        else:
            reply = await client.put(f"/v1/keys/{key}", content=b"new " + key.encode())
            expected[key] = int(reply.headers["etag"].strip('"'))
    await asyncio.sleep(gateway.settings.feed.versions_ttl_s + 0.5)  # forgotten by the gateway
    await asyncio.to_thread(stack.kill_node, port)
    await asyncio.to_thread(stack.start_node, port)  # before any failover, with the old data
    problems: list[str] = []
    until = time.monotonic() + 6
    while time.monotonic() < until:
        for key in keys:
            reply = await client.get(f"/v1/keys/{key}")
            if reply.status_code == 200 and reply.content.startswith(b"old "):
                problems.append(f"{key}: old value served ({reply.headers.get('cache-status')})")
            elif expected[key] is None and reply.status_code != 404:
                problems.append(f"{key}: deleted, answered {reply.status_code}")
        await asyncio.sleep(0.05)
    return expected, problems


@pytest.mark.parametrize(
    ("retain_s", "how"),
    [(120.0, "replayed"), (12.0, "emptied")],
    ids=["replayed from the outbox", "emptied: older than the outbox keeps"],
)
async def test_a_primary_back_from_an_older_snapshot_is_never_believed(
    healthy_stack: Stack, retain_s: float, how: str
) -> None:
    stack = healthy_stack
    settings = settings_for(
        stack,
        feed={"versions_ttl_s": 3.0},
        local={"max_age_s": 3.0},
        redis={"tombstone_ttl_s": 1},
        outbox={"retain_s": retain_s},
    )
    async with gateway_client(settings) as (client, gateway):
        before = repairs(how)
        expected, problems = await back_from_an_older_snapshot(stack, client, gateway)
        assert problems == [], problems[:5]
        await wait_believed(gateway, timeout_s=20)
        assert repairs(how) > before
        for key, version in expected.items():  # what Redis itself holds now
            record = await asyncio.to_thread(cached, stack, key)
            if version is None:
                assert record is None or isinstance(record, Tombstone), (key, record)
            else:
                assert record is None or (isinstance(record, Entry) and record.version == version)


@pytest.mark.parametrize("other_interval_s", [0.5, 3.0], ids=["together", "one late"])
async def test_two_processes_repair_a_primary_once_between_them(
    healthy_stack: Stack, other_interval_s: float
) -> None:
    """Both processes see the primary come back from an older snapshot; one replays the outbox
    into it, the other waits for that repair (or finds it done, when its rounds are slower) and
    then believes the node too. Before, each replayed it (up to 100,000 rows per process per
    failover)."""
    stack = healthy_stack
    overrides = {
        "feed": {"versions_ttl_s": 3.0}, "local": {"max_age_s": 3.0},
        "redis": {"tombstone_ttl_s": 1}, "outbox": {"retain_s": 120.0},
    }  # fmt: skip
    settings = settings_for(stack, **overrides)
    slower = settings_for(
        stack, **{**overrides, "outbox": {"retain_s": 120.0, "interval_s": other_interval_s}}
    )
    async with (
        gateway_client(settings) as (client, gateway),
        gateway_client(slower) as (_, other),
    ):
        replayed, by_another = repairs("replayed"), repairs("by_another")
        expected, problems = await back_from_an_older_snapshot(stack, client, gateway)
        assert problems == [], problems[:5]
        await wait_believed(gateway, timeout_s=20)
        await wait_believed(other, timeout_s=20)
        assert (repairs("replayed") - replayed, repairs("by_another") - by_another) == (1, 1)
        for key, version in expected.items():
            record = await asyncio.to_thread(cached, stack, key)
            if version is None:
                assert record is None or isinstance(record, Tombstone), (key, record)
            else:
                assert record is None or (isinstance(record, Entry) and record.version == version)
