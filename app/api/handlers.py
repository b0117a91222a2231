"""The key operations as functions of the ASGI scope.

``dispatch.py`` calls them for every request under ``/v1/keys/``; the FastAPI routes in
``keys.py`` only document them. Each returns the status, the raw headers and the body; every
error is raised as one of the gateway's exceptions and mapped to a problem by
``problems.error_response``. Validation happens before anything is read or written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote

from starlette.types import Scope

from app.api import conditional
from app.api.conditional import TagList, none_match, parse_tag_list
from app.api.deps import PRINCIPAL
from app.api.http import (
    content_type_of,
    entry_headers,
    key_from_raw_path,
    read_limited,
    read_policy,
)
from app.auth import Principal
from app.codec import now_ms
from app.errors import InvalidMinVersionError, InvalidPreconditionError, InvalidTtlError
from app.gateway import Gateway
from app.router import ReadPolicy

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]

JSON = (b"content-type", b"application/json")


def header(scope: Scope, name: bytes) -> str | None:
    """A request header (its first occurrence), as text."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def precondition(scope: Scope, name: bytes) -> str | None:
    """If-Match or If-None-Match; an empty one is absent (RFC 9110 5.6.1: an empty list)."""
    value = header(scope, name)
    return value if value is not None and value.strip() else None


def _namespace(gateway: Gateway, scope: Scope) -> str:
    principal: Principal | None = scope.get(PRINCIPAL)
    return gateway.settings.auth.default_namespace if principal is None else principal.namespace


def _key(gateway: Gateway, scope: Scope) -> str:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    return key_from_raw_path(raw_path, max_bytes=gateway.settings.limits.max_key_bytes)


def _ttl(gateway: Gateway, scope: Scope) -> int | None:
    values = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True).get(
        "ttl", []
    )
    if not values:
        return None
    if len(values) > 1:
        raise InvalidTtlError(f"the query parameter ttl is given {len(values)} times")
    limits = gateway.settings.limits
    text = values[0].strip()
    if (
        not (text.isascii() and text.isdigit())
        or not limits.min_ttl_s <= int(text) <= limits.max_ttl_s
    ):
        raise InvalidTtlError(
            f"ttl must be a whole number of seconds from {limits.min_ttl_s} to {limits.max_ttl_s}"
        )
    return int(text)


def if_match_of(value: str | None) -> tuple[list[int] | None, bool]:
    """If-Match as (versions to match, or None; whether it is ``*``)."""
    if value is None:
        return None, False
    tags = parse_tag_list(value, name="If-Match")
    return (None, True) if tags.any else (tags.versions(strong_only=True), False)


def _read_request(gateway: Gateway, scope: Scope) -> tuple[str, TagList | None, ReadPolicy]:
    """A read's key, If-None-Match and Cache-Control policy, each validated."""
    key = _key(gateway, scope)
    if_none_match = cache_control = min_version = None
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            if_none_match = value.decode("latin-1") if value.strip() else None
        elif name == b"cache-control":
            cache_control = value.decode("latin-1")
        elif name == b"cachegw-min-version":
            min_version = value.decode("latin-1")
    tags = None if if_none_match is None else parse_tag_list(if_none_match, name="If-None-Match")
    policy = policy_of(gateway, cache_control)
    if min_version is not None:
        policy = dataclasses.replace(policy, min_version=parse_min_version(min_version))
    return key, tags, policy


def policy_of(gateway: Gateway, cache_control: str | None) -> ReadPolicy:
    """The read policy of a request's Cache-Control (the router's default without one)."""
    default = gateway.router.default_policy
    if cache_control is None:
        return default
    return read_policy(cache_control, staleness=gateway.settings.staleness, default=default)


MAX_VERSION_DIGITS = 19  # a Postgres bigint has at most 19 digits


