"""``/v1/keys/{key}``: get, head, put, delete, invalidate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, Path, Query, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api import schemas
from app.api.conditional import etag, none_match, parse_tag_list
from app.api.http import (
    content_type_of,
    entry_headers,
    key_from_raw_path,
    read_limited,
    read_policy,
)
from app.errors import InvalidPreconditionError, InvalidTtlError
from app.gateway import Gateway
from app.store import now_ms

router = APIRouter(prefix="/v1/keys", tags=["keys"])

KeyParam = Annotated[
    str,
    Path(
        description="The key: 1 to 512 bytes of UTF-8, percent-encoded in the URL; no control "
        "characters and no '/'. A `{tag}` inside it chooses the Redis slot, as in Redis.",
        examples=["user:42"],
    ),
]
IfNoneMatch = Annotated[
    str | None,
    Header(description='`*` or entity-tags such as `"17"`: answer 304 when one matches.'),
]
CacheControl = Annotated[
    str | None,
    Header(
        description="`max-stale=N` / `stale-if-error=N`: how stale a fallback tier's answer may be "
        "(capped by the server); `no-cache`: read the store and refresh the caches; "
        "`only-if-cached`: never read the store (504 when no cache tier has the key).",
        examples=["max-stale=5, stale-if-error=60"],
    ),
]


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _key(request: Request, gateway: Gateway) -> str:
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    return key_from_raw_path(raw_path, max_bytes=gateway.settings.limits.max_key_bytes)


def _single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidTtlError(f"the query parameter {name} is given {len(values)} times")
    return values[0] if values else None


async def _read(request: Request, if_none_match: str | None, *, head: bool) -> Response:
    gateway = gateway_of(request)
    key = _key(request, gateway)
    tags = None if if_none_match is None else parse_tag_list(if_none_match, name="If-None-Match")
    policy = read_policy(
        request.headers.get("cache-control"),
        staleness=gateway.settings.staleness,
        default=gateway.router.default_policy,
    )
    result = await gateway.router.get(gateway.router.ref(gateway.settings.namespace, key), policy)
    headers = entry_headers(result, now_ms())
    if tags is not None and none_match(tags, result.entry.version):
        return Response(status_code=304, headers=headers)
    headers["Content-Type"] = result.entry.content_type
    if head:
        headers["Content-Length"] = str(len(result.entry.value))
        return Response(status_code=200, headers=headers)
    return Response(result.entry.value, status_code=200, headers=headers)


READ_OK = {
    "description": "The stored bytes, with the Content-Type they were stored with.",
    "content": {"*/*": schemas.BINARY},
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
    400: schemas.problem_response("A precondition or Cache-Control header is malformed."),
    404: schemas.NOT_FOUND,
    422: schemas.VALIDATION,
    503: schemas.UNAVAILABLE,
    504: schemas.problem_response("only-if-cached, and no cache tier holds the key."),
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
) -> Response:
    """Answer from the fastest tier that can answer correctly; `Cache-Status` says which."""
    return await _read(request, if_none_match, head=False)


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
    return await _read(request, if_none_match, head=True)


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
        413: schemas.problem_response("The body is larger than the value size limit."),
        415: schemas.problem_response("Content-Type is not a valid media type."),
        422: schemas.VALIDATION,
        503: schemas.UNAVAILABLE,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The value: any bytes, at most 1 MiB by default. "
            "Its Content-Type is kept.",
            "content": {"*/*": schemas.BINARY},
        }
    },
)
async def put_key(
    request: Request,
    key: KeyParam,
    ttl: Annotated[
        int | None,
        Query(ge=1, description="Seconds until the entry expires (1 s to 30 days by default)."),
    ] = None,
    if_match: Annotated[
        str | None,
        Header(description='Compare-and-set: write only if the version is `"N"` (or `*`: exists).'),
    ] = None,
    if_none_match: Annotated[
        str | None, Header(description="`*`: create only; 412 if the key exists.")
    ] = None,
) -> Response:
    """Durable before acknowledged: 2xx only after the store committed."""
    gateway = gateway_of(request)
    limits = gateway.settings.limits
    name = _key(request, gateway)
    _single(request, "ttl")
    if ttl is not None and not limits.min_ttl_s <= ttl <= limits.max_ttl_s:
        raise InvalidTtlError(f"ttl must be from {limits.min_ttl_s} to {limits.max_ttl_s} seconds")
    match_tags = None if if_match is None else parse_tag_list(if_match, name="If-Match")
    create_only = False
    if if_none_match is not None:
        if not parse_tag_list(if_none_match, name="If-None-Match").any:
            raise InvalidPreconditionError("on PUT, If-None-Match supports only *")
        create_only = True
    content_type = content_type_of(request.headers.get("content-type"))
    value = await read_limited(
        request.stream(),
        content_length=request.headers.get("content-length"),
        limit=limits.max_value_bytes,
    )
    result = await gateway.router.put(
        gateway.router.ref(gateway.settings.namespace, name),
        value,
        content_type=content_type,
        ttl_s=ttl,
        if_match=None
        if match_tags is None or match_tags.any
        else match_tags.versions(strong_only=True),
        if_exists=match_tags is not None and match_tags.any,
        if_none_match=create_only,
    )
    expires_at = (
        None
        if result.expires_at_ms is None
        else datetime.fromtimestamp(result.expires_at_ms / 1000, tz=UTC).isoformat()
    )
    body = {
        "key": name,
        "version": result.version,
        "etag": etag(result.version),
        "expires_at": expires_at,
    }
    headers = {"ETag": etag(result.version)}
    if result.created:
        headers["Location"] = "/v1/keys/" + quote(name, safe="")
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=201 if result.created else 200,
        media_type="application/json",
        headers=headers,
    )


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
        str | None, Header(description='Delete only if the version is `"N"`.')
    ] = None,
) -> Response:
    """Durable before acknowledged; no tier serves the key afterwards."""
    gateway = gateway_of(request)
    name = _key(request, gateway)
    tags = None if if_match is None else parse_tag_list(if_match, name="If-Match")
    await gateway.router.delete(
        gateway.router.ref(gateway.settings.namespace, name),
        if_match=None if tags is None or tags.any else tags.versions(strong_only=True),
    )
    return Response(status_code=204)


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
    gateway = gateway_of(request)
    name = _key(request, gateway)
    await gateway.router.invalidate(gateway.router.ref(gateway.settings.namespace, name))
    return Response(status_code=204)


@router.api_route(
    "/{key}/{rest:path}",
    methods=["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"],
    include_in_schema=False,
)
async def no_such_key_route(request: Request) -> Response:
    """Paths under /v1/keys that no route matched: a key with an encoded '/' gets its 422."""
    _key(request, gateway_of(request))
    raise StarletteHTTPException(status_code=404, detail="Not Found")
