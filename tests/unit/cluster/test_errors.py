"""Every redis-py exception class is translated, or listed as one that never reaches our I/O;
what the table does not list passes through unchanged."""

from __future__ import annotations

import inspect

import pytest
from redis import exceptions as rex

from app.cluster.errors import (
    NOT_RAISED_HERE,
    TIMEOUT_ERRORS,
    UNAVAILABLE_ERRORS,
    map_redis_errors,
    reply_error,
)
from app.errors import TierError, TierTimeoutError, TierUnavailableError


def translate(exc: BaseException, *, route: str) -> TierError:
    """What ``exc`` becomes when raised inside ``map_redis_errors``."""
    with pytest.raises(TierError) as caught, map_redis_errors(route):
        raise exc
    assert caught.value.__cause__ is exc
    return caught.value


REDIS_CLASSES = [
    cls for name, cls in inspect.getmembers(rex, inspect.isclass)
    if cls.__module__ == rex.__name__ and name not in NOT_RAISED_HERE
]  # fmt: skip


def test_the_table_names_every_class() -> None:
    names = {
        name
        for name, cls in inspect.getmembers(rex, inspect.isclass)
        if cls.__module__ == rex.__name__
    }
    assert names >= NOT_RAISED_HERE, NOT_RAISED_HERE - names
    for cls in REDIS_CLASSES:
        assert issubclass(cls, TIMEOUT_ERRORS + UNAVAILABLE_ERRORS), cls


@pytest.mark.parametrize("cls", REDIS_CLASSES, ids=lambda c: c.__name__)
def test_each_class_becomes_a_tier_error(cls: type[BaseException]) -> None:
    try:
        exc = cls("127 127.0.0.1:7000") if issubclass(cls, rex.AskError) else cls("boom")
    except TypeError:
        exc = cls()
    translated = translate(exc, route="primary@127.0.0.1:7000")
    expected = TierTimeoutError if issubclass(cls, rex.TimeoutError) else TierUnavailableError
    assert isinstance(translated, expected)
    assert translated.route == "primary@127.0.0.1:7000"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), TierTimeoutError),
        (ConnectionResetError(), TierUnavailableError),
        (AttributeError("'NoneType' object has no attribute 'writelines'"), TierUnavailableError),
        (rex.SlotNotCoveredError("x"), TierUnavailableError),
        (rex.RedisClusterException("x"), TierUnavailableError),
    ],
)
def test_leaks_of_redis_py_io(exc: BaseException, expected: type[Exception]) -> None:
    assert isinstance(translate(exc, route="r"), expected)


@pytest.mark.parametrize(
    "exc", [TypeError("%d format: a real number is required"), KeyError("x"), ValueError("x")]
)
def test_what_the_table_does_not_list_is_re_raised_unchanged(exc: Exception) -> None:
    with pytest.raises(type(exc)) as caught, map_redis_errors("primary@127.0.0.1:7000"):
        raise exc
    assert caught.value is exc


def test_a_tier_error_raised_inside_passes_through() -> None:
    error = TierTimeoutError("no reply", route="r")
    with pytest.raises(TierTimeoutError) as caught, map_redis_errors("r"):
        raise error
    assert caught.value is error


def test_an_error_reply_is_unavailable_never_a_timeout() -> None:
    error = reply_error(rex.ClusterDownError("CLUSTERDOWN"), route="primary@h:1")
    assert isinstance(error, TierUnavailableError)
    assert (error.route, str(error)) == (
        "primary@h:1",
        "primary@h:1: ClusterDownError: CLUSTERDOWN",
    )
