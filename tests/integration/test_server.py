"""The gateway as ``make run`` serves it: uvicorn in its own process, over real HTTP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import Stack
from devstack.serving import serve_gateway
from tests.integration.conftest import auth_headers


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_gateway(stack, tmp_path_factory.mktemp("server"), timeout_s=10) as base:
        yield base


def test_put_then_get_returns_identical_bytes_with_etag_and_cache_status(server: str) -> None:
    payload = os.urandom(200_000) + bytes(range(256))
    with httpx.Client(base_url=server, timeout=5, headers=auth_headers()) as http:
        put = http.put("/v1/keys/somefile", content=payload, headers={"Content-Type": "image/png"})
        assert put.status_code in (200, 201)
        got = http.get("/v1/keys/somefile")
        assert got.status_code == 200
        assert got.content == payload
        assert got.headers["etag"] == put.headers["etag"]
        assert got.headers["cache-status"].startswith("cachegw;")
        assert got.headers["content-type"] == "image/png"
        assert http.delete("/v1/keys/somefile").status_code == 204


def test_docs_and_schema_list_every_operation_with_its_errors(server: str) -> None:
    with httpx.Client(base_url=server, timeout=5, headers=auth_headers()) as http:
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
        schema = http.get("/openapi.json").json()
    operations = {
        op["operationId"]: (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
    }
    assert {"getKey", "headKey", "putKey", "deleteKey", "invalidateKey", "livez", "readyz"} <= set(
        operations
    )
    expected_errors = {
        "getKey": {"400", "404", "422", "503"},
        "putKey": {"400", "412", "413", "415", "422", "503"},
        "deleteKey": {"400", "404", "412", "422", "503"},
    }
    for operation_id, statuses in expected_errors.items():
        responses = operations[operation_id][2]["responses"]
        assert statuses <= set(responses), (operation_id, set(responses))
        for status in statuses:
            content = responses[status]["content"]
            assert list(content) == ["application/problem+json"], (operation_id, status)
            assert content["application/problem+json"]["schema"]["$ref"].endswith("/Problem")
    get_headers = operations["getKey"][2]["responses"]["200"]["headers"]
    assert {"ETag", "Age", "Cache-Status", "Cache-Control"} <= set(get_headers)
    put_body = operations["putKey"][2]["requestBody"]["content"]
    assert put_body["*/*"]["schema"]["format"] == "binary"


@pytest.mark.parametrize("access_log", [False, True])
def test_an_access_line_per_request_only_when_asked_for(
    stack: Stack, tmp_path: Path, access_log: bool
) -> None:
    env = {"CACHEGW_ACCESS_LOG": "true"} if access_log else {}
    with (
        serve_gateway(stack, tmp_path, env=env, timeout_s=10) as base,
        httpx.Client(base_url=base, timeout=5, headers=auth_headers()) as http,
    ):
        for _ in range(5):
            assert http.get("/v1/keys/access-log-probe").status_code == 404
    output = next(tmp_path.glob("gateway-*.log")).read_text()
    lines = [line for line in output.splitlines() if '"uvicorn.access"' in line]
    probes = [line for line in lines if "/v1/keys/access-log-probe" in line]
    assert len(probes) == (5 if access_log else 0), lines[:10]
    assert '"uvicorn.error"' in output  # uvicorn's own lines are kept either way
