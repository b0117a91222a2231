"""Every error the gateway raises on purpose has a problem response; none leaks internals."""

from __future__ import annotations

import json

import pytest

from app import errors
from app.api.problems import PROBLEM_JSON, PROBLEM_TYPES, PROBLEMS, answer_for, error_response

CASES: list[tuple[Exception, int, str]] = [
    (errors.InvalidKeyError("bad"), 422, "/problems/invalid-key"),
    (errors.InvalidTtlError("bad"), 422, "/problems/invalid-ttl"),
    (errors.InvalidPreconditionError("bad"), 400, "/problems/invalid-precondition"),
    (errors.UnsupportedMediaTypeError("bad"), 415, "/problems/unsupported-media-type"),
    (errors.ValueTooLargeError("big", limit_bytes=10), 413, "/problems/value-too-large"),
    (errors.KeyNotFoundError("k"), 404, "/problems/key-not-found"),
    (errors.StoreConflictError("no", current_version=7), 412, "/problems/precondition-failed"),
    (errors.StoreUnavailableError("down"), 503, "/problems/store-unavailable"),
    (errors.WriteOutcomeUnknownError("late"), 503, "/problems/write-outcome-unknown"),
    (errors.NoAnswerError("none", retry_after_s=2), 503, "/problems/no-answer"),
    (errors.TierTimeoutError("slow", route="primary"), 503, "/problems/no-answer"),
    (errors.UnauthenticatedError("no key"), 401, "/problems/unauthenticated"),
    (errors.AuthUnavailableError("no table"), 503, "/problems/auth-unavailable"),
    (errors.ForbiddenError("no scope"), 403, "/problems/forbidden"),
    (errors.RateLimitedError("slow down", retry_after_s=3), 429, "/problems/rate-limited"),
    (errors.HeadersTooLargeError("big"), 431, "/problems/headers-too-large"),
    (RuntimeError("secret internals"), 500, "/problems/internal-error"),
]


@pytest.mark.parametrize(
    ("exc", "status", "type_uri"), CASES, ids=[type(c[0]).__name__ for c in CASES]
)
def test_error_responses(exc: Exception, status: int, type_uri: str) -> None:
    response = error_response(exc, instance="/v1/keys/k")
    assert response.status_code == status
    assert response.media_type == PROBLEM_JSON
    body = json.loads(bytes(response.body))
    assert body["status"] == status
    assert body["type"] == type_uri
    assert body["title"]
    assert body["instance"] == "/v1/keys/k"
    assert "secret internals" not in body["detail"]
    if status == 503:
        assert response.headers["retry-after"]


def test_a_failed_precondition_carries_the_current_etag() -> None:
    response = error_response(errors.StoreConflictError("no", current_version=7))
    assert response.headers["etag"] == '"7"'


def test_every_gateway_error_class_has_a_mapping() -> None:
    leaves = [
        cls for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.CachegwError)
        and not cls.__subclasses__() and cls is not errors.NodeBusyError
    ]  # fmt: skip
    for cls in leaves:
        assert error_response(cls("x")).status_code != 500, cls


def test_the_table_is_looked_up_along_the_mro() -> None:
    """A class the table does not list is answered as its nearest listed ancestor."""

    class Unlisted(errors.TierTimeoutError):
        pass

    assert errors.TierTimeoutError not in PROBLEMS
    assert answer_for(Unlisted("x")) is PROBLEMS[errors.TierError]
    assert answer_for(errors.OverloadedError("x")) is PROBLEMS[errors.NoAnswerError]
    assert answer_for(KeyError("x")) is PROBLEMS[Exception]


def test_problem_types_have_explanations() -> None:
    for kind in PROBLEM_TYPES.values():
        assert kind.explanation
        assert kind.uri == f"/problems/{kind.slug}"
