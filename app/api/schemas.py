"""Models and OpenAPI fragments that document the API (the hot paths build responses directly)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(examples=["/problems/key-not-found"])
    title: str = Field(examples=["Key not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no live entry for this key"])
    instance: str | None = Field(default=None, examples=["/v1/keys/user:42"])


class WriteResult(BaseModel):
    """What a PUT made durable."""

    key: str = Field(examples=["user:42"])
    version: int = Field(
        description="The new version; the ETag is this number, quoted.", examples=[17]
    )
    etag: str = Field(examples=['"17"'])
    expires_at: datetime | None = Field(
        default=None, description="When the entry expires, if it has a ttl."
    )


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    """Per-check readiness; the gateway is ready when the store answers."""

    ready: bool
    checks: dict[str, Check]


def _header(description: str, example: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}, "example": example}


ETAG = _header("The entry's version as a strong entity-tag.", '"17"')
AGE = _header("Seconds since this copy was last known to match the store.", "3")
CACHE_STATUS = _header(
    "RFC 9211: which tier answered (hit; detail=primary|replica|local) or fwd=miss (the store).",
    "cachegw; hit; detail=primary",
)
CACHE_CONTROL = _header(
    "max-age=<remaining ttl in seconds>, when the entry has a ttl.", "max-age=60"
)
RETRY_AFTER = _header("Seconds to wait before retrying.", "1")
LOCATION = _header("The key's URL (on 201).", "/v1/keys/user:42")

BINARY = {"schema": {"type": "string", "format": "binary"}}


def problem_response(description: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": Problem, "description": description}
    if headers:
        out["headers"] = headers
    return out


VALIDATION = problem_response("The key, ttl or a header is invalid (problem type invalid-*).")
NOT_FOUND = problem_response("The store has no live entry for this key.")
UNAVAILABLE = problem_response(
    "No tier could answer within the deadline, or the store could not commit; nothing changed.",
    headers={"Retry-After": RETRY_AFTER},
)
PRECONDITION = problem_response("If-Match / If-None-Match did not hold.", headers={"ETag": ETAG})
BAD_PRECONDITION = problem_response("If-Match / If-None-Match is not a valid entity-tag list.")
