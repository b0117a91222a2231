"""Spans, checked with an in-memory exporter: a server span per request, a child per tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for
from tests.integration.redis_direct import drop
from tests.integration.test_api_keys import new_key


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable(exporter, batch=False)
    try:
        yield exporter
    finally:
        tracing.disable()


async def test_tier_spans_and_no_key_in_any_attribute(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    key = new_key("traced-secret-key")
    async with gateway_client(settings_for(stack)) as (client, _):
        await client.put(f"/v1/keys/{key}", content=b"value")
        spans.clear()
        assert (await client.get(f"/v1/keys/{key}")).status_code == 200
        hit = spans.get_finished_spans()
        drop(stack, key)
        spans.clear()
        await client.get(f"/v1/keys/{key}", headers={"Cache-Control": "no-cache"})
        miss = spans.get_finished_spans()

    server = [s for s in hit if s.kind.name == "SERVER"]
    assert [s.name for s in server] == ["GET /v1/keys/{key}"]
    (redis_get,) = [s for s in hit if s.name == "redis GET"]
    attributes = dict(redis_get.attributes or {})
    assert attributes["db.system.name"] == "redis"
    assert attributes["db.operation.name"] == "GET"
    assert attributes["redis.node_role"] == "primary"
    assert attributes["server.address"] == "127.0.0.1"
    assert isinstance(attributes["server.port"], int)
    assert attributes["fallback.path"] == "primary"
    assert len(str(attributes["cachegw.key.hash"])) == 16
    assert redis_get.parent is not None
    assert redis_get.parent.span_id == server[0].context.span_id

    (store_get,) = [s for s in miss if s.name == "postgresql get"]
    store_attributes = dict(store_get.attributes or {})
    assert store_attributes["db.system.name"] == "postgresql"
    assert store_attributes["fallback.path"] == "store"

    for span in hit + miss:
        assert key not in span.name
        for value in (span.attributes or {}).values():
            assert key not in str(value), (span.name, value)


async def test_a_failed_tier_attempt_records_its_error_type(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    settings = settings_for(stack, redis={"nodes": "127.0.0.1:1"})  # a cluster it cannot reach
    async with gateway_client(settings) as (client, gateway):
        gateway.slots.map.patch(0, ("127.0.0.1", 1))
        gateway.slots.map.slots[:] = [gateway.slots.map.slots[0]] * len(gateway.slots.map.slots)
        spans.clear()
        await client.get(f"/v1/keys/{new_key()}")
    failed = [s for s in spans.get_finished_spans() if s.name == "redis GET"]
    assert failed
    assert dict(failed[0].attributes or {})["error.type"] in {
        "TierUnavailableError",
        "TierTimeoutError",
    }
