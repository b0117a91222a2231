"""``/v1/admin``: what an operator needs at 3 a.m. (read-only)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import gateway_of
from app.cluster.slots import SLOT_COUNT, format_address

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _json(body: object) -> Response:
    return Response(json.dumps(body, indent=1).encode(), media_type="application/json")


@router.get(
    "", operation_id="adminSummary", summary="Mode, feed, slot map and breakers at a glance"
)
async def summary(request: Request) -> Response:
    gateway = gateway_of(request)
    open_routes = [b.route for b in gateway.breakers.breakers() if b.state.name != "CLOSED"]
    return _json(
        {
            "degraded_mode": gateway.degraded.snapshot(),
            "invalidation_feed": {
                "up": gateway.feed.state.up,
                "generation": gateway.feed.state.generation,
            },
            "slots_mapped": gateway.slots.map.covered(),
            "slots_total": SLOT_COUNT,
            "slot_map_epoch": gateway.slots.map.epoch,
            "breakers_not_closed": open_routes,
            "local_tier": {"entries": len(gateway.local), "bytes": gateway.local.bytes},
            "loads_in_flight": len(gateway.router.loads),
        }
    )


@router.get("/breakers", operation_id="adminBreakers", summary="Every route's circuit breaker")
async def breakers(request: Request) -> Response:
    gateway = gateway_of(request)
    return _json({"breakers": [b.snapshot() for b in gateway.breakers.breakers()]})


@router.get("/topology", operation_id="adminTopology", summary="Slot ranges, nodes, roles, health")
async def topology(request: Request) -> Response:
    gateway = gateway_of(request)
    shards = [
        {
            "ranges": [list(r) for r in shard.ranges],
            "primary": format_address(shard.primary),
            "replicas": [format_address(r) for r in shard.replicas],
        }
        for shard in gateway.slots.map.shards()
    ]
    in_map: dict[str, str] = {}
    for shard in gateway.slots.map.shards():
        in_map[format_address(shard.primary)] = "primary"
        in_map.update((format_address(r), "replica") for r in shard.replicas)
    nodes = gateway.watcher.snapshot()
    for node in nodes:  # the slot map's role for it: None once it left the map (e.g. dead)
        node["in_slot_map"] = in_map.get(str(node["address"]))
    return _json({"epoch": gateway.slots.map.epoch, "shards": shards, "nodes": nodes})
