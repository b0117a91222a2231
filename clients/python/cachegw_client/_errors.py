"""The client's exceptions, drawn once, and how an error answer becomes one of them.

Every error answer of the gateway is an RFC 9457 ``application/problem+json`` body; the exception
carries its fields (``status``, ``type``, ``title``, ``detail``, ``instance``) and the whole
``problem``. A body that is not a problem (a proxy's page) still gives an exception of the class
its status names, with ``type`` ``about:blank`` and the reason phrase as ``title``.

    CachegwError                        base of everything the client raises
     ├─ TransportError                  no answer came (connect, read, timeout); status is None
     ├─ UnexpectedResponseError         a success status without the gateway's shape
     ├─ BadRequestError                 400, 413, 414, 415, 422, 431: the request is invalid
     ├─ UnauthorizedError               401: no valid API key
     ├─ ForbiddenError                  403: the key lacks the scope (read, write, admin)
     ├─ NotFoundError                   404: the store has no live entry for the key
     ├─ PreconditionFailedError         412: If-Match / If-None-Match did not hold; etag is current
     │   └─ MinVersionUnavailableError  412: even the store's entry is older than min_version
     ├─ RateLimitedError                429: the key is over its rate; retry_after_s
     ├─ UnavailableError                503: nothing could answer, nothing changed; retry_after_s
     │   └─ WriteOutcomeUnknownError    503: the write may have committed (never retried)
     └─ NotCachedError                  504: only_if_cached, and no cache tier had the key
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from datetime import UTC

import httpx

PROBLEM_TYPES = ("application/problem+json", "application/json")


class CachegwError(Exception):
    """Base of every error the client raises: an error answer, or none at all."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        problem: Mapping[str, object] | None = None,
        retry_after_s: float | None = None,
        etag: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem: dict[str, object] = dict(problem or {})
        self.type = _text(self.problem, "type") or "about:blank"
        self.title = _text(self.problem, "title") or ""
        self.detail = _text(self.problem, "detail") or message
        self.instance = _text(self.problem, "instance")
        self.retry_after_s = retry_after_s
        self.etag = etag

    @property
    def slug(self) -> str:
        """The problem type's last segment (``key-not-found`` of ``/problems/key-not-found``)."""
        return problem_slug(self.problem)


class TransportError(CachegwError):
    """Raised when no answer came (refused, reset, timed out), after any retries."""


class UnexpectedResponseError(CachegwError):
    """Raised for a success answer the gateway would not send (a proxy's page, no ETag)."""


class BadRequestError(CachegwError):
    """Raised when the gateway refused the request itself (400, 413, 414, 415, 422, 431)."""


class UnauthorizedError(CachegwError):
    """Raised for 401: no API key, or one the gateway does not know (or revoked)."""


class ForbiddenError(CachegwError):
    """Raised for 403: the API key lacks the scope the operation needs."""


class NotFoundError(CachegwError):
    """Raised for 404: the store has no live entry for the key (in the key's namespace)."""


class PreconditionFailedError(CachegwError):
    """Raised for 412: If-Match or If-None-Match did not hold; ``etag`` is the current one."""


class MinVersionUnavailableError(PreconditionFailedError):
    """Raised for 412 ``min-version-unavailable``: the store's entry (``etag``) is older than
    the min_version asked for."""


class RateLimitedError(CachegwError):
    """Raised for 429 once retries are spent: wait ``retry_after_s`` before the next call."""


class UnavailableError(CachegwError):
    """Raised for 503 once retries are spent: no tier could answer, or the store could not
    commit; nothing was changed."""


class WriteOutcomeUnknownError(UnavailableError):
    """Raised for 503 ``write-outcome-unknown``: the write reached the store and may have
    committed. Read the key with ``no_cache=True`` before repeating a conditional write."""


class NotCachedError(CachegwError):
    """Raised for 504 ``not-cached``: only_if_cached, and no cache tier held the key."""


_BY_SLUG: dict[str, type[CachegwError]] = {
    "min-version-unavailable": MinVersionUnavailableError,
    "write-outcome-unknown": WriteOutcomeUnknownError,
    "not-cached": NotCachedError,
}
_BY_STATUS: dict[int, type[CachegwError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
    412: PreconditionFailedError, 413: BadRequestError, 414: BadRequestError,
    415: BadRequestError, 422: BadRequestError, 429: RateLimitedError, 431: BadRequestError,
    503: UnavailableError,
}  # fmt: skip


def error_for(
    status: int,
    problem: Mapping[str, object],
    *,
    retry_after_s: float | None = None,
    etag: str | None = None,
) -> CachegwError:
    """The exception of an error answer: by its problem type where one is more specific than
    its status, else by status; a status the map does not know is a plain ``CachegwError``."""
    cls = _BY_SLUG.get(problem_slug(problem)) or _BY_STATUS.get(status, CachegwError)
    title = _text(problem, "title") or "error"
    detail = _text(problem, "detail")
    message = f"{status} {title}" + (f": {detail}" if detail else "")
    return cls(message, status=status, problem=problem, retry_after_s=retry_after_s, etag=etag)


def error_from_response(response: httpx.Response) -> CachegwError:
    """The exception of an error answer, its problem read from the body."""
    problem = problem_of(response)
    if not problem:
        text = response.text[:200] if response.content else ""
        problem = {"type": "about:blank", "title": response.reason_phrase, "detail": text}
    return error_for(
        response.status_code, problem,
        retry_after_s=retry_after_of(response), etag=response.headers.get("etag"),
    )  # fmt: skip


def transport_error(exc: httpx.TransportError) -> TransportError:
    return TransportError(f"no answer from the gateway: {type(exc).__name__}: {exc}")


def problem_of(response: httpx.Response) -> dict[str, object]:
    """The answer's problem document, or ``{}`` when its body is not one."""
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in PROBLEM_TYPES:
        return {}
    try:
        document: object = response.json()
    except ValueError:  # not JSON, or not UTF-8
        return {}
    return {str(k): v for k, v in document.items()} if isinstance(document, dict) else {}


def problem_slug(problem: Mapping[str, object]) -> str:
    return (_text(problem, "type") or "").rsplit("/", 1)[-1]


def retry_after_of(response: httpx.Response) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP-date (RFC 9110 10.2.3)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, the only zone an HTTP-date has
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _text(problem: Mapping[str, object], name: str) -> str | None:
    value = problem.get(name)
    return value if isinstance(value, str) else None
