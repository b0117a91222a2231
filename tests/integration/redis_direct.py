"""Reading Redis behind the gateway's back, with redis-py's own cluster client."""

from __future__ import annotations

from redis.cluster import ClusterNode, RedisCluster

from app.codec import Entry, Tombstone, decode, encode_entry, redis_key
from devstack import Stack


def cluster_client(stack: Stack) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in stack.redis_ports],  # type: ignore[no-untyped-call]
        decode_responses=False,
        socket_timeout=2,
        socket_connect_timeout=2,
    )


def cached(stack: Stack, key: str, *, namespace: str = "default") -> Entry | Tombstone | None:
    client = cluster_client(stack)
    try:
        raw = client.get(redis_key("cg", namespace, key))
    finally:
        client.close()
    return None if raw is None else decode(raw if isinstance(raw, bytes) else raw.encode())


def drop(stack: Stack, key: str, *, namespace: str = "default") -> None:
    client = cluster_client(stack)
    try:
        client.delete(redis_key("cg", namespace, key))
    finally:
        client.close()


def restore(stack: Stack, key: str, record: Entry, *, namespace: str = "default") -> None:
    """Put a record back as it was (what a node that kept old data would hold)."""
    client = cluster_client(stack)
    try:
        client.set(redis_key("cg", namespace, key), encode_entry(record))
    finally:
        client.close()
