"""The two ceilings ``make bench`` measures beside the targets: a raw ASGI app and a FastAPI route,
each answering a constant 100-byte body to ``GET /v1/keys/{key}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

BODY = b"v" * 100
Message = MutableMapping[str, Any]


async def raw_app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"100")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/keys/{key}")
    async def get_key(key: str) -> Response:
        return Response(BODY, media_type="application/octet-stream")

    return app
