"""Function-driven fakes of a cache tier and of the store, for the router's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from app.codec import Entry, Tombstone
from app.errors import StoreUnavailableError
from app.store import RemoveResult, WriteResult
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
    rows: dict[str, Entry] = field(default_factory=dict)
    down: bool = False
    seq: int = 100
    gets: int = 0
    gate: asyncio.Event | None = None  # when set, reads wait for it (to force overlap)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("store down")

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None:
        self._check()
        self.gets += 1
        if self.gate is not None:
            await self._wait(self.gate, deadline)
        return self.rows.get(key)

    @staticmethod
    async def _wait(gate: asyncio.Event, deadline: float) -> None:
        """As the real store: no answer by the deadline is StoreUnavailableError."""
        try:
            async with asyncio.timeout_at(deadline):
                await gate.wait()
        except TimeoutError:
            raise StoreUnavailableError("store: get timed out") from None

    async def put(self, namespace: str, key: str, value: bytes, **kw: object) -> WriteResult:
        self._check()
        self.seq += 1
        created = key not in self.rows
        self.rows[key] = Entry(value, str(kw["content_type"]), self.seq, self.seq, 0)
        return WriteResult(self.seq, self.seq, created, None, outbox_id=self.seq, stored_at_ms=0)

    async def delete(self, namespace: str, key: str, **kw: object) -> RemoveResult | None:
        self._check()
        if key not in self.rows:
            return None
        old = self.rows.pop(key)
        self.seq += 1
        return RemoveResult(old.version, self.seq, self.seq)

    async def invalidate(self, namespace: str, key: str, **kw: object) -> RemoveResult | None:
        self._check()
        if key not in self.rows:
            return None
        self.seq += 1
        old = self.rows[key]
        self.rows[key] = Entry(old.value, old.content_type, old.version, self.seq, 0)
        return RemoveResult(old.version, self.seq, self.seq)


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
