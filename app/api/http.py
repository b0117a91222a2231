"""HTTP semantics of the key operations: key parsing, Cache-Control, body limits, headers.

Nothing here depends on FastAPI: the key operations are served without it (``dispatch.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from urllib.parse import unquote_to_bytes

from app.codec import Entry
from app.errors import (
    InvalidCacheControlError,
    InvalidKeyError,
    UnsupportedMediaTypeError,
    ValueTooLargeError,
)
from app.router import ReadPolicy, ReadResult
from app.settings import StalenessSettings

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_CONTENT_TYPE_LENGTH = 255
CACHE_NAME = "cachegw"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf"^{_TOKEN}/{_TOKEN}"
    rf"(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"(?:[^\"\\\x00-\x08\x0a-\x1f\x7f]|\\.)*\"))*$"
)
_FORBIDDEN_IN_KEY = re.compile(r"[\x00-\x1f\x7f-\x9f/]")


def _any_case(word: str) -> str:
    """``word`` matched case-insensitively, in a regex both Python and ECMA-262 read alike."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_OWS = "[ \\t]*"
_SECONDS = '(?:[0-9]{1,10}|"[0-9]{1,10}")'
_END = f"{_OWS}(?:,|$)"
# A directive the read policy uses whose value is not a number of seconds (for stale-if-error
# and max-age, also a missing one). Searched for as it is, and stated in the OpenAPI schema as
# ``CACHE_CONTROL_PATTERN``: what the schema allows is exactly what is not refused.
REFUSED_DIRECTIVE = (
    f"(?:^|,){_OWS}(?:{_any_case('max-stale')}{_OWS}=(?!{_OWS}{_SECONDS}{_END})"
    f"|(?:{_any_case('stale-if-error')}|{_any_case('max-age')}){_OWS}"
    f"(?!={_OWS}{_SECONDS}{_END})(?:=|,|$))"
)
CACHE_CONTROL_PATTERN = f"^(?!.*{REFUSED_DIRECTIVE})"
_REFUSED = re.compile(REFUSED_DIRECTIVE)
_DIRECTIVE = re.compile(f'{_OWS}({_TOKEN}){_OWS}(?:={_OWS}("[^"]*"|[^ \\t",]*))?{_OWS}')
_TIMED = frozenset({"max-stale", "stale-if-error", "max-age"})  # values checked by _REFUSED


def read_policy(
    header: str | None, *, staleness: StalenessSettings, default: ReadPolicy
) -> ReadPolicy:
    """The request's Cache-Control directives as a read policy (RFC 9111 section 5.2.1, 5861).

    ``max-stale[=N]`` and ``stale-if-error=N`` are capped by the server; ``no-cache`` and
    ``max-age=0`` read the store; ``only-if-cached`` never does. Unknown or unreadable directives
    are ignored, as RFC 9111 asks of caches; one of these four with a malformed number is refused
    (the caller meant something, and a silent default would surprise them).
    """
    if not header or not header.strip():
        return default
    refused = _REFUSED.search(header)
    if refused is not None:
        name = refused.group(0).lstrip(", \t").split("=", 1)[0].strip().lower()
        raise InvalidCacheControlError(f"Cache-Control {name} needs a number of seconds")
    max_stale, stale_if_error = default.max_stale_s, default.stale_if_error_s
    no_cache = only_if_cached = False
    for part in header.split(","):
        match = _DIRECTIVE.fullmatch(part)
        if match is None:
            continue
        name, raw = match.group(1).lower(), match.group(2)
        seconds = None if raw is None or name not in _TIMED else float(raw.strip('"'))
        if name == "max-stale":
            max_stale = min(
                staleness.max_stale_cap_s if seconds is None else seconds,
                staleness.max_stale_cap_s,
            )
        elif name == "stale-if-error" and seconds is not None:
            stale_if_error = min(seconds, staleness.stale_if_error_cap_s)
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age":
            no_cache = no_cache or seconds == 0
        elif name == "only-if-cached":
            only_if_cached = True
    return ReadPolicy(
        max_stale_s=max_stale,
        stale_if_error_s=stale_if_error,
        no_cache=no_cache,
        only_if_cached=only_if_cached,
    )


