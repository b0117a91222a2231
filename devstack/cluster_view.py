"""Talking to one of the stack's nodes (redis-py's client) and what it reports, parsed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from devstack.config import HOST

CALL_TIMEOUT_S = 1.0
NODE_ERRORS = (RedisError, OSError)
"""What a call to a node raises when the node is down, paused, or answers with an error."""


def _text(response: str, **options: object) -> str:
    return response


@contextlib.contextmanager
def node_client(port: int, *, timeout_s: float = CALL_TIMEOUT_S) -> Iterator[redis.Redis]:
    """redis-py's client for the node on 127.0.0.1:port, closed afterwards.

    It never retries (a paused node must cost one timeout, not four), and CLUSTER NODES comes
    back as the node's text, for :func:`parse_cluster_nodes`. The stack's nodes need no password.
    """
    client = redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    client.set_response_callback("CLUSTER NODES", _text)
    try:
        yield client
    finally:
        client.close()


def ping(port: int, *, timeout_s: float = CALL_TIMEOUT_S) -> bool:
    try:
        with node_client(port, timeout_s=timeout_s) as client:
            return bool(client.ping())
    except NODE_ERRORS:
        return False


def replication(client: redis.Redis) -> dict[str, str]:
    """INFO replication as text values (redis-py turns numbers into ints)."""
    return {name: str(value) for name, value in client.info("replication").items()}


def cluster_info(client: redis.Redis) -> dict[str, str]:
    return {name: str(value) for name, value in client.cluster("INFO").items()}


def cluster_nodes_text(client: redis.Redis) -> str:
    return str(client.cluster("NODES"))


@dataclass(frozen=True)
class ClusterNode:
    id: str
    host: str
    port: int
    role: str  # "primary" | "replica" | "unknown"
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]
    flags: frozenset[str]
    link_state: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "role": self.role,
            "primary_id": self.primary_id,
            "slots": list(self.slots),
            "flags": sorted(self.flags),
            "link_state": self.link_state,
        }


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """Parse CLUSTER NODES output (``<id> <ip:port@cport[,host]> <flags> <primary> ...``)."""
    nodes: list[ClusterNode] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flag_text, primary = parts[0], parts[1], parts[2], parts[3]
        hostport = address.split("@", 1)[0].split(",", 1)[0]
        host, _, port_text = hostport.rpartition(":")
        flags = frozenset(f for f in flag_text.split(",") if f and f != "noflags")
        if "master" in flags:
            role = "primary"
        elif "slave" in flags:
            role = "replica"
        else:
            role = "unknown"
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # [slot->-importing] / [slot-<-migrating]
                continue
            start, _, end = item.partition("-")
            if start.isdigit() and (not end or end.isdigit()):
                slots.append((int(start), int(end or start)))
        nodes.append(
            ClusterNode(
                id=node_id,
                host=host,
                port=int(port_text) if port_text.isdigit() else 0,
                role=role,
                primary_id=None if primary == "-" else primary,
                slots=tuple(sorted(slots)),
                flags=flags,
                link_state=parts[7],
            )
        )
    return nodes


@dataclass
class NodeView:
    info: dict[str, str]
    nodes: list[ClusterNode] = field(default_factory=list)


def node_view(port: int) -> NodeView:
    with node_client(port) as client:
        info = cluster_info(client)
        nodes = parse_cluster_nodes(cluster_nodes_text(client))
    return NodeView(info=info, nodes=nodes)


def info_int(info: dict[str, str], key: str) -> int:
    value = info.get(key, "")
    return int(value) if value.isdigit() else -1
