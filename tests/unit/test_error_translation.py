"""Every redis-py exception class is translated, or listed as one that never reaches our I/O."""

from __future__ import annotations

import inspect

import pytest
from redis import exceptions as rex

from app.cluster.errors import NOT_RAISED_HERE, TIMEOUT_ERRORS, UNAVAILABLE_ERRORS, translate
from app.errors import TierTimeoutError, TierUnavailableError

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
def test_leaks_named_by_the_research(exc: BaseException, expected: type[Exception]) -> None:
    assert isinstance(translate(exc, route="r"), expected)
