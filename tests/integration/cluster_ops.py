"""Cluster surgery for tests: who owns a slot, and moving a slot by hand."""

from __future__ import annotations

import subprocess

from app.cluster.slots import key_slot
from app.devstack import Stack


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
        if owner_of(stack, key_slot(f"cg:default:{key}".encode()))["id"] == node["id"]:
            return key
    raise LookupError("no key found")
