"""The live OpenAPI schema: valid, and the same contract as the committed snapshot.

``/openapi.json`` is fetched from an in-process gateway and validated with openapi-spec-validator.
Its contract (for every operation: operationId, path, method, parameters with ``in`` and
``required``, response status codes and the response header names of each) is compared with
``tests/integration/openapi_snapshot.json``; a changed operation id, path, parameter, status code
or header fails the test with a list of the changes and a unified diff.

To change the contract on purpose, regenerate the snapshot and commit it with the change::

    CACHEGW_UPDATE_SNAPSHOT=1 .venv/bin/pytest tests/integration/test_openapi_contract.py
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

from jsonschema.exceptions import ValidationError
from jsonschema_path import SchemaPath
from openapi_spec_validator import validate
from openapi_spec_validator.shortcuts import get_validator_cls

from devstack import Stack
from tests.integration.conftest import gateway_client, settings_for

SNAPSHOT = Path(__file__).with_name("openapi_snapshot.json")
UPDATE_ENV = "CACHEGW_UPDATE_SNAPSHOT"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/pytest tests/integration/test_openapi_contract.py"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

Contract = dict[str, dict[str, Any]]


async def _live_schema(stack: Stack) -> dict[str, Any]:
    async with gateway_client(settings_for(stack)) as (http, _):
        response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    schema: dict[str, Any] = response.json()
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref``s (``#/components/...``) to the object they name."""
    seen = 0
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"non-local $ref {ref!r}"
        target: Any = schema
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
        seen += 1
        assert seen < 20, f"$ref cycle at {ref!r}"
    return node


def contract_of(schema: dict[str, Any]) -> Contract:
    """Every operation, keyed by operationId; deterministic (sorted lists, sorted keys on dump)."""
    contract: Contract = {}
    for path, raw_item in schema.get("paths", {}).items():
        item = _resolve(schema, raw_item)
        shared = [_resolve(schema, p) for p in item.get("parameters", [])]
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            op_id = operation.get("operationId") or f"{method.upper()} {path}"
            assert op_id not in contract, f"operationId {op_id!r} used twice"
            params: dict[tuple[str, str], dict[str, Any]] = {}
            for raw in [*shared, *operation.get("parameters", [])]:
                param = _resolve(schema, raw)
                params[(param["in"], param["name"])] = {  # an operation's own wins
                    "in": param["in"],
                    "name": param["name"],
                    "required": bool(param.get("required", False)),
                }
            responses: dict[str, list[str]] = {}
            for status, raw_response in operation.get("responses", {}).items():
                response = _resolve(schema, raw_response)
                responses[str(status)] = sorted(response.get("headers", {}))
            contract[op_id] = {
                "method": method.upper(),
                "path": path,
                "parameters": [params[k] for k in sorted(params)],
                "responses": responses,
            }
    return contract


def dump(contract: Contract) -> str:
    return json.dumps({"operations": contract}, indent=2, sort_keys=True) + "\n"


def facts(contract: Contract) -> list[str]:
    """The contract as one sorted line per fact, so that a unified diff of two reads plainly."""
    lines: list[str] = []
    for op_id, op in contract.items():
        lines.append(f"{op_id}: {op['method']} {op['path']}")
        for p in op["parameters"]:
            required = "required" if p["required"] else "optional"
            lines.append(f"{op_id}: parameter {p['in']} {p['name']} {required}")
        for status, headers in op["responses"].items():
            lines.append(f"{op_id}: response {status}")
            lines.extend(f"{op_id}: response {status} header {h}" for h in headers)
    return sorted(lines)


