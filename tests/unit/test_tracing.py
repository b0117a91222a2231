"""Head sampling of the key operations: the sampler is asked before the ASGI middleware runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision

from app import tracing


@pytest.fixture
def exporter(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[InMemorySpanExporter]:
    sampler, _, argument = request.param.partition(":")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if argument:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    spans = InMemorySpanExporter()
    tracing.enable(spans, batch=False)
    token = tracing._PRESET_TRACE_ID.set(None)
    try:
        yield spans
    finally:
        tracing._PRESET_TRACE_ID.reset(token)
        tracing.disable()


@pytest.mark.parametrize("exporter", ["always_off"], indirect=True)
def test_an_unsampled_request_skips_the_middleware_and_makes_no_span(
    exporter: InMemorySpanExporter,
) -> None:
    assert not tracing.head_sampled([(b"host", b"x")])
    with tracing.tier_span("redis GET", {}) as span:  # no server span: nothing is made
        assert not span.is_recording()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("exporter", ["always_on"], indirect=True)
def test_a_sampled_request_gets_the_trace_id_the_sampler_judged(
    exporter: InMemorySpanExporter,
) -> None:
    assert tracing.head_sampled([])
    preset = tracing._PRESET_TRACE_ID.get()
    assert preset is not None
    tracer = trace.get_tracer("test", tracer_provider=tracing.provider())
    with (
        tracer.start_as_current_span("GET /v1/keys/{key}") as server,
        tracing.tier_span("redis GET", {"db.system.name": "redis"}) as child,
    ):
        assert child.is_recording()
    assert server.get_span_context().trace_id == preset
    assert tracing._PRESET_TRACE_ID.get() is None  # used once
    assert [s.name for s in exporter.get_finished_spans()] == ["redis GET", "GET /v1/keys/{key}"]


@pytest.mark.parametrize("exporter", ["parentbased_traceidratio"], indirect=True)
def test_a_propagated_context_is_left_to_the_middleware(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.head_sampled([(b"traceparent", traceparent)])


@pytest.mark.parametrize(
    "exporter", ["traceidratio:0.25", "parentbased_traceidratio:0.25"], indirect=True
)
def test_the_ratio_is_kept_and_agrees_with_the_sdk(exporter: InMemorySpanExporter) -> None:
    provider = tracing.provider()
    assert provider is not None
    sampled = 0
    for _ in range(20_000):
        if tracing.head_sampled([]):
            sampled += 1
            trace_id = tracing._PRESET_TRACE_ID.get()
            assert trace_id is not None
            decision = provider.sampler.should_sample(None, trace_id, "request").decision
            assert decision is Decision.RECORD_AND_SAMPLE  # what is_sampled() says
            tracing._PRESET_TRACE_ID.set(None)
    assert 4_500 < sampled < 5_500
