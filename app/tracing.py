"""Tracing: OpenTelemetry, off unless configured by the standard ``OTEL_*`` variables.

The server span comes from opentelemetry-instrumentation-fastapi (and, for the key operations,
which never reach FastAPI, from the same ASGI middleware it uses), named by route template. Each
tier attempt gets a child span with ``db.system.name``, ``db.operation.name``,
``server.address``, ``server.port``, ``redis.node_role``, ``fallback.path`` and ``error.type``.
A key appears only as a hash (``cachegw.key.hash``) unless ``CACHEGW_TRACE_KEYS_PLAINLY`` allows
it, and request paths in span attributes have the key replaced by ``{key}``.

When tracing is off nothing is created on the hot path: callers test ``ENABLED`` first. When it
is on, the key operations ask the configured sampler first (``head_sampled``) and skip the ASGI
middleware for requests that would not be sampled, so that a 1% sample costs about 1% of the
middleware's work; a sampled request's server span then gets the very trace id the sampler judged.
Tier spans are made only under a recording span.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator, MutableMapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, Status, StatusCode

ENABLED = False
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: TracerProvider | None = None
_plain_keys = False
_root_bound: int | None = None  # see _root_rule

# What the router is doing, for the spans made deeper down (node calls, store queries).
KEY_ATTRIBUTE: ContextVar[tuple[str, str] | None] = ContextVar("cachegw_key_attr", default=None)
FALLBACK_PATH: ContextVar[str] = ContextVar("cachegw_fallback_path", default="")
# The trace id that head_sampled judged, for the server span the middleware is about to start.
_PRESET_TRACE_ID: ContextVar[int | None] = ContextVar("cachegw_preset_trace_id", default=None)


class _PresetIds(RandomIdGenerator):
    """Random ids, except a root span's trace id when ``head_sampled`` chose it in advance."""

    def generate_trace_id(self) -> int:
        preset = _PRESET_TRACE_ID.get()
        if preset is not None:
            _PRESET_TRACE_ID.set(None)
            return preset
        return super().generate_trace_id()


def recording() -> bool:
    """Is this request traced (a recording span is current)? Tier spans and their attributes are
    made only then, so an unsampled request pays one context lookup."""
    return ENABLED and trace.get_current_span().is_recording()


def _root_rule(sampler: Sampler) -> int | None:
    """For the usual samplers, the decision for a root as a bound on the trace id's low 64 bits
    (the SDK's own rule); None for others, which are asked each time."""
    root = sampler._root if isinstance(sampler, ParentBased) else sampler  # a private attribute
    if isinstance(root, TraceIdRatioBased):
        return root.bound
    if root is ALWAYS_ON:
        return 1 << 64
    if root is ALWAYS_OFF:
        return 0
    return None


def head_sampled(headers: list[tuple[bytes, bytes]]) -> bool:
    """Would the configured sampler record this request's server span?

    With a ``traceparent`` the answer is left to the middleware and the sampler (True). Without
    one, the sampler judges a fresh trace id, which the server span then gets if it is sampled.
    """
    if _provider is None:
        return False
    for name, _ in headers:
        if name == b"traceparent":
            return True
    trace_id = random.getrandbits(128) or 1
    if _root_bound is not None:
        sampled = trace_id & 0xFFFFFFFFFFFFFFFF < _root_bound
    else:
        result = _provider.sampler.should_sample(None, trace_id, "request", trace.SpanKind.SERVER)
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
    if sampled:
        _PRESET_TRACE_ID.set(trace_id)
        return True
    return False


def configured() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint or an explicit exporter)."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        exporter
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_from_environment(*, plain_keys: bool) -> TracerProvider | None:
    """The exporter the OTEL_* variables ask for (OTLP over HTTP, or ``console`` for spans as
    JSON on stdout); None when not asked for."""
    if not configured():
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return enable(ConsoleSpanExporter(), plain_keys=plain_keys)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return enable(OTLPSpanExporter(), plain_keys=plain_keys)


def enable(
    exporter: SpanExporter, *, plain_keys: bool = False, batch: bool = True
) -> TracerProvider:
    """Start tracing to ``exporter`` (the sampler comes from OTEL_TRACES_SAMPLER, as usual)."""
    global ENABLED, _tracer, _provider, _plain_keys, _root_bound
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "cachegw")})
    provider = TracerProvider(resource=resource, id_generator=_PresetIds())
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    _provider, _tracer, _plain_keys, ENABLED = (
        provider,
        provider.get_tracer("cachegw"),
        plain_keys,
        True,
    )
    _root_bound = _root_rule(provider.sampler)
    return provider


def disable() -> None:
    global ENABLED, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ENABLED, _tracer, _provider = False, trace.NoOpTracer(), None


def provider() -> TracerProvider | None:
    return _provider


def extend_fallback_path(tier: str) -> None:
    path = FALLBACK_PATH.get()
    FALLBACK_PATH.set(f"{path}>{tier}" if path else tier)


def key_attribute(key: str) -> tuple[str, str]:
    if _plain_keys:
        return ("cachegw.key", key)
    return ("cachegw.key.hash", hashlib.sha256(key.encode()).hexdigest()[:16])


@contextlib.contextmanager
def tier_span(name: str, attributes: dict[str, Any]) -> Iterator[Span]:
    """A child span for one tier attempt; failures set ``error.type`` and an error status.

    Under a server span that is not recorded (not sampled), nothing is made.
    """
    parent = trace.get_current_span()
    if not parent.is_recording():
        yield parent
        return
    key = KEY_ATTRIBUTE.get()
    if key is not None:
        attributes[key[0]] = key[1]
    path = FALLBACK_PATH.get()
    if path:
        attributes["fallback.path"] = path
    with _tracer.start_as_current_span(
        name, kind=trace.SpanKind.CLIENT, attributes=attributes, record_exception=False,
        set_status_on_exception=False,
    ) as span:  # fmt: skip
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise


def sanitize_server_span(span: Span, scope: MutableMapping[str, Any]) -> None:
    """Server request hook: the request path without the key in it."""
    if not span.is_recording():
        return
    path: str = scope.get("path", "")
    if path.startswith("/v1/keys/"):
        rest = path[len("/v1/keys/") :]
        suffix = rest[rest.find("/") :] if "/" in rest else ""
        template = "/v1/keys/{key}" + suffix
        span.set_attribute("http.route", template)
        for name in ("http.target", "url.path"):
            span.set_attribute(name, template)
        span.set_attribute("http.url", template)
        span.set_attribute("url.full", template)


def server_span_details(scope: MutableMapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Span name and attributes for the key operations (as the FastAPI instrumentation names
    them)."""
    path: str = scope.get("path", "")
    route = path
    if path.startswith("/v1/keys/"):
        invalidate = path.endswith("/invalidate") and path.count("/") == 4
        route = "/v1/keys/{key}/invalidate" if invalidate else "/v1/keys/{key}"
    return f"{scope.get('method', 'HTTP')} {route}", {"http.route": route}