def changes(old: Contract, new: Contract) -> list[str]:
    """The differences, one readable line each (old = snapshot, new = live)."""
    out: list[str] = []
    for op_id in sorted(old.keys() - new.keys()):
        out.append(f"operation {op_id} ({old[op_id]['method']} {old[op_id]['path']}) removed")
    for op_id in sorted(new.keys() - old.keys()):
        out.append(f"operation {op_id} ({new[op_id]['method']} {new[op_id]['path']}) added")
    for op_id in sorted(old.keys() & new.keys()):
        was, now = old[op_id], new[op_id]
        for field in ("method", "path"):
            if was[field] != now[field]:
                out.append(f"{op_id}: {field} {was[field]!r} -> {now[field]!r}")
        was_params = {(p["in"], p["name"]): p for p in was["parameters"]}
        now_params = {(p["in"], p["name"]): p for p in now["parameters"]}
        for where, name in sorted(was_params.keys() - now_params.keys()):
            out.append(f"{op_id}: {where} parameter {name!r} removed")
        for where, name in sorted(now_params.keys() - was_params.keys()):
            required = "required" if now_params[(where, name)]["required"] else "optional"
            out.append(f"{op_id}: {required} {where} parameter {name!r} added")
        for key in sorted(was_params.keys() & now_params.keys()):
            if was_params[key]["required"] != now_params[key]["required"]:
                out.append(
                    f"{op_id}: {key[0]} parameter {key[1]!r} required "
                    f"{was_params[key]['required']} -> {now_params[key]['required']}"
                )
        was_resp, now_resp = was["responses"], now["responses"]
        for status in sorted(was_resp.keys() - now_resp.keys()):
            out.append(f"{op_id}: response {status} removed")
        for status in sorted(now_resp.keys() - was_resp.keys()):
            out.append(f"{op_id}: response {status} added (headers {now_resp[status]})")
        for status in sorted(was_resp.keys() & now_resp.keys()):
            for header in sorted(set(was_resp[status]) - set(now_resp[status])):
                out.append(f"{op_id}: response {status} header {header!r} removed")
            for header in sorted(set(now_resp[status]) - set(was_resp[status])):
                out.append(f"{op_id}: response {status} header {header!r} added")
    return out


async def test_live_schema_is_valid_openapi(stack: Stack) -> None:
    schema = await _live_schema(stack)
    assert schema.get("openapi", "").startswith("3."), schema.get("openapi")
    try:
        validate(schema)
    except ValidationError:
        # every error, not only the first, with where it is in the document
        validator = get_validator_cls(schema)(SchemaPath.from_dict(schema))
        errors = [
            f"{'/'.join(str(p) for p in error.path) or '<root>'}: {error.message}"
            for error in validator.iter_errors()
        ]
        raise AssertionError(
            f"/openapi.json (OpenAPI {schema['openapi']}) is not valid:\n" + "\n".join(errors[:30])
        ) from None


async def test_live_contract_matches_snapshot(stack: Stack) -> None:
    contract = contract_of(await _live_schema(stack))
    assert contract, "the live schema has no operations"
    live_text = dump(contract)
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.write_text(live_text)
        return
    assert SNAPSHOT.exists(), f"{SNAPSHOT.name} is missing: run `{REGENERATE}`"
    snapshot_text = SNAPSHOT.read_text()
    if snapshot_text == live_text:
        return
    snapshot: Contract = json.loads(snapshot_text)["operations"]
    listed = changes(snapshot, contract) or ["(formatting only: the snapshot is not as dumped)"]
    diff = difflib.unified_diff(
        facts(snapshot), facts(contract), "committed snapshot", "live /openapi.json", n=0,
        lineterm="",
    )  # fmt: skip
    raise AssertionError(
        "the API contract changed:\n  - "
        + "\n  - ".join(listed)
        + f"\n\nIf this is on purpose, run `{REGENERATE}` and commit the snapshot.\n\n"
        + "\n".join(diff)
    )


def test_changes_are_listed_readably() -> None:
    """The diff logic itself, on a made-up contract (no stack needed)."""
    old: Contract = {
        "getKey": {
            "method": "GET",
            "path": "/v1/keys/{key}",
            "parameters": [{"in": "path", "name": "key", "required": True}],
            "responses": {"200": ["Age", "ETag"], "404": []},
        },
        "gone": {"method": "DELETE", "path": "/x", "parameters": [], "responses": {}},
    }
    new: Contract = {
        "getKey": {
            "method": "GET",
            "path": "/v2/keys/{key}",
            "parameters": [
                {"in": "path", "name": "key", "required": True},
                {"in": "query", "name": "explain", "required": False},
            ],
            "responses": {"200": ["ETag", "Cache-Status"], "410": []},
        },
    }
    assert changes(old, new) == [
        "operation gone (DELETE /x) removed",
        "getKey: path '/v1/keys/{key}' -> '/v2/keys/{key}'",
        "getKey: optional query parameter 'explain' added",
        "getKey: response 404 removed",
        "getKey: response 410 added (headers [])",
        "getKey: response 200 header 'Age' removed",
        "getKey: response 200 header 'Cache-Status' added",
    ]
    assert dump(old) == dump(json.loads(dump(old))["operations"])
