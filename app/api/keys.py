"""``/v1/keys/{key}`` in the OpenAPI schema: get, head, put, delete, invalidate.

These routes document the key operations and are never dispatched: ``dispatch.py`` answers every
request under ``/v1/keys/`` before FastAPI's routing. Built per app from its settings, so the
documented limits (key length, TTL range, body size) are the ones the gateway enforces, and each
header's format is stated as the handlers parse it.
"""

# No ``from __future__ import annotations``: the routes annotate with local types, which FastAPI
# reads when the routes are made.
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from starlette.responses import Response

from app.api import schemas
from app.api.http import CACHE_CONTROL_PATTERN
from app.settings import LimitSettings

KEY_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f/]+$"
# RFC 9110 entity-tag lists, as the handlers parse them: `*`, or entity-tags separated by
# commas; an empty value counts as absent. Malformed ones get an invalid-precondition problem.
_TAG = '(W/)?"[\\u0021\\u0023-\\u007e]*"'
TAG_LIST_PATTERN = f"^[ \\t]*(\\*|{_TAG}([ \\t]*,[ \\t]*{_TAG})*)?[ \\t]*$"
CREATE_ONLY_PATTERN = "^[ \\t]*\\*?[ \\t]*$"


TAG_LIST = {"pattern": TAG_LIST_PATTERN}
# Optional parameters give their examples in the description, not as OpenAPI examples: Swagger
# UI's "Try it out" fills an example in, and an If-Match or explain nobody asked for changes what
# the request does.
IfNoneMatch = Annotated[
    str | None,
    Header(
        description='`*` or entity-tags such as `"17"`: answer 304 when one matches '
        "(an empty value counts as absent).",
        json_schema_extra=TAG_LIST,
    ),
]
CacheControl = Annotated[
    str | None,
    Header(
        description="`max-stale=N` / `stale-if-error=N`: how stale a fallback tier's answer may be "
        "(capped by the server); `no-cache`: read the store and refresh the caches; "
        "`only-if-cached`: never read the store (504 when no cache tier has the key). "
        "For example `max-stale=5, stale-if-error=60`. Other directives are ignored; "
        "max-stale, stale-if-error and max-age with a value that is not a whole number of "
        "seconds are refused (400).",
        json_schema_extra={"pattern": CACHE_CONTROL_PATTERN},
    ),
]
MinVersion = Annotated[
    str | None,
    Header(
        alias="Cachegw-Min-Version",
        description="Read-your-writes: the version (an ETag's digits, such as `41`) the caller "
        "already saw or wrote. No tier answers with an older copy, on whatever instance; the "
        "store answers if it must; 412 when even the store's entry is older.",
        json_schema_extra={"pattern": '^[ \\t]*("[0-9]{1,19}"|[0-9]{1,19})[ \\t]*$'},
    ),
]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _duration(seconds: int) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{seconds // scale} {unit}"
    return f"{seconds} s"


def _documented_only() -> Response:
    raise RuntimeError("the key operations are served by app.api.dispatch, not by this route")


READ_OK = {
    "description": "The stored bytes, with the Content-Type they were stored with; "
    "with `explain=true`, the routing explanation as JSON.",
    "content": {
        "application/json": {
            "schema": {
                "description": "A value stored as JSON, or the routing explanation.",
                "anyOf": [schemas.EXPLAIN, {}],
            }
        },
        "*/*": schemas.BINARY,
    },
    "headers": {
        "ETag": schemas.ETAG,
        "Age": schemas.AGE,
        "Cache-Status": schemas.CACHE_STATUS,
        "Cache-Control": schemas.CACHE_CONTROL,
    },
}
READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: READ_OK,
    304: {
        "description": "The client's copy (If-None-Match) is current.",
        "headers": {"ETag": schemas.ETAG},
    },
    400: schemas.BAD_READ_HEADER,
    404: schemas.NOT_FOUND,
    412: schemas.MIN_VERSION_UNAVAILABLE,
    422: schemas.VALIDATION,
    503: schemas.UNAVAILABLE,
    504: schemas.NOT_CACHED,
}


