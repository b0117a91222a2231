"""Liveness and readiness.

``/livez`` says the process answers HTTP; it never looks at a dependency, so an outage of Redis or
Postgres restarts nothing. ``/readyz`` says whether this instance should get requests: while the
store answers, or while Redis answers for some slots (the store being down then fails writes and
misses, but every copy Redis holds is still served, as the staleness policy allows). An outage
of both, or a drain after SIGTERM, makes it unready. A dependency shared by the whole fleet
failing alone never takes every instance out of a load balancer at once: that is when the
copies are worth most.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api import schemas
from app.api.deps import gateway_of
from app.cluster.slots import SLOT_COUNT, Address
from app.errors import StoreError, TierError
from app.gateway import Gateway

router = APIRouter(tags=["health"])

READY_CHECK_TIMEOUT_S = 0.5


@router.get(
    "/livez", operation_id="livez", summary="The process is alive", response_model=dict[str, str]
)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="readyz",
    summary="Can serve: the store or Redis answers, and the instance is not draining",
    response_model=schemas.Readiness,
    responses={
        503: {
            "model": schemas.Readiness,
            "description": "Neither the store nor any Redis node answers, or a drain has begun.",
        }
    },
)
async def readyz(request: Request) -> Response:
    gateway = gateway_of(request)
    deadline = asyncio.get_running_loop().time() + READY_CHECK_TIMEOUT_S
    store, (answering, nodes_up, nodes) = await asyncio.gather(
        _store_answers(gateway, deadline), _slots_answering(gateway, deadline)
    )
    redis = {
        "ok": answering == SLOT_COUNT,
        "detail": f"{answering} of {SLOT_COUNT} slots answer ({nodes_up} of {nodes} nodes; "
        f"epoch {gateway.slots.map.epoch})",
    }
    draining = gateway.drain.draining
    drain = {"ok": not draining, "detail": "draining after SIGTERM" if draining else "serving"}
    if draining:
        serves = "requests in flight only: shutting down"
    elif store["ok"]:
        serves = "reads and writes"
    elif answering:
        serves = "reads of what Redis holds; writes fail"
    else:
        serves = "nothing: neither the store nor Redis answers"
    ready = not draining and (bool(store["ok"]) or answering > 0)
    body = {
        "ready": ready,
        "serves": serves,
        "checks": {"store": store, "redis": redis, "drain": drain},
    }
    return Response(
        json.dumps(body).encode(),
        status_code=200 if ready else 503,
        media_type="application/json",
    )


async def _store_answers(gateway: Gateway, deadline: float) -> dict[str, bool | str]:
    try:
        await gateway.store.ping(deadline=deadline)
    except StoreError as exc:
        return {"ok": False, "detail": str(exc)}
    return {"ok": True, "detail": "answers"}


async def _slots_answering(gateway: Gateway, deadline: float) -> tuple[int, int, int]:
    """(slots whose primary or a replica answers a PING, nodes that answer, nodes asked)."""
    slot_map = gateway.slots.map
    shards = slot_map.shards()
    nodes = list(
        dict.fromkeys(
            address
            for shard in shards
            for address in (shard.primary, *shard.replicas)
            if not gateway.slots.avoid(address)
        )
    )
    answers = await asyncio.gather(*(_pings(gateway, address, deadline) for address in nodes))
    up = {address for address, ok in zip(nodes, answers, strict=True) if ok}
    serving = {id(shard) for shard in shards if up.intersection((shard.primary, *shard.replicas))}
    slots = sum(1 for shard in slot_map.slots if shard is not None and id(shard) in serving)
    return slots, len(up), len(nodes)


async def _pings(gateway: Gateway, address: Address, deadline: float) -> bool:
    try:
        await gateway.slots.execute_on(address, "PING", readonly=False, deadline=deadline)
    except (TierError, TimeoutError, OSError):
        return False
    return True
