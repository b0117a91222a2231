"""Server spans for the key operations, made only for requests the sampler would keep.

OpenTelemetry's ASGI middleware costs more than a Redis round trip even for a request it does not
record, so the configured sampler is asked first (``tracing.head_sampled``): a 1% sample costs
about 1% of the middleware's work, and a sampled request's span gets the very trace id the
sampler judged. FastAPI's own routes are traced by opentelemetry-instrumentation-fastapi.
"""

from __future__ import annotations

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import tracing


class HeadSampledTracing:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.traced = OpenTelemetryMiddleware(
            app,
            tracer_provider=tracing.provider(),
            default_span_details=tracing.server_span_details,
            server_request_hook=tracing.sanitize_server_span,
            exclude_spans=["receive", "send"],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if tracing.head_sampled(scope["headers"]):
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)