def key_routes(limits: LimitSettings) -> APIRouter:
    """The documented key operations, their limits taken from ``limits``."""
    router = APIRouter(prefix="/v1/keys", tags=["keys"])
    key_param = Annotated[
        str,
        Path(
            description=f"The key: 1 to {limits.max_key_bytes} bytes of UTF-8, percent-encoded in "
            "the URL; no control characters and no '/'. A `{tag}` inside it chooses the Redis "
            "slot, as in Redis.",
            openapi_examples={
                "plain": {"summary": "A plain key", "value": "user:42"},
                "tagged": {
                    "summary": "A key whose {tag} picks the slot", "value": "{user:42}:cart"
                },
            },
            # The limit is in bytes of UTF-8, which a schema cannot say: maxLength counts
            # characters (a key of that many characters may still be refused as too long).
            json_schema_extra={
                "minLength": 1, "maxLength": limits.max_key_bytes, "pattern": KEY_PATTERN
            },
        ),
    ]  # fmt: skip
    max_value = _size(limits.max_value_bytes)
    ttl_range = f"{_duration(limits.min_ttl_s)} to {_duration(limits.max_ttl_s)}"

    @router.get(
        "/{key}",
        operation_id="getKey",
        summary="Read a key",
        response_class=Response,
        responses=READ_RESPONSES,
    )
    async def get_key(
        key: key_param,
        if_none_match: IfNoneMatch = None,
        cache_control: CacheControl = None,
        min_version: MinVersion = None,
        explain: Annotated[
            bool,
            Query(
                description="Answer how a read of the key would be routed (slot, owner, replicas, "
                "breakers, tier order, whether a load is in flight) instead of its value.",
            ),
        ] = False,
    ) -> Response:
        """Answer from the fastest tier that can answer correctly; `Cache-Status` says which."""
        return _documented_only()

    @router.head(
        "/{key}",
        operation_id="headKey",
        summary="Read a key's headers",
        response_class=Response,
        responses=READ_RESPONSES,
    )
    async def head_key(
        key: key_param,
        if_none_match: IfNoneMatch = None,
        cache_control: CacheControl = None,
        min_version: MinVersion = None,
    ) -> Response:
        """As GET, without the body."""
        return _documented_only()

    @router.put(
        "/{key}",
        operation_id="putKey",
        summary="Write a key",
        status_code=200,
        response_model=schemas.WriteResult,
        responses={
            200: {"description": "Replaced an existing entry.", "headers": {"ETag": schemas.ETAG}},
            201: {
                "model": schemas.WriteResult,
                "description": "Created the entry.",
                "headers": {"ETag": schemas.ETAG, "Location": schemas.LOCATION},
            },
            400: schemas.BAD_PRECONDITION,
            412: schemas.PRECONDITION,
            413: schemas.TOO_LARGE,
            415: schemas.UNSUPPORTED,
            422: schemas.VALIDATION,
            503: schemas.UNAVAILABLE,
        },
        openapi_extra={
            "requestBody": {
                # An empty body (none sent) is an empty value, as HTTP has it: not an error.
                "required": False,
                "description": f"The value: any bytes, at most {max_value} (none: the empty "
                "value). Its Content-Type is kept.",
                "content": {
                    "text/plain": {"schema": {"type": "string"}, "example": "hello, world"},
                    "application/octet-stream": schemas.BINARY,
                    "application/json": {"schema": {}, "example": {"name": "Ada", "visits": 3}},
                    "*/*": schemas.BINARY,
                },
            }
        },
    )
    async def put_key(
        key: key_param,
        ttl: Annotated[
            int | None,
            Query(
                description=f"Seconds until the entry expires ({ttl_range}), for example `3600`.",
                json_schema_extra={"minimum": limits.min_ttl_s, "maximum": limits.max_ttl_s},
            ),
        ] = None,
        if_match: Annotated[
            str | None,
            Header(
                description='Compare-and-set: write only if the version is `"N"` (or `*`: exists).',
                json_schema_extra=TAG_LIST,
            ),
        ] = None,
        if_none_match: Annotated[
            str | None,
            Header(
                description="`*`: create only; 412 if the key exists.",
                json_schema_extra={"pattern": CREATE_ONLY_PATTERN},
            ),
        ] = None,
    ) -> Response:
        """Durable before acknowledged: 2xx only after the store committed."""
        return _documented_only()

    @router.delete(
        "/{key}",
        operation_id="deleteKey",
        summary="Delete a key",
        status_code=204,
        response_class=Response,
        responses={
            204: {"description": "Deleted from the store; caches hold a tombstone."},
            400: schemas.BAD_PRECONDITION,
            404: schemas.NOT_FOUND,
            412: schemas.PRECONDITION,
            422: schemas.VALIDATION,
            503: schemas.UNAVAILABLE,
        },
    )
    async def delete_key(
        key: key_param,
        if_match: Annotated[
            str | None,
            Header(
                description='Delete only if the version is `"N"`.',
                json_schema_extra=TAG_LIST,
            ),
        ] = None,
    ) -> Response:
        """Durable before acknowledged; no tier serves the key afterwards."""
        return _documented_only()

    @router.post(
        "/{key}/invalidate",
        operation_id="invalidateKey",
        summary="Drop a key from every cache tier",
        status_code=204,
        response_class=Response,
        responses={
            204: {"description": "Every cache tier dropped the key; the store keeps it."},
            404: schemas.NOT_FOUND,
            422: schemas.VALIDATION,
            503: schemas.UNAVAILABLE,
        },
    )
    async def invalidate_key(key: key_param) -> Response:
        """Until a fresh fill from the store, no tier serves an older copy of the key."""
        return _documented_only()

    @router.post(
        "/{key}/touch",
        operation_id="touchKey",
        summary="Give a key a new TTL without sending its value",
        status_code=200,
        response_model=schemas.WriteResult,
        responses={
            200: {
                "description": "The new expiry is durable; the version (ETag) is unchanged.",
                "headers": {"ETag": schemas.ETAG},
            },
            400: schemas.BAD_PRECONDITION,
            404: schemas.NOT_FOUND,
            412: schemas.PRECONDITION,
            422: schemas.VALIDATION,
            503: schemas.UNAVAILABLE,
        },
    )
    async def touch_key(
        key: key_param,
        ttl: Annotated[
            int,
            Query(
                description=f"Seconds from now until the entry expires ({ttl_range}).",
                json_schema_extra={"minimum": limits.min_ttl_s, "maximum": limits.max_ttl_s},
            ),
        ],
        if_match: Annotated[
            str | None,
            Header(
                description='Touch only if the version is `"N"` (or `*`: exists).',
                json_schema_extra=TAG_LIST,
            ),
        ] = None,
    ) -> Response:
        """The value is not sent again and its version stays: the ETag names the value and its
        content type, which a touch does not change. Every cached copy, which carries the old
        expiry, is retired as by an invalidate; the next read loads the new expiry."""
        return _documented_only()

    return router
