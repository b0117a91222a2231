"""``/v1/keys/{key}``: get, head, put, delete, invalidate."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api import handlers, schemas
from app.api.http import key_from_raw_path
from app.gateway import Gateway

router = APIRouter(prefix="/v1/keys", tags=["keys"])

KEY_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f/]+$"
# RFC 9110 entity-tag lists, as the handlers parse them (documented so clients and fuzzers
# know the shape; malformed ones get an invalid-precondition problem).
_TAG = '(W/)?"[\\u0021\\u0023-\\u007e]*"'
TAG_LIST_PATTERN = f"^\\s*(\\*|{_TAG}(\\s*,\\s*{_TAG})*)\\s*$"
TAG_LIST = {"pattern": TAG_LIST_PATTERN}
KeyParam = Annotated[
    str,
    Path(
        description="The key: 1 to 512 bytes of UTF-8, percent-encoded in the URL; no control "
        "characters and no '/'. A `{tag}` inside it chooses the Redis slot, as in Redis.",
        openapi_examples={
            "plain": {"summary": "A plain key", "value": "user:42"},
            "tagged": {"summary": "A key whose {tag} picks the slot", "value": "{user:42}:cart"},
        },
        # Documented, not checked here: the handlers check keys (the limit is in bytes of
        # UTF-8, which a schema cannot say) and answer invalid-key problems on both paths.
        json_schema_extra={"minLength": 1, "maxLength": 512, "pattern": KEY_PATTERN},
    ),
]
# Optional parameters give their examples in the description, not as OpenAPI examples: Swagger
# UI's "Try it out" fills an example in, and an If-Match or explain nobody asked for changes what
# the request does.
IfNoneMatch = Annotated[
    str | None,
    Header(
        description='`*` or entity-tags such as `"17"`: answer 304 when one matches.',
        json_schema_extra=TAG_LIST,
    ),
]
CacheControl = Annotated[
    str | None,
    Header(
        description="`max-stale=N` / `stale-if-error=N`: how stale a fallback tier's answer may be "
        "(capped by the server); `no-cache`: read the store and refresh the caches; "
        "`only-if-cached`: never read the store (504 when no cache tier has the key). "
        "For example `max-stale=5, stale-if-error=60`.",
    ),
]


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    """A handler's answer as a Starlette response, headers exactly as the handler made them."""
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


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
    400: schemas.BAD_PRECONDITION,
    404: schemas.NOT_FOUND,
    422: schemas.VALIDATION,
    503: schemas.UNAVAILABLE,
    504: schemas.NOT_CACHED,
}


@router.get(
    "/{key}",
    operation_id="getKey",
    summary="Read a key",
    response_class=Response,
    responses=READ_RESPONSES,
)
async def get_key(
    request: Request,
    key: KeyParam,
    if_none_match: IfNoneMatch = None,
    cache_control: CacheControl = None,
    explain: Annotated[
        bool,
        Query(
            description="Answer how a read of the key would be routed (slot, owner, replicas, "
            "breakers, tier order, whether a load is in flight) instead of its value.",
        ),
    ] = False,
) -> Response:
    """Answer from the fastest tier that can answer correctly; `Cache-Status` says which."""
    if explain:
        return answer(*handlers.explain(gateway_of(request), request.scope))
    return answer(*await handlers.read(gateway_of(request), request.scope))


@router.head(
    "/{key}",
    operation_id="headKey",
    summary="Read a key's headers",
    response_class=Response,
    responses=READ_RESPONSES,
)
async def head_key(
    request: Request,
    key: KeyParam,
    if_none_match: IfNoneMatch = None,
    cache_control: CacheControl = None,
) -> Response:
    """As GET, without the body."""
    return answer(*await handlers.read(gateway_of(request), request.scope))


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
            "required": True,
            "description": "The value: any bytes, at most 1 MiB by default. "
            "Its Content-Type is kept.",
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
    request: Request,
    key: KeyParam,
    ttl: Annotated[
        int | None,
        Query(
            ge=1,
            description="Seconds until the entry expires (1 s to 30 days by default), "
            "for example `3600`.",
            json_schema_extra={"maximum": 30 * 86400},
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
            json_schema_extra={"pattern": "^\\s*\\*\\s*$"},
        ),
    ] = None,
) -> Response:
    """Durable before acknowledged: 2xx only after the store committed."""
    return answer(*await handlers.put(gateway_of(request), request.scope, request.stream()))


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
    request: Request,
    key: KeyParam,
    if_match: Annotated[
        str | None,
        Header(
            description='Delete only if the version is `"N"`.',
            json_schema_extra=TAG_LIST,
        ),
    ] = None,
) -> Response:
    """Durable before acknowledged; no tier serves the key afterwards."""
    return answer(*await handlers.delete(gateway_of(request), request.scope))


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
async def invalidate_key(request: Request, key: KeyParam) -> Response:
    """Until a fresh fill from the store, no tier serves an older copy of the key."""
    return answer(*await handlers.invalidate(gateway_of(request), request.scope))


@router.api_route(
    "/{key}/{rest:path}",
    methods=["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"],
    include_in_schema=False,
)
async def no_such_key_route(request: Request) -> Response:
    """Paths under /v1/keys that no route matched: a key with an encoded '/' gets its 422."""
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    key_from_raw_path(raw_path, max_bytes=gateway_of(request).settings.limits.max_key_bytes)
    raise StarletteHTTPException(status_code=404, detail="Not Found")
