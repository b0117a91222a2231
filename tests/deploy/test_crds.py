"""deploy.crds: the vendored schemas, and how they are made and applied."""

from __future__ import annotations

from typing import Any

from deploy import crds


def test_descriptions_go_and_a_property_called_description_stays() -> None:
    schema = {
        "description": "prose",
        "properties": {"description": {"type": "string", "description": "more prose"}},
    }
    assert crds.strip_descriptions(schema) == {"properties": {"description": {"type": "string"}}}


def test_declared_objects_are_closed_unless_they_preserve_unknown_fields() -> None:
    schema = {
        "properties": {
            "a": {"properties": {"b": {"type": "string"}}},
            "free": {"properties": {}, "x-kubernetes-preserve-unknown-fields": True},
            "labels": {"additionalProperties": {"type": "string"}},
        }
    }
    out: Any = crds.closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["free"]
    assert out["properties"]["labels"]["additionalProperties"] == {"type": "string"}


def test_each_vendored_schema_says_where_it_came_from() -> None:
    for kind, plural in crds.KINDS.items():
        vendored = crds.load(kind)
        assert vendored["kind"] == kind
        assert vendored["apiVersion"] == "monitoring.coreos.com/v1"
        assert vendored["source"] == crds.SOURCE
        assert vendored["operatorVersion"] == "0.93.0"
        assert vendored["file"].endswith(f"monitoring.coreos.com_{plural}.yaml")


def test_a_service_monitor_with_a_misspelt_field_is_refused() -> None:
    monitor: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "m"},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "intervall": "15s"}]},
    }
    assert any("intervall" in error for error in crds.errors(monitor))
    del monitor["spec"]["endpoints"][0]["intervall"]
    assert crds.errors(monitor) == []
