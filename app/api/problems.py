"""The one place where errors become HTTP answers: RFC 9457 ``application/problem+json``.

Every problem has a ``type`` (a relative URI under ``/problems/`` that the gateway itself
documents, or ``about:blank`` for plain HTTP errors), ``title``, ``status`` and ``detail``; none
carries a stack trace, a value, or a secret.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.errors import (
    AuthUnavailableError,
    CachegwError,
    ForbiddenError,
    HeadersTooLargeError,
    InvalidCacheControlError,
    InvalidKeyError,
    InvalidPreconditionError,
    InvalidTtlError,
    KeyNotFoundError,
    NoAnswerError,
    NotCachedError,
    RateLimitedError,
    StoreConflictError,
    StoreUnavailableError,
    TargetTooLongError,
    TierError,
    UnauthenticatedError,
    UnsupportedMediaTypeError,
    ValueTooLargeError,
    WriteOutcomeUnknownError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    slug: str
    status: int
    title: str
    explanation: str

    @property
    def uri(self) -> str:
        return f"/problems/{self.slug}"


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        ProblemType("invalid-key", 422, "Invalid key",
                    "The key is empty, longer than the byte limit in UTF-8, or has a control "
                    "character or '/'."),
        ProblemType("invalid-ttl", 422, "Invalid ttl",
                    "The ttl query parameter must be a whole number of seconds within the limits."),
        ProblemType("invalid-request", 422, "Invalid request",
                    "A parameter or header failed validation; see errors for each one."),
        ProblemType("invalid-precondition", 400, "Invalid precondition header",
                    "If-Match / If-None-Match must be * or a list of entity-tags such as \"42\"."),
        ProblemType("invalid-cache-control", 400, "Invalid Cache-Control",
                    "max-stale, stale-if-error and max-age take a whole number of seconds."),
        ProblemType("headers-too-large", 431, "Request headers too large",
                    "The request's headers together are over the limit; nothing was read."),
        ProblemType("target-too-long", 414, "URI too long",
                    "The request's path and query string are over the limit."),
        ProblemType("unsupported-media-type", 415, "Unsupported media type",
                    "Content-Type must be a media type such as application/json."),
        ProblemType("value-too-large", 413, "Value too large",
                    "The body is larger than the value size limit; it was not read whole."),
        ProblemType("key-not-found", 404, "Key not found",
                    "The authoritative store has no live entry for this key."),
        ProblemType("precondition-failed", 412, "Precondition failed",
                    "If-Match or If-None-Match did not hold against the current version."),
        ProblemType("store-unavailable", 503, "Store unavailable",
                    "The authoritative store could not answer or commit; nothing was changed. "
                    "Retry after the time in Retry-After."),
        ProblemType("write-outcome-unknown", 503, "Write outcome unknown",
                    "The write reached the store but its reply did not come in time: it may have "
                    "committed, or not. Read the key with Cache-Control: no-cache (its ETag says "
                    "which version is current) before you retry a conditional write."),
        ProblemType("not-cached", 504, "Not cached",
                    "only-if-cached was asked and no cache tier holds the key within policy."),
        ProblemType("no-answer", 503, "No tier could answer",
                    "No cache tier could answer within policy and the store could not either."),
        ProblemType("unauthenticated", 401, "Unauthenticated",
                    "Send a valid API key: Authorization: Bearer cg_<prefix>_<secret>."),
        ProblemType("auth-unavailable", 503, "Authentication unavailable",
                    "The gateway cannot read its API keys from the store right now, so it cannot "
                    "tell whether this key is valid. Retry after Retry-After; nothing was read "
                    "or written."),
        ProblemType("forbidden", 403, "Forbidden",
                    "The API key is valid but lacks the scope (read, write, admin) this needs."),
        ProblemType("rate-limited", 429, "Too many requests",
                    "The API key is over its request rate; retry after Retry-After seconds."),
        ProblemType("internal-error", 500, "Internal error",
                    "The gateway failed unexpectedly; the failure was logged."),
    )
}  # fmt: skip


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


def typed_problem(
    slug: str, detail: str, *, instance: str | None = None, headers: dict[str, str] | None = None,
    extra: dict[str, object] | None = None,
) -> Response:  # fmt: skip
    kind = PROBLEM_TYPES[slug]
    return problem(
        kind.status, title=kind.title, detail=detail, type_uri=kind.uri, instance=instance,
        headers=headers, extra=extra,
    )  # fmt: skip


def _etag_headers(version: int | None) -> dict[str, str] | None:
    return None if version is None else {"ETag": f'"{version}"'}


def error_response(exc: Exception, *, instance: str | None = None) -> Response:
    """The problem for one of the gateway's errors (shared by FastAPI and the lean GET path)."""
    match exc:
        case UnauthenticatedError():
            return typed_problem(
                "unauthenticated", str(exc), instance=instance,
                headers={"WWW-Authenticate": 'Bearer realm="cachegw"'},
            )  # fmt: skip
        case AuthUnavailableError():
            return typed_problem(
                "auth-unavailable", str(exc), instance=instance, headers={"Retry-After": "1"}
            )
        case ForbiddenError():
            return typed_problem("forbidden", str(exc), instance=instance)
        case RateLimitedError():
            return typed_problem(
                "rate-limited", str(exc), instance=instance,
                headers={"Retry-After": str(exc.retry_after_s)},
            )  # fmt: skip
        case InvalidKeyError():
            return typed_problem("invalid-key", str(exc), instance=instance)
        case InvalidTtlError():
            return typed_problem("invalid-ttl", str(exc), instance=instance)
        case InvalidPreconditionError():
            return typed_problem("invalid-precondition", str(exc), instance=instance)
        case InvalidCacheControlError():
            return typed_problem("invalid-cache-control", str(exc), instance=instance)
        case HeadersTooLargeError():
            return typed_problem(
                "headers-too-large", str(exc), instance=instance, headers={"Connection": "close"}
            )
        case TargetTooLongError():
            return typed_problem("target-too-long", str(exc), instance=None)
        case UnsupportedMediaTypeError():
            return typed_problem("unsupported-media-type", str(exc), instance=instance)
        case ValueTooLargeError():
            return typed_problem(
                "value-too-large", str(exc), instance=instance,
                headers={"Connection": "close"}, extra={"limit_bytes": exc.limit_bytes},
            )  # fmt: skip
        case KeyNotFoundError():
            return typed_problem("key-not-found", "no live entry for this key", instance=instance)
        case StoreConflictError():
            return typed_problem(
                "precondition-failed", str(exc), instance=instance,
                headers=_etag_headers(exc.current_version),
            )  # fmt: skip
        case WriteOutcomeUnknownError():
            return typed_problem(
                "write-outcome-unknown", str(exc), instance=instance, headers={"Retry-After": "1"}
            )
        case StoreUnavailableError():
            return typed_problem(
                "store-unavailable", str(exc), instance=instance, headers={"Retry-After": "1"}
            )
        case NotCachedError():
            return typed_problem("not-cached", str(exc), instance=instance)
        case NoAnswerError():
            return typed_problem(
                "no-answer", str(exc), instance=instance,
                headers={"Retry-After": str(exc.retry_after_s)},
            )  # fmt: skip
        case TierError():
            return typed_problem(
                "no-answer", str(exc), instance=instance, headers={"Retry-After": "1"}
            )
    log.error("unexpected error", exc_info=exc)
    return typed_problem(
        "internal-error", "unexpected error; see the gateway's log", instance=instance
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_cachegw_error(request: Request, exc: Exception) -> Response:
        return error_response(exc, instance=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
            for err in errors
        )
        return typed_problem(
            "invalid-request", detail or "invalid request", instance=request.url.path,
            extra={"errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")}
                              for e in errors]},
        )  # fmt: skip

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
        headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else None
        detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(status, "HTTP error")
        return problem(
            status, title=title, detail=str(detail), instance=request.url.path, headers=headers
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return error_response(exc, instance=request.url.path)

    app.add_exception_handler(CachegwError, on_cachegw_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
