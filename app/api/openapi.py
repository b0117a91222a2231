"""The OpenAPI schema: the description, bearer security, problem media types, optional parameters.

The key operations' routes (``keys.py``) are documented here beside FastAPI's own routes, though
only FastAPI's are dispatched.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from app.api import problems

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

TAGS = [
    {"name": "keys", "description": "Get, set and delete cached keys."},
    {"name": "health", "description": "Liveness and readiness."},
    {"name": "admin", "description": "Read-only operational state."},
]


def install(app: FastAPI, *, documented: list[BaseRoute]) -> None:
    """Serve a schema of ``app``'s routes and the ``documented`` ones, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*documented, *app.routes],
                tags=app.openapi_tags,
            )
            _security(schema)
            _problem_media_types(schema)
            _optional_parameters(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
        if not path.startswith(("/v1/keys", "/v1/admin", "/v1/batch")):
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
