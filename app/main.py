"""The application factory and the lifespan that builds and closes everything."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import prometheus_client
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs, telemetry, tracing
from app.api import admin, docs, handlers, health, keys, lean, problems
from app.errors import (
    AccessError,
    AuthUnavailableError,
    HeadersTooLargeError,
    RequestError,
    TargetTooLongError,
)
from app.gateway import Gateway
from app.settings import Settings

DESCRIPTION = """
A cache gateway for services in any language. Values are opaque bytes stored under keys;
reads are answered by the fastest tier that can answer correctly: the Redis Cluster primary
that owns the key's slot, then (when it fails) that slot's replica and this process's LRU, then
the authoritative Postgres store.

* **Durable before acknowledged**: a PUT or DELETE is answered 2xx only after Postgres committed.
* **Says where the answer came from**: `Cache-Status` (RFC 9211) names the tier (`hit;
  detail=primary|replica|local`, `fwd=miss` for the store, `fwd=stale` past freshness), `Age` says
  how old the copy may be, `ETag` is the version.
* **Staleness on your terms**: `Cache-Control: max-stale=N`, `stale-if-error=N`, `no-cache`,
  `only-if-cached` on reads.
* **Miss is not outage**: 404 only when the store says the key is absent; 503 with `Retry-After`
  when no tier can answer. Errors are RFC 9457 `application/problem+json`.

**Authentication**: every `/v1/keys` and `/v1/admin` operation needs an API key,
`Authorization: Bearer cg_<prefix>_<secret>` (`cachegw keys create --namespace N --scopes
read,write`; `make run` prints a development key). The key's namespace holds every key you read or
write; its scopes are `read`, `write` and `admin`. Use **Authorize** above to try the operations.

Quick start:

    curl -X PUT -H "Authorization: Bearer $KEY" -H 'Content-Type: image/png' \\
         --data-binary @photo.png http://127.0.0.1:8000/v1/keys/photo
    curl -i -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/keys/photo
