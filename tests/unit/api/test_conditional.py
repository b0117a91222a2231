from __future__ import annotations

import pytest

from app.api.conditional import TagList, etag, none_match, parse_tag_list
from app.errors import InvalidPreconditionError


def test_star_and_lists() -> None:
    assert parse_tag_list("*", name="If-Match") == TagList(any=True)
    tags = parse_tag_list(' "1", W/"2" ,"abc"', name="If-Match")
    assert tags.strong == ("1", "abc")
    assert tags.weak == ("2",)
    assert tags.versions(strong_only=True) == [1]
    assert tags.versions(strong_only=False) == [1, 2]


@pytest.mark.parametrize("header", ["", "1", '"1', '"1",', "W/1", '"a" "b"', '"1"x', '"a\\"b"'])
def test_invalid_syntax(header: str) -> None:
    with pytest.raises(InvalidPreconditionError):
        parse_tag_list(header, name="If-Match")


def test_none_match_uses_weak_comparison() -> None:
    assert none_match(parse_tag_list('W/"7"', name="If-None-Match"), 7)
    assert none_match(parse_tag_list("*", name="If-None-Match"), 7)
    assert not none_match(parse_tag_list('"8"', name="If-None-Match"), 7)
    assert etag(7) == '"7"'
