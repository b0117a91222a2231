"""Models and OpenAPI fragments that document the API (the hot paths build responses directly)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.api.problems import PROBLEM_TYPES


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
    """Ready means "can serve": the store answers, or Redis answers for some slots (its copies
    are served, within the read's staleness policy, while writes fail); never while draining."""

    ready: bool
    serves: str = Field(
        description="What this instance can answer now.",
        examples=["reads and writes", "reads of what Redis holds; writes fail"],
    )
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

_ADDRESS = {"type": "string", "example": "10.0.0.7:6379"}
EXPLAIN = {
    "title": "Explain",
    "description": "How a read of the key would be routed (`?explain=true`); never its value.",
    "type": "object",
    "required": [
        "key", "namespace", "redis_key_slot", "owner", "replicas", "breakers", "tier_order",
        "load_in_flight", "newest_announced_seq", "local_copy", "degraded_mode", "deadline_ms",
    ],
    "properties": {
        "key": {"type": "string"},
        "namespace": {"type": "string"},
        "redis_key_slot": {"type": "integer", "minimum": 0, "maximum": 16383},
        "owner": {
            "type": ["string", "null"], "example": "10.0.0.7:6379",
            "description": "The slot's primary, if known.",
        },
        "replicas": {"type": "array", "items": _ADDRESS},
        "breakers": {
            "type": "object",
            "description": "Breaker state per route (closed, open, half_open).",
            "additionalProperties": {"type": "string"},
        },
        "tier_order": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The tiers a read would try now, in order.",
        },
        "load_in_flight": {"type": "boolean"},
        "newest_announced_seq": {"type": ["integer", "null"]},
        "local_copy": {
            "type": ["object", "null"],
            "properties": {"seq": {"type": "integer"}, "behind_s": {"type": "number"}},
        },
        "degraded_mode": {"type": "boolean"},
        "deadline_ms": {"type": "integer"},
    },
}  # fmt: skip


def problem_response(
    description: str, slug: str, detail: str, *, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A documented error answer, with an example of its problem body."""
    kind = PROBLEM_TYPES[slug]
    example = {
        "type": kind.uri, "title": kind.title, "status": kind.status, "detail": detail,
        "instance": "/v1/keys/user:42",
    }  # fmt: skip
    out: dict[str, Any] = {
        "model": Problem,
        "description": description,
        "content": {"application/json": {"example": example}},
    }
    if headers:
        out["headers"] = headers
    return out


VALIDATION = problem_response(
    "The key, ttl or a header is invalid (problem types invalid-*).",
    "invalid-key", "the key contains a control character or '/'",
)  # fmt: skip
NOT_FOUND = problem_response(
    "The store has no live entry for this key.", "key-not-found", "no live entry for this key"
)
UNAVAILABLE = problem_response(
    "No tier could answer within the deadline, or the store could not commit; nothing changed.",
    "store-unavailable", "store: get timed out", headers={"Retry-After": RETRY_AFTER},
)  # fmt: skip
PRECONDITION = problem_response(
    "If-Match / If-None-Match did not hold.", "precondition-failed", "precondition failed",
    headers={"ETag": ETAG},
)  # fmt: skip
BAD_PRECONDITION = problem_response(
    "If-Match / If-None-Match (or, on reads, Cache-Control) is malformed.",
    "invalid-precondition", 'If-Match must be * or a comma-separated list of entity-tags like "42"',
)  # fmt: skip
BAD_READ_HEADER = problem_response(
    "If-None-Match, Cache-Control or Cachegw-Min-Version is malformed.",
    "invalid-precondition", 'If-None-Match must be * or a comma-separated list of entity-tags',
)  # fmt: skip
MIN_VERSION_UNAVAILABLE = problem_response(
    "Cachegw-Min-Version N, and the store's entry is older than N.", "min-version-unavailable",
    "the store's entry is version 41, older than the 45 asked for", headers={"ETag": ETAG},
)  # fmt: skip
TOO_LARGE = problem_response(
    "The body is larger than the value size limit (read no further than the limit).",
    "value-too-large", "the value exceeds the limit of 1048576 bytes",
)  # fmt: skip
UNSUPPORTED = problem_response(
    "Content-Type is not a concrete media type.", "unsupported-media-type",
    "Content-Type is not a valid media type",
)  # fmt: skip
NOT_CACHED = problem_response(
    "only-if-cached, and no cache tier holds the key.", "not-cached",
    "no cache tier holds this key within policy",
)  # fmt: skip