"""


class GatewayApp(FastAPI):
    """FastAPI, with the key operations answered before its routing (see ``api/lean.py``).

    Every HTTP answer carries the request id (the caller's ``X-Request-ID`` if it is sane, else a
    new one), which every log line of the request carries too.
    """

    lean_path = True
    traced_lean: ASGIApp | None = None  # the lean path inside OpenTelemetry's ASGI middleware
    protect_metrics = False
    max_header_bytes = 16 * 1024
    max_target_bytes = 8 * 1024

    def refuse_oversized(self, scope: Scope, header_bytes: int) -> RequestError | None:
        if header_bytes > self.max_header_bytes:
            return HeadersTooLargeError(
                f"the headers are {header_bytes} bytes; the limit is {self.max_header_bytes}"
            )
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if target > self.max_target_bytes:
            return TargetTooLongError(
                f"the path and query are {target} bytes; the limit is {self.max_target_bytes}"
            )
        return None

    def required_scope(self, scope: Scope) -> str | None:
        """The scope a request needs: None for the open endpoints (health, docs, schema)."""
        path: str = scope["path"]
        if path.startswith("/v1/keys/"):
            return "read" if scope["method"] in ("GET", "HEAD") else "write"
        if path.startswith("/v1/admin"):
            return "admin"
        if path == "/metrics" and self.protect_metrics:
            return "admin"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        offered = authorization = None
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"x-request-id":
                offered = value
            elif name == b"authorization":
                authorization = value
        request_id = logs.new_request_id(offered)
        id_header = (b"x-request-id", request_id.encode())
        token = logs.REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if refused := self.refuse_oversized(scope, header_bytes):
                await problems.error_response(refused, instance=scope["path"][:200])(
                    scope, receive, send_with_id
                )
                return
            needed = self.required_scope(scope)
            if needed is not None:
                gateway: Gateway = self.state.gateway
                try:
                    principal = gateway.auth.verified(
                        authorization
                    ) or await gateway.auth.authenticate(authorization)
                    principal.require(needed)
                    gateway.auth.admit(principal)
                except (AccessError, AuthUnavailableError) as exc:
                    telemetry.AUTH_REFUSALS.labels(reason=type(exc).__name__).inc()
                    await problems.error_response(exc, instance=scope["path"])(
                        scope, receive, send_with_id
                    )
                    return
                scope[handlers.PRINCIPAL] = principal
            if self.lean_path and lean.wants_lean(scope):
                if self.traced_lean is not None and tracing.head_sampled(scope["headers"]):
                    await self.traced_lean(scope, receive, send_with_id)
                else:
                    await lean.serve(self.state.gateway, scope, receive, send, id_header)
                return
            await super().__call__(scope, receive, send_with_id)
        finally:
            logs.REQUEST_ID.reset(token)


def _record_http(info: metrics.Info) -> None:
    telemetry.record_http(
        info.modified_handler, info.method, info.response.status_code if info.response else 500,
        info.modified_duration,
    )  # fmt: skip


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings are read from the environment here, not at import."""
    settings = settings or Settings()
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    logs.configure(settings.log_level)
    if not tracing.ENABLED:
        tracing.setup_from_environment(plain_keys=settings.trace_keys_plainly)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.build(settings)
        await gateway.start()
        app.state.gateway = gateway
        # Everything built so far (modules, routes, clients) lives as long as the process: move
        # it out of the cyclic collector's reach, so full collections stay short under load.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.aclose()

    app = GatewayApp(
        title="cachegw",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "keys", "description": "Get, set and delete cached keys."},
            {"name": "health", "description": "Liveness and readiness."},
            {"name": "admin", "description": "Read-only operational state."},
        ],
    )
    app.state.settings = settings
    app.lean_path = settings.lean_path
    app.protect_metrics = settings.auth.protect_metrics
    app.max_header_bytes = settings.limits.max_header_bytes
    app.max_target_bytes = settings.limits.max_target_bytes
    if tracing.ENABLED:
        _instrument(app)
    problems.install(app)
    app.include_router(keys.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    docs.install(app)
    Instrumentator(excluded_handlers=["/metrics"]).add(_record_http).instrument(app).expose(
        app, include_in_schema=False
    )

    @app.get("/problems/{slug}", include_in_schema=False)
    async def problem_type(slug: str) -> Response:
        kind = problems.PROBLEM_TYPES.get(slug)
        if kind is None:
            return problems.problem(404, title="Not Found", detail="no such problem type")
        text = f"{kind.title} ({kind.status})\n\n{kind.explanation}\n"
        return Response(text, media_type="text/plain; charset=utf-8")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _security(schema)
            _problem_media_types(schema)
            _optional_parameters(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _instrument(app: GatewayApp) -> None:
    """Server spans for both paths: FastAPI's instrumentation, and the same ASGI middleware
    around the lean path (named by route template; the key kept out of span attributes)."""
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracing.provider(),
        server_request_hook=tracing.sanitize_server_span,
        excluded_urls="/metrics,/livez,/readyz",
        exclude_spans=["receive", "send"],
    )

    async def lean_app(scope: Scope, receive: Receive, send: Send) -> None:
        await lean.serve(app.state.gateway, scope, receive, send)

    app.traced_lean = OpenTelemetryMiddleware(
        lean_app,
        tracer_provider=tracing.provider(),
        default_span_details=tracing.server_span_details,
        server_request_hook=tracing.sanitize_server_span,
        exclude_spans=["receive", "send"],
    )


ACCESS_RESPONSES = {
    "401": ("No valid API key.", {"WWW-Authenticate": {"schema": {"type": "string"}}}),
    "403": ("The API key lacks the scope this operation needs.", {}),
    "429": (
        "The API key is over its request rate.",
        {"Retry-After": {"schema": {"type": "string"}}},
    ),
}


def _security(schema: dict[str, Any]) -> None:
    """Bearer API keys on the key and admin operations, with their 401, 403 and 429 answers."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, `cg_<prefix>_<secret>`, made with `cachegw keys create`. "
        "It fixes the namespace of every key you read or write, and its scopes "
        "(read, write, admin).",
    }
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, item in schema.get("paths", {}).items():
        if not path.startswith(("/v1/keys", "/v1/admin")):
            continue
        for operation in item.values():
            operation["security"] = [{"apiKey": []}]
            responses = operation.setdefault("responses", {})
            for status, (description, headers) in ACCESS_RESPONSES.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "headers": headers,
                        "content": {"application/json": {"schema": problem_ref}},
                    },
                )


def _optional_parameters(schema: dict[str, Any]) -> None:
    """An optional header or query parameter is absent, never ``null``: drop the null branch.

    FastAPI writes ``str | None`` as ``anyOf: [string, null]``; clients and fuzzers would then
    send the text "null".
    """
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                parameter_schema = parameter.get("schema", {})
                branches = parameter_schema.get("anyOf")
                if not branches or parameter.get("required"):
                    continue
                concrete = [b for b in branches if b.get("type") != "null"]
                if len(concrete) == 1:
                    del parameter_schema["anyOf"]
                    parameter_schema.update(concrete[0])


def _problem_media_types(schema: dict[str, Any]) -> None:
    """Error responses are documented as application/problem+json, which is what they are."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if not status.isdigit() or int(status) < 400 or not content:
                    continue
                if "application/json" in content:
                    content[problems.PROBLEM_JSON] = content.pop("application/json")
