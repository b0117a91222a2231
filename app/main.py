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
from app.api import admin, health, keys, lean, problems
from app.gateway import Gateway
from app.settings import Settings

DESCRIPTION = """
A cache gateway for services in any language. Values are opaque bytes stored under keys;
reads are answered by the fastest tier that can answer correctly: the Redis Cluster primary
that owns the key's slot, then (when it fails) the tiers behind it, then the authoritative
Postgres store.

* **Durable before acknowledged**: a PUT or DELETE is answered 2xx only after Postgres committed.
* **Says where the answer came from**: `Cache-Status` (RFC 9211) names the tier, `Age` says how old
  the copy is, `ETag` is the version.
* **Miss is not outage**: 404 only when the store says the key is absent; 503 with `Retry-After`
  when no tier can answer.
* Errors are RFC 9457 `application/problem+json`.

Quick start:

    curl -X PUT --data-binary @photo.png -H 'Content-Type: image/png' http://127.0.0.1:8000/v1/keys/photo
    curl -i http://127.0.0.1:8000/v1/keys/photo
"""


class GatewayApp(FastAPI):
    """FastAPI, with the key operations answered before its routing (see ``api/lean.py``).

    Every HTTP answer carries the request id (the caller's ``X-Request-ID`` if it is sane, else a
    new one), which every log line of the request carries too.
    """

    lean_path = True
    traced_lean: ASGIApp | None = None  # the lean path inside OpenTelemetry's ASGI middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        offered = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value
                break
        request_id = logs.new_request_id(offered)
        id_header = (b"x-request-id", request_id.encode())
        token = logs.REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if self.lean_path and lean.wants_lean(scope):
                if self.traced_lean is not None:
                    await self.traced_lean(scope, receive, send_with_id)
                else:
                    await lean.serve(self.state.gateway, scope, receive, send_with_id)
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
        openapi_tags=[
            {"name": "keys", "description": "Get, set and delete cached keys."},
            {"name": "health", "description": "Liveness and readiness."},
            {"name": "admin", "description": "Read-only operational state."},
        ],
    )
    app.state.settings = settings
    app.lean_path = settings.lean_path
    if tracing.ENABLED:
        _instrument(app)
    problems.install(app)
    app.include_router(keys.router)
    app.include_router(health.router)
    app.include_router(admin.router)
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
            _problem_media_types(schema)
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
