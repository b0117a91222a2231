"""The topology watcher against scripted fake nodes: partitions, replica lag, role changes."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from app.cluster.slot_router import SlotRouter
from app.cluster.topology import TopologyWatcher, parse_info
from app.settings import RedisSettings, TopologySettings
from tests.unit.fake_redis import FakeNode, Session, shards_reply
from tests.unit.fakes import FakeClock


@dataclass
class NodeState:
    role: str = "master"
    state: str = "ok"
    offset: int = 1000
    primary_port: int = 0
    link: str = "up"
    down_since_s: int = 7  # -1: a replica that never had a link (just started)
    run_id: str = "a" * 40
    replid: str = "1" * 40
    extra: dict[str, str] = field(default_factory=dict)


class Cluster:
    def __init__(self) -> None:
        self.primary = NodeState()
        self.replica = NodeState(role="slave")
        self.replica_listed = True  # False: CLUSTER SHARDS leaves it out (still "loading")
        self.nodes: dict[str, FakeNode] = {}

    def handler(self, name: str):  # type: ignore[no-untyped-def]
        def handle(session: Session, args: list[bytes]) -> object:
            state = self.primary if name == "p" else self.replica
            if args[:2] == [b"CLUSTER", b"SHARDS"]:
                replicas = [self.nodes["r"].address] if self.replica_listed else []
                return shards_reply([((0, 16383), self.nodes["p"].address, replicas)])
            if args[:2] == [b"CLUSTER", b"INFO"]:
                return (
                    f"cluster_state:{state.state}\r\n"
                    "cluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n"
                )
            if args[:3] == [b"INFO", b"server", b"replication"]:
                server = f"# Server\r\nrun_id:{state.run_id}\r\n# Replication\r\n"
                if state.role == "master":
                    return (
                        f"{server}role:master\r\nmaster_replid:{state.replid}\r\n"
                        f"master_repl_offset:{state.offset}\r\n"
                    )
                lines = [
                    server + "role:slave",
                    f"master_replid:{state.replid}",
                    "master_host:127.0.0.1",
                    f"master_port:{self.nodes['p'].port}",
                    f"master_link_status:{state.link}",
                    f"slave_repl_offset:{state.offset}",
                ]
                if state.link != "up":
                    lines.append(f"master_link_down_since_seconds:{state.down_since_s}")
                return "\r\n".join(lines) + "\r\n"
            return None

        return handle


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    c.nodes["p"] = await FakeNode(c.handler("p")).start()
    c.nodes["r"] = await FakeNode(c.handler("r")).start()
    yield c
    for node in c.nodes.values():
        await node.aclose()


async def watcher_for(
    cluster: Cluster, clock: FakeClock, *, startup: str = "p"
) -> tuple[SlotRouter, TopologyWatcher]:
    nodes = ",".join(f"127.0.0.1:{cluster.nodes[name].port}" for name in startup)
    slots = SlotRouter(RedisSettings(nodes=nodes))
    await slots.start()
    watcher = TopologyWatcher(slots, TopologySettings(replica_max_lag_bytes=100), clock=clock)
    await watcher.poll_once()
    return slots, watcher


async def test_replica_lag_and_ranking(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        replica = cluster.nodes["r"].address
        assert watcher.behind_s(replica) == 0.0
        assert watcher.rank_replicas((replica,)) == [replica]
        cluster.replica.offset = 500  # 500 bytes behind: more than the 100 allowed
        clock.now += 3
        await watcher.poll_once()
        assert watcher.health[replica].lag_bytes == 500
        assert watcher.behind_s(replica) == 3.0  # caught up 3 s ago
        cluster.replica.link = "down"
        clock.now += 2
        await watcher.poll_once()
        assert watcher.behind_s(replica) == 5.0
        assert not watcher.health[replica].link_up
        assert watcher.behind_s(("127.0.0.1", 1)) == math.inf
    finally:
        await slots.aclose()


async def test_a_node_reporting_cluster_state_fail_gets_no_traffic(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        cluster.replica.state = "fail"
        await watcher.poll_once()
        replica = cluster.nodes["r"].address
        assert watcher.partitioned(replica)
        assert watcher.rank_replicas((replica,)) == []
        assert not watcher.partitioned(cluster.nodes["p"].address)
    finally:
        await slots.aclose()


async def test_a_role_the_map_does_not_know_asks_for_a_refresh(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        refreshes: list[str] = []
        slots.request_refresh = refreshes.append  # type: ignore[method-assign,assignment]
        cluster.replica.role = "master"  # promoted, the slot map not refreshed yet
        await watcher.poll_once()
        assert refreshes == ["role-change"]
    finally:
        await slots.aclose()


async def test_a_replica_the_map_left_out_asks_for_a_refresh_once_it_has_data(
    cluster: Cluster,
) -> None:
    cluster.replica_listed = False
    cluster.replica.offset = 0
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock, startup="pr")  # both startup nodes
    try:
        refreshes: list[str] = []
        slots.request_refresh = refreshes.append  # type: ignore[method-assign,assignment]
        await watcher.poll_once()
        assert refreshes == []  # an empty shard's replica: CLUSTER SHARDS says "loading"
        cluster.replica.offset = 1000
        await watcher.poll_once()
        assert refreshes == ["replica-online"]
    finally:
        await slots.aclose()


async def test_an_unreachable_node_is_marked_so(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        await cluster.nodes["r"].aclose()
        await watcher.poll_once()
        health = watcher.health[cluster.nodes["r"].address]
        assert not health.reachable
        assert health.error
    finally:
        await slots.aclose()


def test_parse_info() -> None:
    assert parse_info("# Replication\r\nrole:master\r\nx:1:2\r\n") == {"role": "master", "x": "1:2"}


async def test_a_primary_that_restarted_or_changed_history_is_not_believed(
    cluster: Cluster,
) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        primary = cluster.nodes["p"].address
        assert slots.provenance.trusted(primary)
        cluster.primary.run_id = "b" * 40  # the same address, a new process
        await watcher.poll_once()
        assert not slots.provenance.trusted(primary)
        assert slots.provenance.suspects()[primary].reason == "restarted"
        slots.provenance.repaired(primary, slots.provenance.suspects()[primary])
        assert slots.provenance.trusted(primary)
        cluster.primary.replid = "2" * 40  # the same process, a new replication history
        await watcher.poll_once()
        assert slots.provenance.suspects()[primary].reason == "new replication history"
    finally:
        await slots.aclose()


async def test_a_lost_contact_is_verified_by_the_next_unchanged_look(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        primary = cluster.nodes["p"].address
        slots.provenance.lost_contact(primary)
        assert not slots.provenance.trusted(primary)
        await watcher.poll_once()
        assert slots.provenance.trusted(primary)
    finally:
        await slots.aclose()


async def test_a_replica_that_restarted_is_not_taken_as_caught_up(cluster: Cluster) -> None:
    clock = FakeClock()
    slots, watcher = await watcher_for(cluster, clock)
    try:
        replica = cluster.nodes["r"].address
        assert watcher.behind_s(replica) == 0.0
        cluster.replica.run_id = "c" * 40
        cluster.replica.link = "down"
        cluster.replica.down_since_s = -1  # what Redis says before its first link
        await watcher.poll_once()
        assert watcher.behind_s(replica) == math.inf
        assert slots.provenance.trusted(replica)  # replicas are never suspect as such
    finally:
        await slots.aclose()
