"""Every request under ``/v1/keys/``, answered straight from the ASGI scope: one implementation.

Measured here, FastAPI's routing, dependency solving and middleware cost more than the Redis
round trip, so the key operations never reach FastAPI: ``KeyOperations`` sits in front of it and
answers them with the functions of ``handlers.py``, and hands every other path to FastAPI. The
FastAPI key routes (``keys.py``) only document the operations in the OpenAPI schema.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app import telemetry
from app.api import batch, handlers
from app.api.deps import gateway_in
from app.api.http import key_from_raw_path
from app.api.problems import error_response, http_error

PREFIX = "/v1/keys/"
BATCH_ROUTE = "/v1/batch"
KEY_ROUTE = "/v1/keys/{key}"
INVALIDATE_ROUTE = "/v1/keys/{key}/invalidate"
TOUCH_ROUTE = "/v1/keys/{key}/touch"
ACTIONS = {"/invalidate": INVALIDATE_ROUTE, "/touch": TOUCH_ROUTE}
NO_ROUTE = "none"  # the handler label of a path no route matches (as the instrumentator's)
KEY_METHODS = ("GET", "HEAD", "PUT", "DELETE")
# Query values FastAPI reads as a boolean (pydantic's rules), for ``explain``.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


class KeyOperations:
    """Answers ``/v1/keys/...`` with ``endpoint``; everything else goes to ``app`` (FastAPI)."""

    def __init__(self, app: ASGIApp, *, endpoint: ASGIApp | None = None) -> None:
        self.app = app
        self.endpoint = endpoint or serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"].startswith(PREFIX) or scope["path"] == BATCH_ROUTE
        ):
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def route_of(path: str) -> str:
    """The route template a key path matches, or ``NO_ROUTE``."""
    if path == BATCH_ROUTE:
        return BATCH_ROUTE
    rest = path[len(PREFIX) :]
    slash = rest.find("/")
    if slash < 0:
        return KEY_ROUTE if rest else NO_ROUTE
    if slash > 0:
        return ACTIONS.get(rest[slash:], NO_ROUTE)
    return NO_ROUTE


def explain_asked(scope: Scope) -> bool:
    """The ``explain`` query parameter, read as FastAPI reads a boolean (the last one counts)."""
    query: bytes = scope["query_string"]
    if not query:
        return False
    values = [
        v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "explain"
    ]
    if not values:
        return False
    value = values[-1].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise RequestValidationError(
        [{"type": "bool_parsing", "loc": ("query", "explain"), "input": values[-1],
          "msg": "Input should be a valid boolean, unable to interpret input"}]
    )  # fmt: skip


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _answer(scope: Scope, receive: Receive, route: str) -> handlers.Answer | Response:
    gateway = gateway_in(scope)
    method: str = scope["method"]
    if route == BATCH_ROUTE:
        if method != "POST":
            return http_error(405, instance=scope["path"], headers={"Allow": "POST"})
        return await batch.serve(gateway, scope, _body(receive))
    if route == KEY_ROUTE:
        if method == "GET" or method == "HEAD":
            if method == "GET" and explain_asked(scope):
                return handlers.explain(gateway, scope)
            return await handlers.read(gateway, scope)
        if method == "PUT":
            return await handlers.put(gateway, scope, _body(receive))
        if method == "DELETE":
            return await handlers.delete(gateway, scope)
        return http_error(405, instance=scope["path"], headers={"Allow": ", ".join(KEY_METHODS)})
    if route in (INVALIDATE_ROUTE, TOUCH_ROUTE):
        if method != "POST":
            return http_error(405, instance=scope["path"], headers={"Allow": "POST"})
        if route == TOUCH_ROUTE:
            return await handlers.touch(gateway, scope)
        return await handlers.invalidate(gateway, scope)
    rest = scope["path"][len(PREFIX) :]
    if rest and not rest.startswith("/"):
        # A key with an encoded '/' lands here: it gets its invalid-key problem, not a 404.
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        key_from_raw_path(raw_path, max_bytes=gateway.settings.limits.max_key_bytes)
    return http_error(404, instance=scope["path"])


async def serve(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one request under ``/v1/keys/``."""
    started = time.perf_counter()
    route = route_of(scope["path"])
    try:
        answer = await _answer(scope, receive, route)
    except ClientDisconnect:
        return  # nothing to answer; a write that did not commit changed nothing
    except Exception as exc:  # every error is a problem; one that is not ours is logged, a 500
        answer = error_response(exc, instance=scope["path"])
    if isinstance(answer, Response):
        await answer(scope, receive, send)
        status = answer.status_code
    else:
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    telemetry.record_http(route, scope["method"], status, time.perf_counter() - started)
