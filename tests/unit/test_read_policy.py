"""Cache-Control request directives as a read policy."""

from __future__ import annotations

import pytest

from app.api.http import read_policy
from app.errors import InvalidCacheControlError
from app.router import ReadPolicy
from app.settings import StalenessSettings

SETTINGS = StalenessSettings(
    budget_s=2, max_stale_cap_s=60, stale_if_error_s=30, stale_if_error_cap_s=600
)
DEFAULT = ReadPolicy(max_stale_s=2, stale_if_error_s=30)


def policy(header: str | None) -> ReadPolicy:
    return read_policy(header, staleness=SETTINGS, default=DEFAULT)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, DEFAULT),
        ("", DEFAULT),
        ("max-stale=5", ReadPolicy(5, 30)),
        ("max-stale", ReadPolicy(60, 30)),
        ("max-stale=9999", ReadPolicy(60, 30)),
        ("max-stale=0", ReadPolicy(0, 30)),
        ("stale-if-error=120", ReadPolicy(2, 120)),
        ("stale-if-error=99999", ReadPolicy(2, 600)),
        ('max-stale="7", Stale-If-Error=1', ReadPolicy(7, 1)),
        ("no-cache", ReadPolicy(2, 30, no_cache=True)),
        ("max-age=0", ReadPolicy(2, 30, no_cache=True)),
        ("max-age=60", DEFAULT),
        ("only-if-cached, max-stale=3", ReadPolicy(3, 30, only_if_cached=True)),
        ('no-transform, private="x, y", foo=bar', DEFAULT),
        ("=5, {}, TDz, max-stale=3", ReadPolicy(3, 30)),
    ],
)
def test_directives(header: str | None, expected: ReadPolicy) -> None:
    assert policy(header) == expected


@pytest.mark.parametrize(
    "header", ["max-stale=-1", "max-stale=abc", "stale-if-error", "max-age=1.5"]
)
def test_malformed_values_of_directives_we_use(header: str) -> None:
    with pytest.raises(InvalidCacheControlError):
        policy(header)
