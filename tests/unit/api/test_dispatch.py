"""Which route a path under /v1/keys/ takes, and explain read as FastAPI reads a boolean."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from app.api.dispatch import INVALIDATE_ROUTE, KEY_ROUTE, NO_ROUTE, explain_asked, route_of


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/keys/a", KEY_ROUTE),
        ("/v1/keys/a b", KEY_ROUTE),
        ("/v1/keys/a/invalidate", INVALIDATE_ROUTE),
        ("/v1/keys/a/b", NO_ROUTE),
        ("/v1/keys/a/", NO_ROUTE),
        ("/v1/keys/", NO_ROUTE),
        ("/v1/keys//invalidate", NO_ROUTE),
    ],
)
def test_every_key_path_has_one_route(path: str, route: str) -> None:
    assert route_of(path) == route


@pytest.mark.parametrize(
    ("query", "asked"),
    [(b"", False), (b"explain=1", True), (b"explain=TRUE", True), (b"explain=no", False),
     (b"ttl=5", False), (b"explain=0&explain=yes", True)],
)  # fmt: skip
def test_explain_is_read_as_fastapi_reads_a_boolean(query: bytes, asked: bool) -> None:
    assert explain_asked({"query_string": query}) is asked


def test_an_unreadable_explain_is_a_validation_error() -> None:
    with pytest.raises(RequestValidationError):
        explain_asked({"query_string": b"explain=maybe"})
