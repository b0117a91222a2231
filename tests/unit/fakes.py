"""Function-driven fakes of a cache tier and of the store, for the router's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.codec import Entry, Tombstone
from app.errors import KeyNotFoundError, StoreUnavailableError
from app.store import RemoveResult, WriteResult
from app.tiers.base import KeyRef

Record = Entry | Tombstone | None


class FakeTier:
    """A cache tier whose answers come from ``on_get`` / ``on_put`` (a dict by default)."""

    def __init__(
        self,
        name: str = "primary",
        *,
        on_get: Callable[[KeyRef], Record] | None = None,
        on_put: Callable[[KeyRef, Entry | Tombstone], bool] | None = None,
    ) -> None:
        self.name = name
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

    async def get(self, ref: KeyRef, *, deadline: float) -> Record:
        self.gets += 1
        return self.on_get(ref)

    async def put(self, ref: KeyRef, record: Entry | Tombstone, *, deadline: float) -> bool:
        self.puts.append(record)
        return self.on_put(ref, record)


@dataclass
class FakeStore:
    rows: dict[str, Entry] = field(default_factory=dict)
    down: bool = False
    seq: int = 0
    gets: int = 0

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("store down")

    async def get(self, namespace: str, key: str, *, deadline: float) -> Entry | None:
        self._check()
        self.gets += 1
        return self.rows.get(key)

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


class FakeOutbox:
    def __init__(self) -> None:
        self.done_ids: list[int] = []

    def done(self, outbox_id: int) -> None:
        self.done_ids.append(outbox_id)


def entry(value: bytes = b"v", version: int = 1, **kw: object) -> Entry:
    return Entry(value, "a/b", version, version, stored_at_ms=0, **kw)  # type: ignore[arg-type]


__all__ = ["FakeOutbox", "FakeStore", "FakeTier", "KeyNotFoundError", "entry"]
