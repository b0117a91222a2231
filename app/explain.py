"""How a read of one key would be routed right now, without reading it (``?explain=1``).

The same rules as the read walk: the slot's primary unless its breaker is open or the node is
in a minority partition, its replicas in the watcher's rank while their breakers are closed,
then the local tier and the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.breaker import BreakerBoard
from app.cluster.slot_router import SlotRouter
from app.cluster.slots import format_address, key_slot
from app.cluster.topology import TopologyWatcher
from app.degraded import DegradedMode
from app.feed import VersionMap
from app.tiers.base import KeyRef
from app.tiers.local import LocalTier


@dataclass(frozen=True, slots=True)
class LocalCopy:
    seq: int
    behind_s: float


@dataclass(frozen=True, slots=True)
class Explanation:
    """``breakers`` is every route of the slot (primary, then replicas by rank) and the store, by
    state; ``tier_order`` the routes a read would try, in order (an open store is listed as
    ``store (open)``)."""

    key: str
    namespace: str
    slot: int
    owner: str | None
    replicas: tuple[str, ...]
    breakers: Mapping[str, str]
    tier_order: tuple[str, ...]
    load_in_flight: bool
    newest_announced_seq: int | None
    local_copy: LocalCopy | None
    degraded_mode: bool
    deadline_ms: int


def explain(
    ref: KeyRef,
    *,
    slots: SlotRouter | None,
    watcher: TopologyWatcher | None,
    breakers: BreakerBoard | None,
    local: LocalTier | None,
    load_in_flight: bool,
    versions: VersionMap,
    degraded: DegradedMode,
    deadline_ms: int,
) -> Explanation:
    """Without a slot map (``slots`` None) the key's slot has no known owner."""
    if slots is None:
        slot, shard = key_slot(ref.rkey), None
    else:
        slot, shard = slots.shard_for(ref.rkey)
    states = (
        {} if breakers is None else {b.route: b.state.name.lower() for b in breakers.breakers()}
    )
    order: list[str] = []
    routes: dict[str, str] = {}
    if shard is not None:
        primary = f"primary@{format_address(shard.primary)}"
        routes[primary] = states.get(primary, "closed")
        partitioned = watcher is not None and watcher.partitioned(shard.primary)
        if routes[primary] == "closed" and not partitioned:
            order.append(primary)
        ranked = shard.replicas if watcher is None else watcher.rank_replicas(shard.replicas)
        for address in ranked:
            route = f"replica@{format_address(address)}"
            routes[route] = states.get(route, "closed")
            if routes[route] == "closed":
                order.append(route)
    store = states.get("store", "closed")
    order += ["local", "store" if store == "closed" else "store (open)"]
    copy = None if local is None else local.lookup(ref)
    return Explanation(
        key=ref.key,
        namespace=ref.namespace,
        slot=slot,
        owner=None if shard is None else format_address(shard.primary),
        replicas=() if shard is None else tuple(format_address(r) for r in shard.replicas),
        breakers=routes | {"store": store},
        tier_order=tuple(order),
        load_in_flight=load_in_flight,
        newest_announced_seq=versions.newest(ref.namespace, ref.key),
        local_copy=None
        if copy is None or copy.record is None
        else LocalCopy(copy.record.seq, copy.behind_s),
        degraded_mode=degraded.active,
        deadline_ms=deadline_ms,
    )
