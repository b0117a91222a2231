"""What the router and the write path need from the authoritative store, and what it answers.

``app/store.py`` (Postgres) is the one implementation; the router's unit tests use a fake that
honours the same contract. Every call is bounded by ``deadline`` (event-loop time) and raises a
``StoreError`` when the store cannot answer by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.codec import Entry


@dataclass(frozen=True, slots=True)
class PutResult:
    """A committed put: the new version (which is also its cache seq) and its outbox row."""

    version: int
    seq: int
    created: bool
    expires_at_ms: int | None
    outbox_id: int
    stored_at_ms: int


@dataclass(frozen=True, slots=True)
class RemoveResult:
    """A delete or invalidate: the version it removed or re-sequenced, and the new seq."""

    version: int
    seq: int
    outbox_id: int


@dataclass(frozen=True, slots=True)
class TouchResult:
    """A touch: the entry's version (unchanged), its new cache seq and expiry, its outbox row."""

    version: int
    seq: int
    expires_at_ms: int
    outbox_id: int


class Source(Protocol):
    """The authoritative store, as the request path uses it.

    ``get`` answers the key's live entry (an expired one is absent). ``put`` commits a value
    unless a precondition fails: ``if_match`` (the live version is one of these), ``if_exists``
    (a live entry exists: ``If-Match: *``), ``if_none_match`` (none does: ``If-None-Match: *``);
    a failed one raises ``StoreConflictError`` carrying the live version (None when absent).
    ``delete`` and ``invalidate`` answer None when the key has no live entry (``delete`` with
    ``if_match`` raises ``StoreConflictError`` instead, as for a version that does not match).
    ``touch`` gives a live entry a new expiry and a new cache seq, its version unchanged;
    None when absent (``StoreConflictError`` with ``if_match`` or ``if_exists``, or when the
    version does not match).
    Each write is committed together with its outbox row, whose id it answers.
    """

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None: ...

    async def put(
        self,
        namespace: str,
        key: str,
        value: bytes,
        *,
        content_type: str,
        ttl_ms: int | None,
        if_match: list[int] | None,
        if_exists: bool,
        if_none_match: bool,
        deadline: float,
    ) -> PutResult: ...

    async def delete(
        self, namespace: str, key: str, *, if_match: list[int] | None, deadline: float
    ) -> RemoveResult | None: ...

    async def invalidate(
        self, namespace: str, key: str, *, deadline: float
    ) -> RemoveResult | None: ...

    async def touch(
        self,
        namespace: str,
        key: str,
        *,
        ttl_ms: int,
        if_match: list[int] | None,
        if_exists: bool,
        deadline: float,
    ) -> TouchResult | None: ...
