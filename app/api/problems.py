"""The one place where errors become HTTP answers: RFC 9457 ``application/problem+json``.

Every problem has a ``type`` (a relative URI under ``/problems/`` that the gateway itself
documents, or ``about:blank`` for plain HTTP errors), ``title``, ``status`` and ``detail``; none
carries a stack trace, a value, or a secret.

``PROBLEMS`` maps an exception class to its answer and is looked up along the exception's MRO,
as starlette looks up exception handlers: the most specific class listed wins, so a subclass
needs an entry only where its answer differs. An exception no class of which is listed (a bug)
is a logged 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app import errors
from app.api.conditional import etag

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    """One documented problem type, served as text at its ``uri``."""

    slug: str
    status: int
    title: str
    explanation: str

    @property
    def uri(self) -> str:
        return f"/problems/{self.slug}"


def _none(_exc: Any) -> None:
    return None


def _message(exc: Exception) -> str:
    return str(exc)


@dataclass(frozen=True, slots=True)
class Answer:
    """How one exception class is answered: its problem type, and what the exception adds."""

    kind: ProblemType
    headers: Callable[[Any], dict[str, str] | None] = _none
    extra: Callable[[Any], dict[str, object] | None] = _none
    detail: Callable[[Any], str] = field(default=_message)
    with_instance: bool = True


def _kind(slug: str, status: int, title: str, explanation: str) -> ProblemType:
    return ProblemType(slug, status, title, explanation)


def _retry_after(exc: Any) -> dict[str, str]:
    return {"Retry-After": str(getattr(exc, "retry_after_s", 1))}


def _retry_in_1s(_exc: Any) -> dict[str, str]:
    return {"Retry-After": "1"}


def _close(_exc: Any) -> dict[str, str]:
    return {"Connection": "close"}


def _current_etag(
    exc: errors.StoreConflictError | errors.VersionUnavailableError,
) -> dict[str, str] | None:
    return None if exc.current_version is None else {"ETag": etag(exc.current_version)}


def _limit(exc: errors.ValueTooLargeError) -> dict[str, object] | None:
    return None if exc.limit_bytes is None else {"limit_bytes": exc.limit_bytes}


def _validation_errors(exc: Exception) -> list[dict[str, Any]]:
    return list(exc.errors()) if isinstance(exc, RequestValidationError) else []


def _validation_detail(exc: Exception) -> str:
    detail = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
        for err in _validation_errors(exc)
    )
    return detail or "invalid request"


def _validation_extra(exc: Exception) -> dict[str, object]:
    return {
        "errors": [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
            for e in _validation_errors(exc)
        ]
    }


NO_ANSWER = _kind(
    "no-answer",
    503,
    "No tier could answer",
    "No cache tier could answer within policy and the store could not either.",
)
INTERNAL = _kind(
    "internal-error",
    500,
    "Internal error",
    "The gateway failed unexpectedly; the failure was logged.",
)

PROBLEMS: dict[type[Exception], Answer] = {
    errors.InvalidKeyError: Answer(_kind(
        "invalid-key", 422, "Invalid key",
        "The key is empty, longer than the byte limit in UTF-8, or has a control character or '/'.",
    )),
    errors.InvalidTtlError: Answer(_kind(
        "invalid-ttl", 422, "Invalid ttl",
        "The ttl query parameter must be a whole number of seconds within the limits.",
    )),
    RequestValidationError: Answer(_kind(
        "invalid-request", 422, "Invalid request",
        "A parameter or header failed validation; see errors for each one.",
    ), detail=_validation_detail, extra=_validation_extra),
    errors.InvalidPreconditionError: Answer(_kind(
        "invalid-precondition", 400, "Invalid precondition header",
        "If-Match / If-None-Match must be * or a list of entity-tags such as \"42\".",
    )),
    errors.InvalidMinVersionError: Answer(_kind(
        "invalid-min-version", 400, "Invalid Cachegw-Min-Version",
        "Cachegw-Min-Version must be a version number: the digits of an ETag such as \"42\", "
        "with or without its quotes.",
    )),
    errors.InvalidBatchError: Answer(_kind(
        "invalid-batch", 400, "Invalid batch",
        "The body of POST /v1/batch must be JSON of the form {\"ops\": [...]}, each op one of "
        "get, put, delete, touch, invalidate with its fields, at most the limit of ops; nothing "
        "was read or written.",
    )),
    errors.InvalidCacheControlError: Answer(_kind(
        "invalid-cache-control", 400, "Invalid Cache-Control",
        "max-stale, stale-if-error and max-age take a whole number of seconds.",
    )),
    errors.HeadersTooLargeError: Answer(_kind(
        "headers-too-large", 431, "Request headers too large",
        "The request's headers together are over the limit; nothing was read.",
    ), headers=_close),
    errors.TargetTooLongError: Answer(_kind(
        "target-too-long", 414, "URI too long",
        "The request's path and query string are over the limit.",
    ), with_instance=False),
    errors.UnsupportedMediaTypeError: Answer(_kind(
        "unsupported-media-type", 415, "Unsupported media type",
        "Content-Type must be a media type such as application/json.",
    )),
    errors.ValueTooLargeError: Answer(_kind(
        "value-too-large", 413, "Value too large",
        "The body is larger than the value size limit; it was not read whole.",
    ), headers=_close, extra=_limit),
    errors.KeyNotFoundError: Answer(_kind(
        "key-not-found", 404, "Key not found",
        "The authoritative store has no live entry for this key.",
    ), detail=lambda _exc: "no live entry for this key"),
    errors.StoreConflictError: Answer(_kind(
        "precondition-failed", 412, "Precondition failed",
        "If-Match or If-None-Match did not hold against the current version.",
    ), headers=_current_etag),
    errors.StoreError: Answer(_kind(
        "store-unavailable", 503, "Store unavailable",
        "The authoritative store could not answer or commit; nothing was changed. "
        "Retry after the time in Retry-After.",
    ), headers=_retry_in_1s),
    errors.WriteOutcomeUnknownError: Answer(_kind(
        "write-outcome-unknown", 503, "Write outcome unknown",
        "The write reached the store but its reply did not come in time: it may have "
        "committed, or not. Read the key with Cache-Control: no-cache (its ETag says which "
        "version is current) before you retry a conditional write.",
    ), headers=_retry_in_1s),
    errors.VersionUnavailableError: Answer(_kind(
        "min-version-unavailable", 412, "Version not available",
        "The read asked for Cachegw-Min-Version N and the authoritative store's entry is older "
        "than N (N came from elsewhere, or was made up). ETag names the store's version.",
    ), headers=_current_etag),
    errors.NotCachedError: Answer(_kind(
        "not-cached", 504, "Not cached",
        "only-if-cached was asked and no cache tier holds the key within policy.",
    )),
    errors.NoAnswerError: Answer(NO_ANSWER, headers=_retry_after),
    errors.TierError: Answer(NO_ANSWER, headers=_retry_in_1s),
    errors.UnauthenticatedError: Answer(_kind(
        "unauthenticated", 401, "Unauthenticated",
        "Send a valid API key: Authorization: Bearer cg_<prefix>_<secret>.",
    ), headers=lambda _exc: {"WWW-Authenticate": 'Bearer realm="cachegw"'}),
    errors.AuthUnavailableError: Answer(_kind(
        "auth-unavailable", 503, "Authentication unavailable",
        "The gateway cannot read its API keys from the store right now, so it cannot tell "
        "whether this key is valid. Retry after Retry-After; nothing was read or written.",
    ), headers=_retry_in_1s),
    errors.ForbiddenError: Answer(_kind(
        "forbidden", 403, "Forbidden",
        "The API key is valid but lacks the scope (read, write, admin) this needs.",
    )),
    errors.RateLimitedError: Answer(_kind(
        "rate-limited", 429, "Too many requests",
        "The API key is over its request rate; retry after Retry-After seconds.",
    ), headers=_retry_after),
    Exception: Answer(INTERNAL, detail=lambda _exc: "unexpected error; see the gateway's log"),
}  # fmt: skip

# Every documented type by slug, for the pages at /problems/{slug}.
PROBLEM_TYPES: dict[str, ProblemType] = {a.kind.slug: a.kind for a in PROBLEMS.values()}


def answer_for(exc: Exception) -> Answer:
    """The answer of the most specific class of ``exc`` that the table lists."""
    for cls in type(exc).__mro__:
        found = PROBLEMS.get(cls)
        if found is not None:
            return found
    return PROBLEMS[Exception]


def problem(
    status: int,
    *,
    title: str,
    detail: str,
    type_uri: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> Response:
    body: dict[str, object] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def error_response(exc: Exception, *, instance: str | None = None) -> Response:
    """The problem answer for any exception; one no class of which is listed is logged."""
    found = answer_for(exc)
    if found.kind is INTERNAL:
        log.error("unexpected error", exc_info=exc)
    kind = found.kind
    return problem(
        kind.status, title=kind.title, detail=found.detail(exc), type_uri=kind.uri,
        instance=instance if found.with_instance else None, headers=found.headers(exc),
        extra=found.extra(exc),
    )  # fmt: skip


def problem_document(exc: Exception) -> tuple[dict[str, object], dict[str, str]]:
    """The problem body for ``exc`` (as ``error_response`` would send it, without an instance)
    and the headers it would carry: for one operation of a batch."""
    found = answer_for(exc)
    if found.kind is INTERNAL:
        log.error("unexpected error", exc_info=exc)
    kind = found.kind
    body: dict[str, object] = {
        "type": kind.uri, "title": kind.title, "status": kind.status, "detail": found.detail(exc),
    }  # fmt: skip
    body.update(found.extra(exc) or {})
    return body, found.headers(exc) or {}


def problem_page(slug: str) -> Response:
    """``/problems/{slug}``: what a problem type means, as text."""
    kind = PROBLEM_TYPES.get(slug)
    if kind is None:
        return problem(404, title="Not Found", detail="no such problem type")
    text = f"{kind.title} ({kind.status})\n\n{kind.explanation}\n"
    return Response(text, media_type="text/plain; charset=utf-8")


def http_error(
    status: int, *, instance: str | None, headers: dict[str, str] | None = None,
    detail: str | None = None,
) -> Response:  # fmt: skip
    """A plain HTTP error (no such route, method not allowed) as an ``about:blank`` problem."""
    title = {404: "Not Found", 405: "Method Not Allowed"}.get(status, "HTTP error")
    return problem(status, title=title, detail=detail or title, instance=instance, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, instance=request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
        headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else None
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
        return http_error(status, instance=request.url.path, headers=headers, detail=str(detail))

    app.add_exception_handler(errors.CachegwError, on_error)  # answered, not re-raised
    app.add_exception_handler(RequestValidationError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_error)

    @app.get("/problems/{slug}", include_in_schema=False)
    async def problem_type(slug: str) -> Response:
        return problem_page(slug)
