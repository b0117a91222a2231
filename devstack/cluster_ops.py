"""Cluster surgery for tests and benchmarks: who owns a slot, and moving a slot by hand."""

from __future__ import annotations

import asyncio
import subprocess

from app.cluster.slots import key_slot
from app.codec import redis_key
from devstack import Stack


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
        keys = (await cli(source_port, "CLUSTER", "GETKEYSINSLOT", slot, batch)).split()
        if not keys:
            break
        await cli(source_port, "MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
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
