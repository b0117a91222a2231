"""The Redis half of the stack as a cluster: forming it, judging its health, repairing it."""

from __future__ import annotations

import contextlib
import math
import shutil
import time

from devstack.cluster_view import (
    NODE_ERRORS,
    NodeView,
    cluster_nodes_text,
    info_int,
    node_client,
    node_view,
    parse_cluster_nodes,
    replication,
)
from devstack.config import CLUSTER_SLOTS, HOST, NODE_COUNT, PRIMARY_COUNT
from devstack.errors import StackError
from devstack.layout import Layout
from devstack.processes import clean_env, find_binary, output_tail, run
from devstack.redis_nodes import RedisNodes

_CLUSTER_POLL_INTERVAL_S = 0.1
_CLUSTER_CREATE_TIMEOUT_S = 60.0
_BAD_NODE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class RedisCluster:
    """The six nodes of a :class:`~devstack.stack.Stack` as one Redis Cluster."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.config = layout.config
        self.nodes = RedisNodes(layout)

    def up(self) -> None:
        ports = self.layout.redis_ports
        with self.layout.step("redis: nodes up", starting=f"redis: starting {len(ports)} nodes"):
            started = self.nodes.start_nodes(ports)
        if started:
            self.layout.say(f"redis: started node(s) {started}")
        if len(started) < len(ports):
            self.layout.say(f"redis: {len(ports) - len(started)} node(s) were already running")
        verdict, reason = self._assess_cluster()
        if verdict == "formed":
            try:
                with self.layout.step(
                    "redis: cluster ok", starting="redis: waiting for the cluster"
                ):
                    self.wait_cluster_ok(timeout_s=self._convergence_timeout_s())
            except StackError as exc:
                self.layout.say(f"redis: {exc}; recreating the cluster (its data is discarded)")
            else:
                return
            self._recreate_cluster()
        elif verdict == "fresh":
            self._create_cluster()
        else:
            self.layout.say(
                f"redis: cluster is half-formed ({reason}); recreating it (data discarded)"
            )
            self._recreate_cluster()
        with self.layout.step("redis: cluster ok", starting="redis: waiting for the cluster"):
            self.wait_cluster_ok(timeout_s=self._convergence_timeout_s())

    def _convergence_timeout_s(self) -> float:
        return max(20.0, 10 * self.config.cluster_node_timeout_ms / 1000)

    def _assess_cluster(self) -> tuple[str, str]:
        """("fresh"|"formed"|"broken", reason) for our running nodes."""
        ports = self.layout.redis_ports
        views: dict[int, NodeView] = {}
        for port in ports:
            try:
                views[port] = node_view(port)
            except NODE_ERRORS as exc:
                return "broken", f"node {port} does not answer CLUSTER INFO: {exc}"
        if all(
            info_int(v.info, "cluster_known_nodes") == 1
            and info_int(v.info, "cluster_slots_assigned") == 0
            for v in views.values()
        ):
            return "fresh", "no node knows another or any slot"
        for port, view in views.items():
            known = [n for n in view.nodes if not (n.flags & {"handshake", "noaddr"})]
            known_ports = sorted(n.port for n in known)
            if known_ports != sorted(ports) or len(view.nodes) != NODE_COUNT:
                return "broken", f"node {port} knows nodes {known_ports}, expected {ports}"
            assigned = info_int(view.info, "cluster_slots_assigned")
            if assigned != CLUSTER_SLOTS:
                return "broken", f"node {port} sees {assigned} of {CLUSTER_SLOTS} slots assigned"
        return "formed", "all nodes joined, all slots assigned"

    def _create_cluster(self) -> None:
        redis_cli = find_binary("redis-cli")
        cmd = [
            redis_cli,
            "--cluster",
            "create",
            *(f"{HOST}:{p}" for p in self.layout.redis_ports),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]
        with self.layout.step(
            "redis: cluster created (redis-cli --cluster create)",
            starting="redis: creating the cluster",
        ):
            proc = run(
                cmd,
                timeout_s=_CLUSTER_CREATE_TIMEOUT_S,
                env=clean_env("REDISCLI_"),
                cwd=self.layout.root,
            )
            if proc.returncode != 0 or "[ERR]" in proc.stdout:
                raise StackError(
                    f"redis-cli --cluster create failed (exit {proc.returncode}):\n"
                    f"{output_tail(proc)}"
                )

    def _recreate_cluster(self) -> None:
        ports = self.layout.redis_ports
        with self.layout.step("redis: nodes stopped and wiped"):
            self.nodes.stop_nodes(ports)
            for port in ports:
                directory = self.layout.node_dir(port)
                for name in ("nodes.conf", "dump.rdb", "appendonly.aof", "redis.pid"):
                    with contextlib.suppress(FileNotFoundError):
                        (directory / name).unlink()
                shutil.rmtree(directory / "appendonlydir", ignore_errors=True)
                for leftover in directory.glob("temp-*.rdb"):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        with self.layout.step("redis: fresh nodes running"):
            self.nodes.start_nodes(ports)
        verdict, reason = self._assess_cluster()
        if verdict != "fresh":
            raise StackError(f"redis nodes are not fresh after a wipe: {reason}")
        self._create_cluster()

    def cluster_nodes(self) -> list[dict[str, object]]:
        """CLUSTER NODES, parsed, from the first of our nodes that answers: per node id, host,
        port, role ('primary'/'replica'), primary_id, slots [(start, end)], flags, link_state.
        """
        errors: list[str] = []
        for port in self.layout.redis_ports:
            if self.nodes.node_pid(port) is None:
                continue
            try:
                with node_client(port) as client:
                    text = cluster_nodes_text(client)
            except NODE_ERRORS as exc:
                errors.append(f"{port}: {exc}")
                continue
            return [n.as_dict() for n in parse_cluster_nodes(text)]
        detail = "; ".join(errors) if errors else "no node is running"
        raise StackError(f"no Redis node of the stack answers CLUSTER NODES ({detail})")

    def wait_cluster_ok(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until every live node reports cluster_state:ok with all 16384 slots
        covered, all live nodes agree on the 3 primaries and see each other as healthy, and
        every primary has a replica whose master_link_status is up. Else :class:`StackError`
        naming what was still wrong."""
        deadline = time.monotonic() + timeout_s
        problem: str | None = "not checked"
        for _ in range(math.ceil(timeout_s / _CLUSTER_POLL_INTERVAL_S) + 1):
            problem = self.problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_CLUSTER_POLL_INTERVAL_S)
        raise StackError(f"the Redis Cluster is not ok after {timeout_s:.1f} s: {problem}")

    def problem(self) -> str | None:
        """None when the cluster is healthy, else a short description of the first problem."""
        live = [p for p in self.layout.redis_ports if self.nodes.node_pid(p) is not None]
        if not live:
            return "no Redis node of the stack is running"
        live_set = set(live)
        views: dict[int, NodeView] = {}
        for port in live:
            try:
                views[port] = node_view(port)
            except NODE_ERRORS as exc:
                return f"node {port} does not answer: {exc or type(exc).__name__}"
        reference: list[tuple[int, tuple[tuple[int, int], ...]]] | None = None
        for port, view in views.items():
            state = view.info.get("cluster_state")
            if state != "ok":
                return f"node {port} reports cluster_state:{state}"
            for key in ("cluster_slots_assigned", "cluster_slots_ok"):
                if info_int(view.info, key) != CLUSTER_SLOTS:
                    return f"node {port} reports {key}:{view.info.get(key)}"
            seen = {n.port: n for n in view.nodes}
            for other in live:
                node = seen.get(other)
                if node is None:
                    return f"node {port} does not know node {other}"
                if node.flags & _BAD_NODE_FLAGS:
                    return f"node {port} sees node {other} as {','.join(sorted(node.flags))}"
            primaries = sorted((n.port, n.slots) for n in view.nodes if n.slots)
            if reference is None:
                reference = primaries
            elif primaries != reference:
                return f"nodes {live[0]} and {port} disagree about which primary owns which slots"
        view = views[live[0]]
        owners = [n for n in view.nodes if n.slots]
        if len(owners) != PRIMARY_COUNT:
            return f"expected {PRIMARY_COUNT} primaries with slots, found {len(owners)}"
        for owner in owners:
            if owner.port not in live_set:
                return f"primary {owner.port} (owns slots) is not running"
            replicas = [
                n
                for n in view.nodes
                if n.role == "replica" and n.primary_id == owner.id and n.port in live_set
            ]
            if not replicas:
                return f"primary {owner.port} has no running replica"
            linked = False
            for replica in replicas:
                try:
                    with node_client(replica.port) as client:
                        repl = replication(client)
                except NODE_ERRORS as exc:
                    return f"replica {replica.port} does not answer INFO: {exc}"
                if repl.get("master_link_status") == "up" and repl.get("master_port") == str(
                    owner.port
                ):
                    linked = True
                    break
            if not linked:
                return f"primary {owner.port} has no replica with master_link_status:up yet"
        return None