def key_from_raw_path(raw_path: bytes, *, max_bytes: int) -> str:
    """The key in ``/v1/keys/{key}[/...]``, percent-decoded strictly as UTF-8, then validated.

    The raw path is used (not the router's decoded one) so that malformed percent-encoding and
    invalid UTF-8 are refused instead of being replaced by U+FFFD. The key is its fourth
    segment (``/v1/keys/<key>``), however the first ones were spelled (``/v1/%6Beys/...`` is
    routed here too): never cut at the decoded prefix's length.
    """
    parts = raw_path.split(b"?", 1)[0].split(b"/", 4)
    segment = parts[3] if len(parts) > 3 else b""
    if b"%" in segment:
        if re.search(rb"%(?![0-9A-Fa-f]{2})", segment):
            raise InvalidKeyError("the key has malformed percent-encoding")
        raw = unquote_to_bytes(segment)
    else:
        raw = segment
    try:
        key = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKeyError("the key is not valid UTF-8 once percent-decoded") from None
    return validate_key(key, raw_len=len(raw), max_bytes=max_bytes)


def validate_key(key: str, *, raw_len: int | None = None, max_bytes: int) -> str:
    """``key`` when it may be a key; ``raw_len`` is its length in UTF-8 (computed if not given)."""
    if raw_len is None:
        raw_len = len(key) if key.isascii() else len(key.encode())
    if not key:
        raise InvalidKeyError("the key is empty")
    if raw_len > max_bytes:
        raise InvalidKeyError(f"the key is {raw_len} bytes of UTF-8; the limit is {max_bytes}")
    if _FORBIDDEN_IN_KEY.search(key):
        raise InvalidKeyError("the key contains a control character or '/'")
    return key


def content_type_of(header: str | None) -> str:
    if header is None or not header.strip():
        return DEFAULT_CONTENT_TYPE
    value = header.strip()
    if len(value) > MAX_CONTENT_TYPE_LENGTH or not _MEDIA_TYPE.match(value):
        raise UnsupportedMediaTypeError("Content-Type is not a valid media type")
    if "*" in value.split(";", 1)[0]:
        raise UnsupportedMediaTypeError(
            "Content-Type must be a concrete type, not a range like */*"
        )
    return value


async def read_limited(
    stream: AsyncIterator[bytes], *, content_length: str | None, limit: int
) -> bytes:
    """The whole body, or ``ValueTooLargeError`` as soon as it is known to exceed ``limit``."""
    if content_length is not None:
        if not (content_length.isascii() and content_length.strip().isdigit()):
            raise ValueTooLargeError("Content-Length is not a number", limit_bytes=limit)
        if int(content_length) > limit:
            raise ValueTooLargeError(
                f"the value is {int(content_length)} bytes; the limit is {limit}", limit_bytes=limit
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise ValueTooLargeError(
                f"the value exceeds the limit of {limit} bytes", limit_bytes=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


def cache_status(result: ReadResult) -> str:
    """RFC 9211 Cache-Status: which tier answered, and whether the answer is past freshness."""
    if result.store_failed:
        return f"{CACHE_NAME}; fwd=stale; fwd-status=503; detail={result.tier}"
    if result.tier == "store":
        forward = "request" if result.revalidated else "miss"
        status = f"{CACHE_NAME}; fwd={forward}"
        if result.filled:
            status += "; stored"
        if result.collapsed:
            status += "; collapsed"
        return status
    if result.stale_s > 0:
        return f"{CACHE_NAME}; fwd=stale; detail={result.tier}"
    return _HITS.get(result.tier) or f"{CACHE_NAME}; hit; detail={result.tier}"


def age_s(result: ReadResult, now_ms: int) -> int:
    """Seconds since the copy last matched the store; never less than how far behind it may be."""
    since_stored = max(0, now_ms - result.entry.stored_at_ms) // 1000
    return max(since_stored, math.ceil(result.stale_s))


# The answer of nearly every read, precomputed.
_HITS = {tier: f"{CACHE_NAME}; hit; detail={tier}" for tier in ("primary", "replica", "local")}
_HIT_PRIMARY = _HITS["primary"].encode()


def entry_headers(result: ReadResult, now_ms: int) -> list[tuple[bytes, bytes]]:
    """ETag, Age, Cache-Status and (with a ttl) Cache-Control, as raw ASGI header pairs.

    Built straight as bytes, because this runs on every read.
    """
    entry: Entry = result.entry
    status = _HIT_PRIMARY if result.tier == "primary" and not result.stale_s else None
    headers = [
        (b"etag", b'"%d"' % entry.version),  # conditional.etag(), as bytes: every read builds it
        (b"age", b"%d" % age_s(result, now_ms)),
        (b"cache-status", status or cache_status(result).encode()),
    ]
    if entry.expires_at_ms is not None:
        remaining_s = max(0, (entry.expires_at_ms - now_ms) // 1000)
        headers.append((b"cache-control", b"max-age=%d" % remaining_s))
    return headers
