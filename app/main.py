"""The application factory and the lifespan that builds and closes everything."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import prometheus_client
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from app import config, logs, tracing
from app.api import admin, batch, docs, health, keys, metrics, openapi, problems
from app.api.deps import State
from app.api.dispatch import KeyOperations, serve
from app.api.middleware import (
    AuthenticationMiddleware,
    HeadSampledTracing,
    RequestIdMiddleware,
    SizeLimitMiddleware,
)
from app.gateway import Gateway
from app.settings import Settings

log = logging.getLogger(__name__)


def serving_app() -> ASGIApp:
    """The app as ``cachegw serve`` runs it: SIGTERM drains (``app/drain.py``)."""
    return create_app(drain_on_sigterm=True)


def create_app(settings: Settings | None = None, *, drain_on_sigterm: bool = False) -> ASGIApp:
    """Build the app; settings are read from the environment here, not at import.

    The answer is the HTTP edge (``app/api/middleware/``) around the key operations
    (``app/api/dispatch.py``) and FastAPI, which serves everything else.
    """
    settings = settings or config.load()
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    logs.configure(
        settings.log_level, access_log=settings.access_log, log_format=settings.log_format
    )
    for warning in config.unknown_variables():
        log.warning(warning)
    log.info("targets: %s", ", ".join(f"{k}={v}" for k, v in config.targets(settings).items()))
    if not tracing.ENABLED:
        tracing.setup_from_environment(plain_keys=settings.trace_keys_plainly)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[State]:
        gateway = Gateway.build(settings)
        await gateway.start()
        if drain_on_sigterm:
            gateway.drain.install(settings.server.drain_pause_s)
        # Everything built so far (modules, routes, clients) lives as long as the process: move
        # it out of the cyclic collector's reach, so full collections stay short under load.
        gc.collect()
        gc.freeze()
        try:
            yield {"gateway": gateway}
        finally:
            gateway.drain.uninstall()
            await gateway.aclose()

    api = FastAPI(
        title="cachegw",
        version="0.1.0",
        description=openapi.DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=openapi.TAGS,
    )
    problems.install(api)
    api.include_router(health.router)
    api.include_router(admin.router)
    docs.install(api)
    documented = [*keys.key_routes(settings.limits).routes, *batch.batch_routes(settings.limits)]
    openapi.install(api, documented=documented)
    metrics.install(api)
    endpoint: ASGIApp = serve
    if tracing.ENABLED:
        FastAPIInstrumentor.instrument_app(
            api,
            tracer_provider=tracing.provider(),
            server_request_hook=tracing.sanitize_server_span,
            excluded_urls="/metrics,/livez,/readyz",
            exclude_spans=["receive", "send"],
        )
        endpoint = HeadSampledTracing(endpoint)
    edge = [
        Middleware(RequestIdMiddleware),
        Middleware(
            SizeLimitMiddleware,
            max_header_bytes=settings.limits.max_header_bytes,
            max_target_bytes=settings.limits.max_target_bytes,
        ),
        Middleware(AuthenticationMiddleware, protect_metrics=settings.auth.protect_metrics),
        Middleware(KeyOperations, endpoint=endpoint),
    ]
    app: ASGIApp = api
    for cls, args, kwargs in reversed(edge):
        app = cls(app, *args, **kwargs)
    return app
