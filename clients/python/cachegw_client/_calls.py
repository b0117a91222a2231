"""What each operation sends and how its answer is read: the one implementation behind both
clients, with no I/O.

A builder (``get``, ``put``, ...) validates its arguments and returns a ``Call``: the request's
method, path, headers, query and body, how safe it is to repeat (``Safety``), and the parser of
its answer. ``Client`` and ``AsyncClient`` only send the request, ask ``Attempts`` whether to try
again, and hand the final answer to ``Call.parse``, which returns the result or raises the
error the answer names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from urllib.parse import quote

import httpx

from cachegw_client import _batch
from cachegw_client._batch import BatchOp, GetOp, OpResult
from cachegw_client._errors import UnexpectedResponseError, error_from_response
from cachegw_client._etags import ETag, tag, version_of
from cachegw_client._models import CacheStatus, Entry, WriteResult
from cachegw_client._retry import Safety

T = TypeVar("T")
VERSION = "0.1.0"
USER_AGENT = f"cachegw-client/{VERSION}"
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One operation's request, how far it may be repeated, and how its answer is read."""

    method: str
    path: str
    safety: Safety
    parse: Callable[[httpx.Response], T]
    headers: Headers = ()
    params: tuple[tuple[str, str], ...] = ()
    content: bytes | None = None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The request, with the client's base URL and default headers (built once: a retry
        sends the same one again)."""
        return http.build_request(
            self.method, self.path, headers=list(self.headers),
            params=list(self.params) or None, content=self.content,
        )  # fmt: skip


def default_headers(api_key: str | None) -> dict[str, str]:
    """Sent with every request: the API key as a bearer token (the only scheme the gateway
    accepts), and who is calling."""
    headers = {"User-Agent": USER_AGENT}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def cache_control(
    *, max_stale_s: int | None, stale_if_error_s: int | None, no_cache: bool, only_if_cached: bool
) -> str | None:
    """A read's request directives, as the gateway takes them (the server caps the numbers)."""
    directives = []
    if no_cache:
        directives.append("no-cache")
    if only_if_cached:
        directives.append("only-if-cached")
    if max_stale_s is not None:
        directives.append(f"max-stale={_seconds('max_stale_s', max_stale_s)}")
    if stale_if_error_s is not None:
        directives.append(f"stale-if-error={_seconds('stale_if_error_s', stale_if_error_s)}")
    return ", ".join(directives) or None


def get(
    key: str,
    *,
    min_version: int | str | None = None,
    max_stale_s: int | None = None,
    stale_if_error_s: int | None = None,
    no_cache: bool = False,
    only_if_cached: bool = False,
) -> Call[Entry]:
    headers: list[tuple[str, str]] = []
    directives = cache_control(
        max_stale_s=max_stale_s, stale_if_error_s=stale_if_error_s, no_cache=no_cache,
        only_if_cached=only_if_cached,
    )  # fmt: skip
    if directives is not None:
        headers.append(("Cache-Control", directives))
    if min_version is not None:
        headers.append(("Cachegw-Min-Version", _min_version(min_version)))
    return Call("GET", _path(key), Safety.READ, lambda r: _entry(key, r), tuple(headers))


def put(
    key: str,
    value: bytes,
    *,
    ttl_s: int | None = None,
    content_type: str | None = None,
    if_match: ETag | None = None,
    if_none_match: str | None = None,
) -> Call[WriteResult]:
    headers: list[tuple[str, str]] = []
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if if_match is not None:
        headers.append(("If-Match", tag(if_match)))
    if if_none_match is not None:
        headers.append(("If-None-Match", if_none_match))
    return Call(
        "PUT", _path(key), Safety.IDEMPOTENT, lambda r: _written(r, 200, 201), tuple(headers),
        _ttl(ttl_s), bytes(value),
    )  # fmt: skip


def delete(key: str, *, if_match: ETag | None = None) -> Call[None]:
    return Call("DELETE", _path(key), Safety.IDEMPOTENT, _no_content, _if_match(if_match))


def touch(key: str, ttl_s: int, *, if_match: ETag | None = None) -> Call[WriteResult]:
    return Call(
        "POST", _path(key) + "/touch", Safety.ONCE, lambda r: _written(r, 200),
        _if_match(if_match), _ttl(ttl_s),
    )  # fmt: skip


