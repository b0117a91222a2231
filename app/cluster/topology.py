"""The topology watcher: node roles and health, polled in the background, never on a request.

Every ``interval_s`` it asks each known node, with its own short timeout, for ``CLUSTER INFO``
(a node reporting ``cluster_state:fail`` is in a minority partition or cut off, and gets no
traffic) and ``INFO replication`` (role; for a replica its link to the primary and its replication
offset, which against its primary's offset gives the lag). From that it keeps, per replica, the
last time it was known caught up: how far a read from it may be behind the store.

It also keeps the slot gauges from ``CLUSTER INFO``, asks the slot router for a refresh when a
node's role is not what the slot map says (a failover the map has not seen yet), and reports each
node's identity (``run_id`` from ``INFO server``, replication id and offset) to the slot router's
``Provenance``, which stops believing a primary that restarted or changed history.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from app import tasks, telemetry
from app.cluster.provenance import Identity
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import Address, format_address
from app.errors import TierError
from app.settings import TopologySettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class NodeHealth:
    """What the watcher last learned about one node (times are event-loop times)."""

    address: Address
    role: str = "unknown"  # "primary" | "replica" | "unknown"
    cluster_ok: bool | None = None
    reachable: bool = False
    link_up: bool | None = None
    link_down_since_s: float | None = None
    primary: Address | None = None
    offset: int | None = None
    replid: str | None = None
    # A replica's (replication id, offset) when last seen while its primary was believed: its
    # data then was the believed data, and stays so while it does not go back from there.
    believed_position: tuple[str, int] | None = None
    lag_bytes: int | None = None
    caught_up_at: float | None = None
    latency_s: float | None = None
    observed_at: float | None = None
    error: str | None = None
    info: dict[str, str] | None = None

    def as_dict(self, now: float) -> dict[str, object]:
        """As the admin endpoint shows it; for an unreachable node, role and cluster_info are
        what it said when last seen, ``last_seen_s_ago`` before."""
        seen = None if self.observed_at is None else round(now - self.observed_at, 1)
        return {
            "address": format_address(self.address),
            "role": self.role,
            "reachable": self.reachable,
            "last_seen_s_ago": seen,
            "cluster_ok": self.cluster_ok,
            "link_up": self.link_up,
            "link_down_since_s": self.link_down_since_s,
            "primary": format_address(self.primary) if self.primary else None,
            "lag_bytes": self.lag_bytes,
            "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 3),
            "error": self.error,
            "cluster_info": self.info,
        }


def parse_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            out[name.strip()] = value.strip()
    return out


class TopologyWatcher:
    """Owns ``health``; the replica tier and the slot router read it, only this class writes it."""

    def __init__(
        self,
        slots: SlotRouter,
        settings: TopologySettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.slots = slots
        self.settings = settings
        self._clock = clock
        self.health: dict[Address, NodeHealth] = {}
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # -- what the request path asks ------------------------------------------------------------

    def partitioned(self, address: Address) -> bool:
        """True when the node itself says its cluster state is fail."""
        health = self.health.get(address)
        return health is not None and health.cluster_ok is False

    def behind_s(self, address: Address) -> float:
        """How long a read from this replica may be behind its primary (inf when unknown)."""
        health = self.health.get(address)
        if health is None or health.caught_up_at is None:
            return math.inf
        if (
            health.link_up
            and health.lag_bytes is not None
            and health.lag_bytes <= self.settings.replica_max_lag_bytes
        ):
            return 0.0
        return max(0.0, self.now() - health.caught_up_at)

    def rank_replicas(self, replicas: tuple[Address, ...]) -> list[Address]:
        """Usable replicas, best first: healthy link, then lag, then recent latency."""

        def order(address: Address) -> tuple[float, float, float]:
            health = self.health.get(address)
            if health is None:
                return (2.0, math.inf, math.inf)
            link = 0.0 if health.link_up else 1.0
            lag = float(health.lag_bytes) if health.lag_bytes is not None else math.inf
            latency = health.latency_s if health.latency_s is not None else math.inf
            return (link, lag, latency)

        usable = [a for a in replicas if not self.partitioned(a)]
        return sorted(usable, key=order)

    # -- polling ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s * random.uniform(0.9, 1.1))
            try:
                await self.poll_once()
            except Exception:
                log.exception("topology poll failed")

    async def poll_once(self) -> None:
        nodes = self.slots.known_nodes()
        await asyncio.gather(*(self._poll(address) for address in nodes))
        for address in list(self.health):
            if address not in nodes:
                del self.health[address]
                telemetry.forget(telemetry.REPLICA_LAG, format_address(address))
        self._derive_lag()
        self._note_believed_positions()
        self._publish()

    async def _poll(self, address: Address) -> None:
        health = self.health.setdefault(address, NodeHealth(address))
        loop = asyncio.get_running_loop()  # deadlines are in event-loop time, whatever the clock
        started = loop.time()
        deadline = started + self.settings.timeout_s
        try:
            cluster_raw, repl_raw = await asyncio.gather(
                self.slots.execute_on(
                    address, b"CLUSTER", b"INFO", readonly=False, deadline=deadline
                ),
                self.slots.execute_on(  # two sections in one INFO: Redis 7.0 and newer
                    address,
                    b"INFO",
                    b"server",
                    b"replication",
                    readonly=False,
                    deadline=deadline,
                ),
            )
        except TierError as exc:
            health.reachable = False
            health.cluster_ok = None
            health.error = str(exc)
            health.link_up = None if health.role != "replica" else health.link_up
            return
        elapsed = loop.time() - started
        health.latency_s = (
            elapsed if health.latency_s is None else 0.7 * health.latency_s + 0.3 * elapsed
        )
        health.reachable = True
        health.error = None
        health.observed_at = self.now()
        cluster = parse_info(_text(cluster_raw))
        replication = parse_info(_text(repl_raw))  # with the server section's fields
        health.info = cluster
        health.cluster_ok = cluster.get("cluster_state") == "ok"
        if replication.get("role") == "master":
            health.role = "primary"
            health.primary = None
            health.link_up = None
            health.link_down_since_s = None
            health.offset = _int(replication.get("master_repl_offset"))
        else:
            health.role = "replica"
            health.primary = (
                replication.get("master_host", ""),
                _int(replication.get("master_port")) or 0,
            )
            health.link_up = replication.get("master_link_status") == "up"
            health.link_down_since_s = (
                None
                if health.link_up
                else float(replication.get("master_link_down_since_seconds", "-1"))
            )
            health.offset = _int(replication.get("slave_repl_offset"))
        health.replid = replication.get("master_replid")
        identity = Identity(
            run_id=replication.get("run_id", ""),
            role=health.role,
            replid=replication.get("master_replid", ""),
            offset=health.offset or 0,
        )
        if (
            self.slots.provenance.observe(address, identity) is not None
            and health.role == "replica"
        ):
            health.caught_up_at = None  # a new process: how far behind it is, is not known yet
        self._check_role(address, health)

    def _check_role(self, address: Address, health: NodeHealth) -> None:
        """Ask for a slot-map refresh when a node's role differs from the map's, or when a
        replica the map leaves out (it was syncing) now follows its primary with data (the
        watcher polls the mapped nodes and the startup nodes)."""
        shards = self.slots.map.shards()
        is_mapped_primary = any(shard.primary == address for shard in shards)
        if (health.role == "primary") != is_mapped_primary and health.cluster_ok:
            self.slots.request_refresh("role-change")
        elif (
            health.role == "replica"
            and health.link_up
            and health.cluster_ok
            and health.offset  # at offset 0, CLUSTER SHARDS still calls it "loading"
            and not any(address in shard.replicas for shard in shards)
        ):
            self.slots.request_refresh("replica-online")

    def _note_believed_positions(self) -> None:
        provenance = self.slots.provenance
        for shard in self.slots.map.shards():
            if not provenance.trusted(shard.primary):
                continue
            for address in shard.replicas:
                health = self.health.get(address)
                if health is not None and health.replid and health.offset is not None:
                    health.believed_position = (health.replid, health.offset)

    def believed(self, replica: Address, replid: str | None, offset: int | None) -> bool:
        """Whether a replica that reports ``replid`` and ``offset`` still holds data derived
        from the believed history (it has not resynced from a primary that came back with
        older data: its offset did not go back, its history did not change)."""
        health = self.health.get(replica)
        position = None if health is None else health.believed_position
        return (
            position is not None
            and replid == position[0]
            and offset is not None
            and offset >= position[1]
        )

    def _derive_lag(self) -> None:
        now = self.now()
        for health in self.health.values():
            if health.role != "replica" or health.primary is None:
                continue
            primary = self._primary_health(health.primary)
            if (
                health.link_up
                and primary is not None
                and primary.offset is not None
                and health.offset is not None
            ):
                health.lag_bytes = max(0, primary.offset - health.offset)
                if health.lag_bytes <= self.settings.replica_max_lag_bytes:
                    health.caught_up_at = now
            else:
                health.lag_bytes = None
                if (
                    health.caught_up_at is None
                    and health.link_down_since_s is not None
                    and health.link_down_since_s >= 0  # -1: no link yet since it started
                ):
                    # First seen with its link down: it stopped following that long ago.
                    health.caught_up_at = now - max(0.0, health.link_down_since_s)

    def _primary_health(self, primary: Address) -> NodeHealth | None:
        direct = self.health.get(primary)
        if direct is not None:
            return direct
        # Nodes may report their primary by another spelling of the address (e.g. an IP).
        for address, health in self.health.items():
            if address[1] == primary[1] and health.role == "primary":
                return health
        return None

    def _publish(self) -> None:
        for health in self.health.values():
            if health.role == "replica" and health.lag_bytes is not None:
                telemetry.REPLICA_LAG.labels(replica=format_address(health.address)).set(
                    health.lag_bytes
                )
        for health in self.health.values():
            if health.cluster_ok and health.info is not None:
                telemetry.SLOTS_ASSIGNED.set(_int(health.info.get("cluster_slots_assigned")) or 0)
                telemetry.SLOTS_OK.set(_int(health.info.get("cluster_slots_ok")) or 0)
                return
        telemetry.SLOTS_OK.set(0)

    def snapshot(self) -> list[dict[str, object]]:
        now = self.now()
        return [health.as_dict(now) for health in self.health.values()]


def _text(raw: object) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
