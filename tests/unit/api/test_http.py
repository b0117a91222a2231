from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.api.http import (
    cache_status,
    content_type_of,
    entry_headers,
    key_from_raw_path,
    read_limited,
    read_policy,
)
from app.codec import Entry
from app.errors import (
    InvalidCacheControlError,
    InvalidKeyError,
    UnsupportedMediaTypeError,
    ValueTooLargeError,
)
from app.router import ReadPolicy, ReadResult
from app.settings import StalenessSettings


def key(raw: bytes) -> str:
    return key_from_raw_path(b"/v1/keys/" + raw, max_bytes=512)


def test_keys_are_percent_decoded_strictly() -> None:
    assert key(b"user%3A42") == "user:42"
    assert key(b"caf%C3%A9") == "café"
    assert key(b"a/invalidate") == "a"
    assert key(b"%7Btag%7D") == "{tag}"
    assert key(b"a" * 512) == "a" * 512


def test_the_key_is_the_path_segment_the_route_matched_however_it_is_spelled() -> None:
    """Routing decodes the path; the key is cut from the raw path, segment by segment, so a
    prefix spelled with percent-escapes does not shift it (audit §16: ``/v1/%6Beys/abc`` read
    the key ``s``)."""
    assert key_from_raw_path(b"/v1/%6Beys/abc", max_bytes=512) == "abc"
    assert key_from_raw_path(b"/%761/keys/zz", max_bytes=512) == "zz"
    assert key_from_raw_path(b"/v1/keys/a%41/invalidate", max_bytes=512) == "aA"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"a" * 513,
        b"%00",
        b"%0A",
        b"a%2Fb",
        b"%zz",
        b"%C3%28",
        b"%",
        b"%7F",
        b"%C2%85",
        "é".encode() * 257,
    ],
)
def test_bad_keys(raw: bytes) -> None:
    with pytest.raises(InvalidKeyError):
        key(raw)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "application/octet-stream"),
        ("", "application/octet-stream"),
        ("text/plain", "text/plain"),
        (" application/json; charset=utf-8 ", "application/json; charset=utf-8"),
        ('multipart/form-data; boundary="a b"', 'multipart/form-data; boundary="a b"'),
    ],
)
def test_content_types(header: str | None, expected: str) -> None:
    assert content_type_of(header) == expected


@pytest.mark.parametrize(
    "header",
    ["text", "text/", "a b/c", "text/plain; x", "a/b\nc", "x/" + "y" * 300, "*/*", "text/*"],
)
def test_bad_content_types(header: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        content_type_of(header)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_read_limited() -> None:
    assert await read_limited(chunks(b"ab", b"cd"), content_length=None, limit=4) == b"abcd"
    with pytest.raises(ValueTooLargeError):
        await read_limited(chunks(b"ab", b"cde"), content_length=None, limit=4)
    with pytest.raises(ValueTooLargeError):
        await read_limited(chunks(), content_length="5", limit=4)


async def test_read_limited_stops_at_the_first_chunk_over_the_limit() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1000

    with pytest.raises(ValueTooLargeError):
        await read_limited(endless(), content_length=None, limit=2500)
    assert pulled == 3


def test_headers_for_an_answer() -> None:
    entry = Entry(
        value=b"v", content_type="a/b", version=9, seq=9, stored_at_ms=1_000, expires_at_ms=61_500
    )
    headers = entry_headers(ReadResult(entry, "primary"), now_ms=4_000)
    assert headers == [
        (b"etag", b'"9"'),
        (b"age", b"3"),
        (b"cache-status", b"cachegw; hit; detail=primary"),
        (b"cache-control", b"max-age=57"),
    ]
    assert cache_status(ReadResult(entry, "store", filled=True)) == "cachegw; fwd=miss; stored"
    assert cache_status(ReadResult(entry, "store")) == "cachegw; fwd=miss"


# -- Cache-Control request directives as a read policy ----------------------------------

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