def invalidate(key: str) -> Call[None]:
    return Call("POST", _path(key) + "/invalidate", Safety.ONCE, _no_content)


def batch(
    ops: Sequence[BatchOp],
    *,
    max_stale_s: int | None = None,
    stale_if_error_s: int | None = None,
    no_cache: bool = False,
    only_if_cached: bool = False,
) -> Call[list[OpResult]]:
    ops = tuple(ops)
    body = json.dumps(_batch.encode(ops), ensure_ascii=False).encode()
    headers = [("Content-Type", "application/json")]
    directives = cache_control(
        max_stale_s=max_stale_s, stale_if_error_s=stale_if_error_s, no_cache=no_cache,
        only_if_cached=only_if_cached,
    )  # fmt: skip
    if directives is not None:
        headers.append(("Cache-Control", directives))
    safety = Safety.READ if all(isinstance(op, GetOp) for op in ops) else Safety.ONCE

    def parse(response: httpx.Response) -> list[OpResult]:
        _expect(response, 200)
        return _batch.decode(ops, _json(response))

    return Call("POST", "/v1/batch", safety, parse, tuple(headers), content=body)


def _path(key: str) -> str:
    if not key:
        raise ValueError("the key is empty")
    return "/v1/keys/" + quote(key, safe="")


def _seconds(name: str, value: int) -> int:
    if isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a whole number of seconds, not {value!r}")
    return value


def _ttl(ttl_s: int | None) -> tuple[tuple[str, str], ...]:
    return () if ttl_s is None else (("ttl", str(_seconds("ttl_s", ttl_s))),)


def _if_match(if_match: ETag | None) -> Headers:
    return () if if_match is None else (("If-Match", tag(if_match)),)


def _min_version(value: int | str) -> str:
    if isinstance(value, int):
        if isinstance(value, bool) or value < 0:
            raise ValueError(f"min_version must be a version, not {value!r}")
        return str(value)
    return value  # an ETag's digits, quoted or not: the gateway parses it


def _expect(response: httpx.Response, *statuses: int) -> None:
    """Nothing when the status is one the call answers; else the error it names."""
    status = response.status_code
    if status in statuses:
        return
    if status >= 400:
        raise error_from_response(response)
    raise UnexpectedResponseError(
        f"{status} {response.reason_phrase}: not an answer of this operation", status=status
    )


def _json(response: httpx.Response) -> object:
    try:
        document: object = response.json()
    except ValueError as exc:
        raise UnexpectedResponseError(
            f"the answer is not JSON: {exc}", status=response.status_code
        ) from exc
    return document


def _etag(response: httpx.Response) -> tuple[str, int]:
    etag = response.headers.get("etag")
    version = None if etag is None else version_of(etag)
    if etag is None or version is None:
        raise UnexpectedResponseError(
            f"the answer has no gateway ETag (got {etag!r})", status=response.status_code
        )
    return etag, version


def _entry(key: str, response: httpx.Response) -> Entry:
    _expect(response, 200)
    etag, version = _etag(response)
    age = response.headers.get("age", "0").strip()
    max_age = _MAX_AGE.search(response.headers.get("cache-control", ""))
    return Entry(
        key=key, value=response.content, etag=etag, version=version,
        content_type=response.headers.get("content-type", "application/octet-stream"),
        cache_status=CacheStatus.parse(response.headers.get("cache-status", "")),
        age_s=int(age) if age.isascii() and age.isdigit() else 0,
        max_age_s=None if max_age is None else int(max_age.group(1)),
        request_id=response.headers.get("x-request-id"),
    )  # fmt: skip


def _written(response: httpx.Response, *statuses: int) -> WriteResult:
    _expect(response, *statuses)
    document = _json(response)
    etag, version = _etag(response)
    if not isinstance(document, dict) or not isinstance(document.get("key"), str):
        raise UnexpectedResponseError("a write's answer has no key", status=response.status_code)
    expires_at = document.get("expires_at")
    try:
        expiry = datetime.fromisoformat(expires_at) if isinstance(expires_at, str) else None
    except ValueError as exc:
        raise UnexpectedResponseError(
            f"a write's expires_at is not ISO 8601: {exc}", status=response.status_code
        ) from exc
    return WriteResult(
        key=document["key"],
        version=version,
        etag=etag,
        expires_at=expiry,
        created=response.status_code == 201,
    )


def _no_content(response: httpx.Response) -> None:
    _expect(response, 204)
