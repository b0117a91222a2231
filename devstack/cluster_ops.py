"""Cluster surgery for tests and benchmarks: who owns a slot, and moving a slot by hand."""

from __future__ import annotations

import asyncio
import subprocess

from app.cluster.slots import key_slot
from app.codec import redis_key
from devstack import Stack
from devstack.cluster_view import node_client
from devstack.config import HOST


def redis_cli(port: int, *args: str) -> str:
    proc = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    if proc.stdout.startswith("ERR") or proc.stdout.startswith("(error)"):
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {proc.stdout.strip()}")
    return proc.stdout.strip()


def primaries(stack: Stack) -> list[dict[str, object]]:
    return [n for n in stack.cluster_nodes() if n["role"] == "primary" and n["slots"]]


def owner_of(stack: Stack, slot: int) -> dict[str, object]:
    for node in primaries(stack):
        for start, end in node["slots"]:  # type: ignore[attr-defined]
            if start <= slot <= end:
                return node
    raise LookupError(f"no owner for slot {slot}")


def key_in_node(stack: Stack, node: dict[str, object], prefix: str) -> str:
    """A key (as the gateway names it) whose Redis key lands in ``node``'s slots."""
    for i in range(100_000):
        key = f"{prefix}-{i}"
        if owner_of(stack, key_slot(redis_key("cg", "default", key)))["id"] == node["id"]:
            return key
    raise LookupError("no key found")


def move_keys(slot: int, source_port: int, target_port: int, batch: int) -> int:
    """MIGRATE up to ``batch`` of the keys still in ``slot`` from source to target; how many.

    Binary-safe (redis-py, not redis-cli's argv): the gateway keeps keys of its own in some
    slots (a node's marker and repair lease), and their names begin with a NUL byte.
    """
    with node_client(source_port) as client:
        keys: list[str] = client.cluster("GETKEYSINSLOT", slot, batch)
        if keys:
            client.migrate(HOST, target_port, keys, 0, 5000)
        return len(keys)


def move_every_key(slot: int, source_port: int, target_port: int) -> int:
    """Every key still in ``slot`` moved from source to target (what a resharding does)."""
    moved = 0
    for _ in range(10_000):
        count = move_keys(slot, source_port, target_port, 100)
        if not count:
            return moved
        moved += count
    raise RuntimeError(f"slot {slot} still has keys after 1,000,000 were moved")


async def migrate_slot_slowly(
    stack: Stack, slot: int, target: dict[str, object], *, batch: int = 3, pause_s: float = 0.1
) -> int:
    """Move ``slot`` to ``target`` a few keys at a time (MIGRATING/IMPORTING held throughout)."""
    source = owner_of(stack, slot)
    source_port, target_port = int(source["port"]), int(target["port"])  # type: ignore[call-overload]

    async def cli(port: int, *args: object) -> str:
        return await asyncio.to_thread(redis_cli, port, *map(str, args))

    await cli(target_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", source["id"])
    await cli(source_port, "CLUSTER", "SETSLOT", slot, "MIGRATING", target["id"])
    moved = 0
    for _ in range(10_000):
        count = await asyncio.to_thread(move_keys, slot, source_port, target_port, batch)
        if not count:
            break
        moved += count
        await asyncio.sleep(pause_s)
    for node in primaries(stack):
        await cli(int(node["port"]), "CLUSTER", "SETSLOT", slot, "NODE", target["id"])  # type: ignore[call-overload]
    return moved


async def reshard(
    stack: Stack, source: dict[str, object], target: dict[str, object], slots: int
) -> None:
    """``redis-cli --cluster reshard`` of ``slots`` slots from ``source`` to ``target``."""
    await asyncio.to_thread(
        subprocess.run,
        [
            "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source['port']}",
            "--cluster-from", str(source["id"]), "--cluster-to", str(target["id"]),
            "--cluster-slots", str(slots), "--cluster-yes",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
