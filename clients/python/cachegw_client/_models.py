"""What the key operations answer: an entry read, a write made durable, where a read came from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CacheStatus:
    """The gateway's member of ``Cache-Status`` (RFC 9211): which tier answered, and how.

    ``cachegw; hit; detail=primary`` is a hit of the slot's primary (``detail`` also ``replica``
    or ``local``); ``fwd=miss`` and ``fwd=request`` (no_cache) were answered by the store,
    ``stored`` when the copy went back to Redis; ``fwd=stale`` is a copy that may be up to the
    answer's age behind, with ``fwd_status=503`` when the store could not answer.
    """

    raw: str
    hit: bool = False
    fwd: str | None = None
    fwd_status: int | None = None
    stored: bool = False
    collapsed: bool = False
    detail: str | None = None

    @property
    def stale(self) -> bool:
        return self.fwd == "stale"

    @property
    def tier(self) -> str | None:
        """``primary``, ``replica``, ``local`` or ``store``: who answered, when it says."""
        if self.detail is not None:
            return self.detail
        return "store" if self.fwd in ("miss", "request") else None

    @classmethod
    def parse(cls, header: str) -> CacheStatus:
        """The ``cachegw`` member of a Cache-Status field (caches in front may add theirs);
        parameters the gateway does not send are ignored."""
        members = [m.strip() for m in header.split(",") if m.strip()]
        ours = [m for m in members if m.split(";", 1)[0].strip().strip('"') == "cachegw"]
        member = (ours or members or [""])[-1]
        hit = stored = collapsed = False
        fwd = detail = None
        fwd_status = None
        for param in member.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            value = value.strip().strip('"')
            if name == "hit":
                hit = value in ("", "?1")
            elif name == "fwd":
                fwd = value
            elif name == "fwd-status" and value.isdigit():
                fwd_status = int(value)
            elif name == "stored":
                stored = value in ("", "?1")
            elif name == "collapsed":
                collapsed = value in ("", "?1")
            elif name == "detail":
                detail = value
        return cls(header, hit, fwd, fwd_status, stored, collapsed, detail)


@dataclass(frozen=True, slots=True)
class Entry:
    """A key's value as read, and what the answer said about it.

    ``version`` is the ETag's number (the gateway's ETag is the version, quoted); ``age_s`` the
    seconds since the copy last matched the store; ``max_age_s`` the seconds left of its ttl
    (``None``: no ttl); ``request_id`` the gateway's ``X-Request-ID``, for its logs.
    """

    key: str
    value: bytes
    etag: str
    version: int
    content_type: str
    cache_status: CacheStatus
    age_s: int
    max_age_s: int | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a put or a touch made durable: the version (a touch keeps it) and the expiry."""

    key: str
    version: int
    etag: str
    expires_at: datetime | None = None
    created: bool = False