def parse_min_version(text: str) -> int:
    """Cachegw-Min-Version: the digits of an ETag, bare or quoted (``42`` or ``"42"``); 0 asks
    for nothing. A number no version reaches is not malformed: the store is older (412)."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_VERSION_DIGITS):
        raise InvalidMinVersionError(
            f"Cachegw-Min-Version must be a version of 1 to {MAX_VERSION_DIGITS} digits, such as 42"
        )
    return int(value)


async def read(gateway: Gateway, scope: Scope) -> Answer:
    """GET and HEAD of a key."""
    key, tags, policy = _read_request(gateway, scope)
    fallback = gateway.router
    result = await fallback.get(fallback.ref(_namespace(gateway, scope), key), policy)
    entry = result.entry
    headers = entry_headers(result, now_ms())
    if tags is not None and none_match(tags, entry.version):
        return 304, headers, b""
    headers.append((b"content-type", entry.content_type.encode("latin-1")))
    headers.append((b"content-length", b"%d" % len(entry.value)))
    return 200, headers, b"" if scope["method"] == "HEAD" else entry.value


async def put(gateway: Gateway, scope: Scope, body: AsyncIterator[bytes]) -> Answer:
    """PUT of a key: 2xx only after the store committed."""
    key = _key(gateway, scope)
    ttl = _ttl(gateway, scope)
    if_match, if_exists = if_match_of(precondition(scope, b"if-match"))
    create_only = False
    if_none_match = precondition(scope, b"if-none-match")
    if if_none_match is not None:
        if not parse_tag_list(if_none_match, name="If-None-Match").any:
            raise InvalidPreconditionError("on PUT, If-None-Match supports only *")
        create_only = True
    content_type = content_type_of(header(scope, b"content-type"))
    limit = gateway.settings.limits.max_value_bytes
    value = await read_limited(body, content_length=header(scope, b"content-length"), limit=limit)
    fallback = gateway.router
    result = await fallback.put(
        fallback.ref(_namespace(gateway, scope), key), value,
        content_type=content_type, ttl_s=ttl,
        if_match=if_match, if_exists=if_exists, if_none_match=create_only,
    )  # fmt: skip
    status, headers, content = _written(key, result.version, result.expires_at_ms)
    if result.created:
        headers.append((b"location", b"/v1/keys/" + quote(key, safe="").encode()))
        status = 201
    return status, headers, content


async def delete(gateway: Gateway, scope: Scope) -> Answer:
    """DELETE of a key: 204 once the store committed; 404 when absent (412 with If-Match)."""
    key = _key(gateway, scope)
    if_match, if_exists = if_match_of(precondition(scope, b"if-match"))
    fallback = gateway.router
    await fallback.delete(
        fallback.ref(_namespace(gateway, scope), key), if_match=if_match, if_exists=if_exists
    )
    return 204, [], b""


async def invalidate(gateway: Gateway, scope: Scope) -> Answer:
    """POST /v1/keys/{key}/invalidate: every cache tier drops the key; the store keeps it."""
    key = _key(gateway, scope)
    fallback = gateway.router
    await fallback.invalidate(fallback.ref(_namespace(gateway, scope), key))
    return 204, [], b""


async def touch(gateway: Gateway, scope: Scope) -> Answer:
    """POST /v1/keys/{key}/touch?ttl=N: a new TTL, the value not sent again; the version (and
    so the ETag) stays, since the value and its content type did not change."""
    key = _key(gateway, scope)
    ttl = _ttl(gateway, scope)
    if ttl is None:
        limits = gateway.settings.limits
        raise InvalidTtlError(
            f"touch needs ttl, a whole number of seconds from {limits.min_ttl_s} to "
            f"{limits.max_ttl_s}"
        )
    if_match, if_exists = if_match_of(precondition(scope, b"if-match"))
    fallback = gateway.router
    result = await fallback.touch(
        fallback.ref(_namespace(gateway, scope), key), ttl_s=ttl,
        if_match=if_match, if_exists=if_exists,
    )  # fmt: skip
    return _written(key, result.version, result.expires_at_ms)


def _written(key: str, version: int, expires_at_ms: int | None) -> Answer:
    """A write's answer: the key, its version and ETag, its expiry (ISO 8601, or null)."""
    expires_at = (
        None
        if expires_at_ms is None
        else datetime.fromtimestamp(expires_at_ms / 1000, tz=UTC).isoformat()
    )
    etag = conditional.etag(version)
    document = {"key": key, "version": version, "etag": etag, "expires_at": expires_at}
    content = json.dumps(document, ensure_ascii=False).encode()
    headers: Headers = [JSON, (b"content-length", b"%d" % len(content)), (b"etag", etag.encode())]
    return 200, headers, content


def explain(gateway: Gateway, scope: Scope) -> Answer:
    """GET /v1/keys/{key}?explain=1: how a read of the key would be routed (never its value).

    The request is validated as a read would be: a malformed header is refused here too.
    """
    key, _, _ = _read_request(gateway, scope)
    fallback = gateway.router
    found = fallback.explain(fallback.ref(_namespace(gateway, scope), key))
    local = found.local_copy
    document = {
        "key": key,
        "namespace": found.namespace,
        "redis_key_slot": found.slot,
        "owner": found.owner,
        "replicas": list(found.replicas),
        "breakers": dict(found.breakers),
        "tier_order": list(found.tier_order),
        "load_in_flight": found.load_in_flight,
        "newest_announced_seq": found.newest_announced_seq,
        "local_copy": None
        if local is None
        else {"seq": local.seq, "behind_s": round(local.behind_s, 3)},
        "degraded_mode": found.degraded_mode,
        "deadline_ms": found.deadline_ms,
    }
    content = json.dumps(document, ensure_ascii=False).encode()
    return 200, [JSON, (b"content-length", b"%d" % len(content))], content
