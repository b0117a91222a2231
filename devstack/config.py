"""The stack's shape (node counts, slots, bus port offset, host) and :class:`StackConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devstack.errors import StackError

NODE_COUNT = 6
"""Redis nodes in the cluster: 3 primaries, each with one replica."""
PRIMARY_COUNT = 3
CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000
"""Redis Cluster's bus port is the client port plus this."""
HOST = "127.0.0.1"

_DB_NAME_MAX = 63


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses.

    ``root`` is the data directory. Redis nodes listen on ``redis_base_port`` ..
    ``redis_base_port + 5`` (cluster bus ports are those plus 10000). When
    ``external_pg_dsn`` is set, no private Postgres is started and that DSN is used as is.
    ``pg_bin`` names the directory of the Postgres build to run (its ``pg_ctl``, ``initdb``,
    ``psql``); by default the newest one installed.
    """

    root: Path
    redis_base_port: int = 7000
    pg_port: int = 15432
    cluster_node_timeout_ms: int = 2000
    external_pg_dsn: str | None = None
    pg_database: str = "cachegw"
    pg_bin: Path | None = None

    def __post_init__(self) -> None:
        top = self.redis_base_port + NODE_COUNT - 1 + BUS_PORT_OFFSET
        if self.redis_base_port < 1 or top > 65535:
            raise StackError(
                f"redis_base_port {self.redis_base_port} is out of range: nodes use "
                f"{self.redis_base_port}..{self.redis_base_port + NODE_COUNT - 1} and bus ports "
                f"+{BUS_PORT_OFFSET}, which must stay below 65536"
            )
        if not 1 <= self.pg_port <= 65535:
            raise StackError(f"pg_port {self.pg_port} is out of range 1..65535")
        if self.external_pg_dsn is None:
            redis_ports = {self.redis_base_port + i for i in range(NODE_COUNT)}
            bus_ports = {p + BUS_PORT_OFFSET for p in redis_ports}
            if self.pg_port in redis_ports | bus_ports:
                raise StackError(f"pg_port {self.pg_port} collides with a Redis node or bus port")
        if not 100 <= self.cluster_node_timeout_ms <= 600_000:
            raise StackError(
                f"cluster_node_timeout_ms {self.cluster_node_timeout_ms} is out of range "
                "100..600000"
            )
        if (
            not self.pg_database
            or len(self.pg_database) > _DB_NAME_MAX
            or "\x00" in self.pg_database
        ):
            raise StackError(f"pg_database {self.pg_database!r} is not a valid database name")
        if self.external_pg_dsn is not None and not self.external_pg_dsn.strip():
            raise StackError("external_pg_dsn is empty")
