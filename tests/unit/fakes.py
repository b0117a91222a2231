"""Function-driven fakes of a cache tier and of the store, for the router's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from app.codec import Entry, Tombstone, now_ms
from app.errors import StoreConflictError, StoreUnavailableError
from app.source import PutResult, RemoveResult, TouchResult
from app.tiers.base import Copy, KeyRef

Record = Entry | Tombstone | None


class FakeTier:
    """A cache tier whose answers come from ``on_get`` / ``on_put`` (a dict by default)."""

    def __init__(
        self,
        name: str = "primary",
        *,
        behind_s: float = 0.0,
        on_get: Callable[[KeyRef], Record] | None = None,
        on_put: Callable[[KeyRef, Entry | Tombstone], bool] | None = None,
    ) -> None:
        self.name = name
        self.behind_s = behind_s
        self.data: dict[bytes, Entry | Tombstone] = {}
        self.on_get = on_get or (lambda ref: self.data.get(ref.rkey))
        self.on_put = on_put or self._put
        self.gets = 0
        self.puts: list[Entry | Tombstone] = []

    def _put(self, ref: KeyRef, record: Entry | Tombstone) -> bool:
        current = self.data.get(ref.rkey)
        if current is not None and current.seq >= record.seq:
            return False
        self.data[ref.rkey] = record
        return True

    async def get(self, ref: KeyRef, *, deadline: float) -> Copy:
        self.gets += 1
        return Copy(self.on_get(ref), self.behind_s)

    async def put(
        self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float, refresh: bool = False
    ) -> bool:
        self.puts.append(record)
        if refresh and isinstance(record, Entry):
            self.refreshes += 1
            self.data[ref.rkey] = record
            return True
        return self.on_put(ref, record)

    # The load lock, as another process would hold it: ``held_by_peer`` keeps it taken.
    held_by_peer = False
    refreshes = 0

    async def lock(self, ref: KeyRef, *, ttl_ms: int, deadline: float) -> bytes | None:
        return None if self.held_by_peer else b"token"

    async def unlock(self, ref: KeyRef, token: bytes, *, deadline: float) -> None:
        return None

    async def poll_fill(self, ref: KeyRef, *, deadline: float) -> tuple[Copy, bool]:
        return Copy(self.data.get(ref.rkey)), self.held_by_peer


@dataclass
class FakeStore:
    """The store's contract (``app.source.Source``) over a dict keyed by (namespace, key), with
    the preconditions of the SQL functions ``cachegw_put`` and ``cachegw_delete``."""

    rows: dict[tuple[str, str], Entry] = field(default_factory=dict)
    down: bool = False
    seq: int = 100
    gets: int = 0
    gate: asyncio.Event | None = None  # when set, reads wait for it (to force overlap)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("store down")

    def _live(self, namespace: str, key: str) -> Entry | None:
        row = self.rows.get((namespace, key))
        return None if row is None or row.expired(now_ms()) else row

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None:
        self._check()
        self.gets += 1
        if self.gate is not None:
            await self._wait(self.gate, deadline)
        return self._live(namespace, key)

    @staticmethod
    async def _wait(gate: asyncio.Event, deadline: float) -> None:
        """As the real store: no answer by the deadline is StoreUnavailableError."""
        try:
            async with asyncio.timeout_at(deadline):
                await gate.wait()
        except TimeoutError:
            raise StoreUnavailableError("store: get timed out") from None

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
    ) -> PutResult:
        self._check()
        live = self._live(namespace, key)
        if (
            (if_none_match and live is not None)
            or ((if_exists or if_match is not None) and live is None)
            or (if_match is not None and live is not None and live.version not in if_match)
        ):
            raise StoreConflictError(
                "precondition failed", current_version=None if live is None else live.version
            )
        self.seq += 1
        expires_at_ms = None if ttl_ms is None else now_ms() + ttl_ms
        self.rows[namespace, key] = Entry(value, content_type, self.seq, self.seq, 0, expires_at_ms)
        return PutResult(
            self.seq, self.seq, live is None, expires_at_ms, outbox_id=self.seq, stored_at_ms=0
        )

    async def delete(
        self, namespace: str, key: str, *, if_match: list[int] | None, deadline: float
    ) -> RemoveResult | None:
        self._check()
        live = self._live(namespace, key)
        if live is None:
            if if_match is not None:
                raise StoreConflictError("precondition failed", current_version=None)
            return None
        if if_match is not None and live.version not in if_match:
            raise StoreConflictError("precondition failed", current_version=live.version)
        del self.rows[namespace, key]
        self.seq += 1
        return RemoveResult(live.version, self.seq, self.seq)

    async def invalidate(self, namespace: str, key: str, *, deadline: float) -> RemoveResult | None:
        self._check()
        live = self._live(namespace, key)
        if live is None:
            return None
        self.seq += 1
        self.rows[namespace, key] = live._replace(seq=self.seq, stored_at_ms=0)
        return RemoveResult(live.version, self.seq, self.seq)

    async def touch(
        self,
        namespace: str,
        key: str,
        *,
        ttl_ms: int,
        if_match: list[int] | None,
        if_exists: bool,
        deadline: float,
    ) -> TouchResult | None:
        self._check()
        live = self._live(namespace, key)
        if live is None:
            if if_match is not None or if_exists:
                raise StoreConflictError("precondition failed", current_version=None)
            return None
        if if_match is not None and live.version not in if_match:
            raise StoreConflictError("precondition failed", current_version=live.version)
        self.seq += 1
        expires_at_ms = now_ms() + ttl_ms
        self.rows[namespace, key] = live._replace(seq=self.seq, expires_at_ms=expires_at_ms)
        return TouchResult(live.version, self.seq, expires_at_ms, self.seq)


class FakeOutbox:
    def __init__(self) -> None:
        self.done_ids: list[int] = []

    def done(self, outbox_id: int) -> None:
        self.done_ids.append(outbox_id)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(value: bytes = b"v", seq: int = 1, **kw: object) -> Entry:
    return Entry(value, "a/b", seq, seq, stored_at_ms=0, **kw)  # type: ignore[arg-type]
