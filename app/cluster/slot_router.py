"""Routing of commands to the node that owns a key's slot, over per-node pipelined clients.

The slot map comes from ``CLUSTER SHARDS`` of a random reachable node. A MOVED reply patches the
one slot it names and asks for a refresh; an ASK reply sends ``ASKING`` and the command together
on one connection of the importing node and leaves the map alone; TRYAGAIN waits a little. None
of this outlives the caller's deadline.

Refreshes are coalesced and rate-limited, in the manner of redis-py's ``NodesManager.initialize``
lock-and-epoch: at most one runs at a time, callers never wait for it, and a request for a
refresh within ``refresh_min_interval_s`` of the last one is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import replace

from redis import exceptions as rex

from app import tasks, telemetry, tracing
from app.breaker import Breaker, BreakerBoard
from app.cluster.errors import reply_error
from app.cluster.node import NodeClient, NodeOptions, Reply
from app.cluster.provenance import Provenance
from app.cluster.slots import Address, Shard, SlotMap, format_address, key_slot
from app.errors import (
    BreakerOpenError,
    NodeBusyError,
    NodeGoneError,
    RedirectLoopError,
    TierError,
    TierUnavailableError,
)
from app.settings import RedisSettings

log = logging.getLogger(__name__)

TRYAGAIN_PAUSE_S = 0.005
BULK_SILENCE_FACTOR = 10  # the bulk lane waits this much longer for progress on a reply


class SlotRouter:
    """Owns the slot map and one ``NodeClient`` per (node address, READONLY or not)."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.map = SlotMap()
        self._startup = list(settings.startup_nodes)
        self._clients: dict[tuple[Address, bool, bool], NodeClient] = {}
        self._refresh_task: asyncio.Task[bool] | None = None
        self._periodic_task: asyncio.Task[None] | None = None
        self._last_refresh_at = -1e9
        # Set by the gateway: nodes to send nothing to (a minority partition).
        self.avoid: Callable[[Address], bool] = lambda address: False
        # Whose data is believed; the watcher reports identities, this class contacts and roles.
        self.provenance = Provenance()
        self.breakers: BreakerBoard | None = None
        self._breaker_cache: dict[tuple[str, Address], Breaker] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._options = NodeOptions(
            connect_timeout_s=settings.connect_timeout_s,
            socket_timeout_s=settings.socket_timeout_s,
            max_connections=settings.max_connections_per_node,
            max_in_flight=settings.max_in_flight_per_node,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            tls=settings.tls,
            tls_ca_file=settings.tls_ca_file,
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            tls_check_hostname=settings.tls_check_hostname,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the slot map once (never raises: the gateway starts degraded without Redis)."""
        await self.refresh("startup")
        self._periodic_task = asyncio.get_running_loop().create_task(self._periodic())

    async def aclose(self) -> None:
        for task in (self._periodic_task, self._refresh_task):
            await tasks.stop(task)
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(
            *(client.aclose() for client in clients), *self._closing, return_exceptions=True
        )

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval_s)
            await self.refresh("periodic")

    # -- nodes -----------------------------------------------------------------------------

    def node(self, address: Address, *, readonly: bool = False, bulk: bool = False) -> NodeClient:
        """The node's client: READONLY connections or not; the bulk lane (commands that carry or
        fetch a large value, one per connection) or the lane of everything else."""
        client = self._clients.get((address, readonly, bulk))
        if client is None:
            options = replace(self._options, readonly=readonly)
            if bulk:  # one command a batch; a large reply gets time to arrive between bytes
                options = replace(
                    options, max_batch_groups=1,
                    socket_timeout_s=options.socket_timeout_s * BULK_SILENCE_FACTOR,
                )  # fmt: skip
            client = NodeClient(address, options, on_lost=self._lost_contact)
            self._clients[(address, readonly, bulk)] = client
        return client

    def _lost_contact(self, address: Address) -> None:
        """A connection to the node failed (not a timeout), whoever used it: if it is a
        primary, it may come back as another process, so until the watcher has seen it again
        its data is not believed."""
        if any(shard.primary == address for shard in self.map.shards()):
            self.provenance.lost_contact(address)

    def shard_for(self, key: bytes) -> tuple[int, Shard | None]:
        slot = key_slot(key)
        return slot, self.map.slots[slot]

    def known_nodes(self) -> list[Address]:
        nodes: dict[Address, None] = {}
        for shard in self.map.shards():
            nodes[shard.primary] = None
            nodes.update(dict.fromkeys(shard.replicas))
        nodes.update(dict.fromkeys(self._startup))
        return list(nodes)

    # -- commands --------------------------------------------------------------------------

    async def execute(
        self, key: bytes, *args: bytes | str | int, deadline: float, bulk: bool = False
    ) -> Reply:
        """Run one command on the primary that owns ``key``'s slot, following MOVED and ASK.

        ``bulk``: the command carries or fetches a large value; it goes on the node's bulk lane
        and its latency is not held against the node's breaker (its size is why it is slow).
        """
        reply, _ = await self.read(key, *args, deadline=deadline, bulk=bulk)
        return reply

    async def read(
        self, key: bytes, *args: bytes | str | int, deadline: float, bulk: bool = False
    ) -> tuple[Reply, Address]:
        """As ``execute``, and which node answered (whose data may not be believed)."""
        slot = key_slot(key)
        shard = self.map.slots[slot]
        if shard is None:
            self.request_refresh("uncovered")
            raise TierUnavailableError(f"slot {slot} has no known owner", route="primary")
        address = shard.primary
        asking = False
        loop = asyncio.get_running_loop()
        for _ in range(self.settings.max_redirects + 1):
            if self.avoid(address):
                raise TierUnavailableError(
                    f"primary {format_address(address)} is avoided", route="primary"
                )
            client = self.node(address, bulk=bulk)
            commands = ((b"ASKING",), args) if asking else (args,)
            replies = await self._guarded_call(
                client, self._breaker("primary", address), commands, deadline=deadline,
                count_slow=not bulk,
            )  # fmt: skip
            reply = replies[-1]
            if not isinstance(reply, rex.ResponseError):
                return reply, address
            if isinstance(reply, rex.MovedError):
                telemetry.REDIRECTS.labels(kind="moved").inc()
                address = self._redirect_target(reply, address)
                if all(shard.primary != address for shard in self.map.shards()):
                    self.provenance.promoted(address)  # before any refresh saw it as a primary
                self.map.patch(reply.slot_id, address)
                self.request_refresh("moved")
                asking = False
            elif isinstance(reply, rex.AskError):
                telemetry.REDIRECTS.labels(kind="ask").inc()
                address = self._redirect_target(reply, address)
                asking = True
            elif isinstance(reply, rex.TryAgainError):
                telemetry.REDIRECTS.labels(kind="tryagain").inc()
                if loop.time() + TRYAGAIN_PAUSE_S >= deadline:
                    break
                await asyncio.sleep(TRYAGAIN_PAUSE_S)
            else:
                if isinstance(reply, rex.ClusterDownError):
                    self.request_refresh("clusterdown")
                raise reply_error(reply, route=f"primary@{client.name}") from reply
        raise RedirectLoopError(f"slot {slot}: redirections did not settle", route="primary")

    async def execute_on(
        self,
        address: Address,
        *args: bytes | str | int,
        readonly: bool,
        deadline: float,
        route: str | None = None,
        bulk: bool = False,
    ) -> Reply:
        """Run one command on one node, no redirect following (a MOVED there is a failure).

        ``route`` (e.g. "replica") puts the call under that route's breaker at the node; the
        watcher's and the refresher's own calls go without one. ``bulk`` as for ``execute``.
        """
        (reply,) = await self.call_on(
            address, args, readonly=readonly, deadline=deadline, route=route, bulk=bulk
        )
        if isinstance(reply, rex.ResponseError):
            if isinstance(reply, rex.AskError):  # MovedError too: the map is out of date
                self.request_refresh("moved")
            raise reply_error(reply, route=format_address(address)) from reply
        return reply

    async def call_on(
        self,
        address: Address,
        *commands: tuple[bytes | str | int, ...],
        readonly: bool,
        deadline: float,
        route: str | None = None,
        bulk: bool = False,
        count_slow: bool | None = None,
    ) -> list[Reply]:
        """Several commands to one node in one round trip (one group: one connection, in
        order), under the route's breaker; a reply per command, ResponseErrors as values.
        ``count_slow`` (default: not ``bulk``): whether the call's latency counts against the
        node, as for one command; a large group is slow for its size, not for the node."""
        client = self.node(address, readonly=readonly, bulk=bulk)
        breaker = None if route is None else self._breaker(route, address)
        slow = not bulk if count_slow is None else count_slow
        return await self._guarded_call(
            client, breaker, commands, deadline=deadline, count_slow=slow
        )

    async def _guarded_call(
        self,
        client: NodeClient,
        breaker: Breaker | None,
        commands: tuple[tuple[bytes | str | int, ...], ...],
        *,
        deadline: float,
        count_slow: bool = True,
    ) -> list[Reply]:
        """One call under the route's breaker: skipped when open, its outcome recorded (its
        latency too, unless ``count_slow`` is False)."""
        if breaker is None:
            return await client.call(*commands, deadline=deadline)
        if tracing.recording():
            role = breaker.route.partition("@")[0]
            command = commands[-1][0]
            name = command.decode() if isinstance(command, bytes) else str(command)
            attributes = {
                "db.system.name": "redis", "db.operation.name": name,
                "server.address": client.address[0], "server.port": client.address[1],
                "redis.node_role": role,
            }  # fmt: skip
            with tracing.tier_span(f"redis {name}", attributes):
                return await self._breaker_call(
                    client, breaker, commands, deadline=deadline, count_slow=count_slow
                )
        return await self._breaker_call(
            client, breaker, commands, deadline=deadline, count_slow=count_slow
        )

    async def _breaker_call(
        self,
        client: NodeClient,
        breaker: Breaker,
        commands: tuple[tuple[bytes | str | int, ...], ...],
        *,
        deadline: float,
        count_slow: bool = True,
    ) -> list[Reply]:
        if not breaker.allow():
            raise BreakerOpenError(f"{breaker.route}: breaker open", route=breaker.route)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            replies = await client.call(*commands, deadline=deadline)
        except (NodeBusyError, NodeGoneError):
            breaker.release()  # local saturation, or a client closed by us: not the node's fault
            raise
        except TierError:
            breaker.record(ok=False, duration_s=loop.time() - started, in_run=count_slow)
            raise
        except BaseException:
            # Cancelled, or not the node's failure at all (a bug of ours, raised unmapped by the
            # node client): the route is not blamed.
            breaker.release()
            raise
        down = isinstance(replies[-1], rex.ClusterDownError)
        breaker.record(ok=not down, duration_s=loop.time() - started if count_slow else 0.0)
        return replies

    def _breaker(self, role: str, address: Address) -> Breaker | None:
        if self.breakers is None:
            return None
        breaker = self._breaker_cache.get((role, address))
        if breaker is None:
            probe = functools.partial(self._probe, address, readonly=role == "replica")
            breaker = self.breakers.get(f"{role}@{format_address(address)}", probe=probe)
            self._breaker_cache[(role, address)] = breaker
        return breaker

    async def _probe(self, address: Address, *, readonly: bool) -> None:
        timeout_s = self.breakers.settings.probe_timeout_s if self.breakers else 0.25
        deadline = asyncio.get_running_loop().time() + timeout_s
        await self.node(address, readonly=readonly).execute(b"PING", deadline=deadline)

    @staticmethod
    def _redirect_target(reply: rex.AskError, current: Address) -> Address:
        host = reply.host or current[0]  # "MOVED 3999 :6381" means "same host as you asked"
        return (host, int(reply.port))

    # -- topology --------------------------------------------------------------------------

    def request_refresh(self, reason: str) -> None:
        """Ask for a refresh in the background; coalesced and rate-limited, never awaited."""
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_refresh_at < self.settings.refresh_min_interval_s:
            return
        self._refresh_task = loop.create_task(self.refresh(reason))

    async def refresh(self, reason: str) -> bool:
        """Replace the slot map from the first node (in random order) that answers."""
        loop = asyncio.get_running_loop()
        self._last_refresh_at = loop.time()
        telemetry.TOPOLOGY_REFRESHES.labels(trigger=reason).inc()
        candidates = self.known_nodes()
        random.shuffle(candidates)
        candidates.sort(key=self.avoid)  # healthy nodes first, in random order
        for address in candidates:
            deadline = (
                loop.time() + self.settings.connect_timeout_s + self.settings.socket_timeout_s
            )
            try:
                raw = await self.execute_on(
                    address, b"CLUSTER", b"SHARDS", readonly=False, deadline=deadline
                )
                shards = parse_cluster_shards(raw)
            except (TierError, ValueError) as exc:
                log.debug("topology refresh from %s failed: %s", format_address(address), exc)
                continue
            if not shards:
                continue
            before = {shard.primary for shard in self.map.shards()}
            self.map = SlotMap.from_shards(shards, epoch=self.map.epoch + 1)
            after = {shard.primary for shard in self.map.shards()}
            if before and after - before:
                log.warning("primaries changed: %s", sorted(map(format_address, after - before)))
                for address in after - before:  # a promoted replica may lack the last writes
                    self.provenance.promoted(address)
            self._prune_clients()
            telemetry.SLOTS_MAPPED.set(self.map.covered())
            return True
        log.warning("topology refresh (%s) failed: no node answered CLUSTER SHARDS", reason)
        return False

    def _prune_clients(self) -> None:
        keep = set(self.known_nodes())
        self.provenance.forget(keep.__contains__)
        for key in [key for key in self._clients if key[0] not in keep]:
            client = self._clients.pop(key)
            task = asyncio.get_running_loop().create_task(client.aclose())
            self._closing.add(task)  # a reference, so it is not collected mid-close
            task.add_done_callback(self._closing.discard)
        if self.breakers is not None:
            # A node's breaker goes with the node, and with the role it no longer has.
            routes: set[str] = set()
            for shard in self.map.shards():
                routes.add(f"primary@{format_address(shard.primary)}")
                routes.update(f"replica@{format_address(r)}" for r in shard.replicas)
            self.breakers.retain(lambda route: "@" not in route or route in routes)
            self._breaker_cache = {
                key: breaker
                for key, breaker in self._breaker_cache.items()
                if breaker.route in routes
            }


def _pairs(flat: object) -> dict[bytes, object]:
    if isinstance(flat, dict):  # a RESP3 map
        return {_b(k): v for k, v in flat.items()}
    if not isinstance(flat, list):
        raise ValueError("CLUSTER SHARDS: expected a list of pairs")
    items = flat
    return {_b(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _b(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def parse_cluster_shards(raw: object) -> list[Shard]:
    """Shards from a RESP2 ``CLUSTER SHARDS`` reply; only online nodes are kept as replicas."""
    if not isinstance(raw, list):
        raise ValueError("CLUSTER SHARDS: expected a list")
    shards: list[Shard] = []
    for entry in raw:
        fields = _pairs(entry)
        slot_list = [int(x) for x in fields.get(b"slots", [])]  # type: ignore[attr-defined]
        ranges = tuple(zip(slot_list[::2], slot_list[1::2], strict=True))
        primaries: list[Address] = []
        failed_primaries: list[Address] = []
        replicas: list[Address] = []
        for node in fields.get(b"nodes", []):  # type: ignore[attr-defined]
            info = _pairs(node)
            endpoint = _b(info.get(b"endpoint", b"")).decode()
            host = endpoint if endpoint and endpoint != "?" else _b(info.get(b"ip", b"")).decode()
            port = int(_b(info.get(b"port", b"0")))
            if not host or not port:
                continue
            role = _b(info.get(b"role", b"")).decode()
            health = _b(info.get(b"health", b"")).decode()
            if role == "master":
                (primaries if health == "online" else failed_primaries).append((host, port))
            elif health == "online":
                replicas.append((host, port))
        owners = primaries or failed_primaries
        if not owners or not ranges:
            continue
        shards.append(Shard(primary=owners[0], replicas=tuple(replicas), ranges=ranges))
    return shards
