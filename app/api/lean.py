"""The lean read path: ``GET``/``HEAD /v1/keys/{key}`` served without FastAPI's routing.

Measured here, FastAPI's routing, dependency solving and middleware cost more than the Redis
round trip. This path answers the hottest request straight from the ASGI scope, with the same
router, settings, key parsing, HTTP semantics and error mapping as the FastAPI route (which stays
for the OpenAPI schema and for everything else: other methods, query strings, other paths).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from app import telemetry
from app.api.conditional import none_match, parse_tag_list
from app.api.http import entry_headers, key_from_raw_path, read_policy
from app.api.problems import error_response
from app.gateway import Gateway
from app.store import now_ms

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HANDLER = "/v1/keys/{key}"


def wants_lean(scope: Scope) -> bool:
    """True for a GET/HEAD of one key without a query string; FastAPI handles the rest."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or scope["query_string"]:
        return False
    path: str = scope["path"]
    return path.startswith("/v1/keys/") and "/" not in path[len("/v1/keys/") :]


async def serve_read(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    method: str = scope["method"]
    try:
        status, headers, body = await _answer(gateway, scope, method)
    except Exception as exc:  # mapped to a problem, as FastAPI's handlers do
        response: Response = error_response(exc, instance=scope["path"])
        await response(scope, receive, send)
        telemetry.record_http(HANDLER, method, response.status_code, time.perf_counter() - started)
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    telemetry.record_http(HANDLER, method, status, time.perf_counter() - started)


async def _answer(
    gateway: Gateway, scope: Scope, method: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    settings = gateway.settings
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    key = key_from_raw_path(raw_path, max_bytes=settings.limits.max_key_bytes)
    if_none_match = cache_control = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if_none_match = value.decode("latin-1")
        elif name == b"cache-control":
            cache_control = value.decode("latin-1")
    tags = None if if_none_match is None else parse_tag_list(if_none_match, name="If-None-Match")
    router = gateway.router
    policy = (
        router.default_policy
        if cache_control is None
        else read_policy(cache_control, staleness=settings.staleness, default=router.default_policy)
    )
    result = await router.get(router.ref(settings.namespace, key), policy)
    headers = [
        (k.lower().encode(), v.encode("latin-1"))
        for k, v in entry_headers(result, now_ms()).items()
    ]
    if tags is not None and none_match(tags, result.entry.version):
        return 304, headers, b""
    value = result.entry.value
    headers.append((b"content-type", result.entry.content_type.encode("latin-1")))
    headers.append((b"content-length", str(len(value)).encode()))
    return 200, headers, b"" if method == "HEAD" else value
