"""What a node reports: INFO text and CLUSTER NODES lines, parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from devstack.resp import redis_text


def parse_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


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
    info = parse_info(redis_text(port, "CLUSTER", "INFO"))
    nodes = parse_cluster_nodes(redis_text(port, "CLUSTER", "NODES"))
    return NodeView(info=info, nodes=nodes)


def info_int(info: dict[str, str], key: str) -> int:
    value = info.get(key, "")
    return int(value) if value.isdigit() else -1
