"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api import schemas
from app.api.deps import gateway_of
from app.cluster.slots import SLOT_COUNT
from app.errors import StoreError

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
    summary="Ready to serve: the store answers (Redis being down only degrades)",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Readiness, "description": "The store does not answer."}},
)
async def readyz(request: Request) -> Response:
    gateway = gateway_of(request)
    deadline = asyncio.get_running_loop().time() + READY_CHECK_TIMEOUT_S
    try:
        await gateway.store.ping(deadline=deadline)
        store = {"ok": True, "detail": "answers"}
    except StoreError as exc:
        store = {"ok": False, "detail": str(exc)}
    covered = gateway.slots.map.covered()
    redis = {
        "ok": covered == SLOT_COUNT,
        "detail": f"{covered} of {SLOT_COUNT} slots mapped (epoch {gateway.slots.map.epoch})",
    }
    body = {"ready": store["ok"], "checks": {"store": store, "redis": redis}}
    return Response(
        json.dumps(body).encode(),
        status_code=200 if store["ok"] else 503,
        media_type="application/json",
    )
