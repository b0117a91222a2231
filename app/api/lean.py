"""The lean path: the key operations served straight from the ASGI scope, before FastAPI.

Measured here, FastAPI's routing, dependency solving and middleware cost more than the Redis
round trip. ``GET``/``HEAD`` (without a query string), ``PUT`` and ``DELETE`` of
``/v1/keys/{key}`` are answered by the same handlers the FastAPI routes call (``handlers.py``),
with the same error mapping; FastAPI keeps the routes for the OpenAPI schema and serves
everything else (other paths and methods, query strings on reads, invalidate).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app import telemetry
from app.api import handlers
from app.api.problems import error_response
from app.gateway import Gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HANDLER = "/v1/keys/{key}"
_PREFIX = "/v1/keys/"


def wants_lean(scope: Scope) -> bool:
    """True for the key operations this path serves; FastAPI handles the rest."""
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    if not path.startswith(_PREFIX) or "/" in path[len(_PREFIX) :]:
        return False
    method: str = scope["method"]
    if method in ("GET", "HEAD", "DELETE"):
        return not scope["query_string"]
    return method == "PUT"


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def serve(
    gateway: Gateway,
    scope: Scope,
    receive: Receive,
    send: Send,
    extra_header: tuple[bytes, bytes] | None = None,
) -> None:
    """Answer one key operation; ``extra_header`` (the request id) is added to the answer."""
    started = time.perf_counter()
    method: str = scope["method"]
    try:
        if method == "PUT":
            status, headers, body = await handlers.put(gateway, scope, _body(receive))
        elif method == "DELETE":
            status, headers, body = await handlers.delete(gateway, scope)
        else:
            status, headers, body = await handlers.read(gateway, scope)
    except ClientDisconnect:
        return  # nothing to answer; a write that did not commit changed nothing
    except Exception as exc:  # mapped to a problem, as FastAPI's handlers do
        response: Response = error_response(exc, instance=scope["path"])
        if extra_header is not None:
            response.raw_headers.append(extra_header)
        await response(scope, receive, send)
        telemetry.record_http(HANDLER, method, response.status_code, time.perf_counter() - started)
        return
    if extra_header is not None:
        headers.append(extra_header)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    telemetry.record_http(HANDLER, method, status, time.perf_counter() - started)
