"""Reads of a slot in the middle of a migration, with idle connections to the importing node.

redis-py's cluster client sends ASKING and the redirected command on different pooled
connections, so such reads fail with "TTL exhausted" whenever the importing node has two or more
idle connections. The gateway sends them together on one connection.
"""

from __future__ import annotations

import asyncio
import uuid

from prometheus_client import REGISTRY

from app.cluster.slots import key_slot
from devstack import Stack
from devstack.cluster_ops import key_in_node, move_every_key, owner_of, primaries, redis_cli
from tests.integration.conftest import gateway_client, settings_for


def redirects(kind: str) -> float:
    return REGISTRY.get_sample_value("cachegw_redis_redirects_total", {"kind": kind}) or 0.0


async def test_reads_of_a_migrating_slot_are_right_with_idle_connections_to_the_target(
    healthy_stack: Stack,
) -> None:
    stack = healthy_stack
    tag = f"mig-{uuid.uuid4().hex[:8]}"
    keys = [f"{{{tag}}}:{i}" for i in range(20)]
    slot = key_slot(f"cg:default:{keys[0]}".encode())
    async with gateway_client(settings_for(stack)) as (client, gateway):
        for key in keys:
            assert (await client.put(f"/v1/keys/{key}", content=key.encode())).status_code == 201
        source = owner_of(stack, slot)
        target = next(n for n in primaries(stack) if n["id"] != source["id"])
        target_port = int(target["port"])  # type: ignore[call-overload]
        source_port = int(source["port"])  # type: ignore[call-overload]

        # Idle connections to the importing node: commands of the gateway's client that overlap
        # (each in its own loop turn while the earlier ones are still in flight).
        node = gateway.slots.node(("127.0.0.1", target_port))
        loop = asyncio.get_running_loop()
        calls = []
        for _ in range(4):
            command = (b"DEBUG", b"SLEEP", b"0.02")
            calls.append(asyncio.ensure_future(node.call(command, deadline=loop.time() + 2)))
            await asyncio.sleep(0)
        await asyncio.gather(*calls)
        open_, idle = node.connections
        assert idle >= 2, (open_, idle)
        warm = key_in_node(stack, target, f"warm-{tag}")
        await client.put(f"/v1/keys/{warm}", content=b"w")

        redis_cli(target_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", str(source["id"]))
        redis_cli(source_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", str(target["id"]))
        moved = [f"cg:default:{key}" for key in keys[:10]]
        redis_cli(
            source_port, "MIGRATE", "127.0.0.1", str(target_port), "", "0", "5000", "KEYS", *moved
        )

        asks_before = redirects("ask")
        for _ in range(3):
            answers = await asyncio.gather(*(client.get(f"/v1/keys/{key}") for key in keys))
            for key, answer in zip(keys, answers, strict=True):
                assert answer.status_code == 200, answer.text
                assert answer.content == key.encode()
                assert answer.headers["cache-status"] == "cachegw; hit; detail=primary"
        assert redirects("ask") - asks_before >= 30

        # Finish the migration (every key of the slot: the gateway may keep one of its own
        # there, a node's marker); the old owner now answers MOVED.
        assert move_every_key(slot, source_port, target_port) >= 10
        for primary in primaries(stack):
            port = int(str(primary["port"]))
            redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", str(target["id"]))
        moved_before = redirects("moved")
        answers = await asyncio.gather(*(client.get(f"/v1/keys/{key}") for key in keys))
        assert [a.content for a in answers] == [key.encode() for key in keys]
        assert redirects("moved") - moved_before >= 1
        shard = gateway.slots.map.shard(slot)
        assert shard is not None
        assert shard.primary == ("127.0.0.1", target_port)
