"""A history checker for one writer per key: every read against the operations around it.

Each key has one writer, so its operations never overlap one another; each write's body is
unique, so a read's body names the write it came from. A read that started at ``s`` and ended at
``e`` may answer:

* the state left by the last operation *acknowledged* before ``s`` (its version, or absent after
  a delete), or the state of any operation that overlaps the read (it may or may not be visible
  yet), or of any operation whose outcome is unknown (a 503 ``write-outcome-unknown``, a broken
  connection) issued since that acknowledgement: it may have committed;
* if the answer says it is stale (``Cache-Status: ... fwd=stale``), any state that was current
  up to its declared age before ``s`` (``Age``, plus a second for rounding).

Anything else is a violation: a 500 (a bug), a 401 or 403 (the key is valid), a value never
written, a body under another write's ETag, a version older than an acknowledged write (beyond
the declared staleness), a 404 for a key that exists, or a value for a key acknowledged deleted.
At the end, each key's final state in the store is compared with its last acknowledged
operation: a difference is a lost write.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["ok", "failed", "unknown"]
ABSENT: tuple[None, None] = (None, None)  # a state: (body, version); absent is (None, None)
STALENESS_SLACK_S = 1.0
WRONG_STATUSES = frozenset({500, 401, 403})


@dataclass(frozen=True, slots=True)
class Op:
    """A write or a delete. ``version`` is the ETag of an acknowledged PUT."""

    kind: Literal["put", "delete"]
    start: float
    end: float
    outcome: Outcome
    body: bytes | None = None
    version: int | None = None

    @property
    def state(self) -> tuple[bytes | None, int | None]:
        return (self.body, self.version) if self.kind == "put" else ABSENT


@dataclass(frozen=True, slots=True)
class Read:
    start: float
    end: float
    status: int
    body: bytes = b""
    version: int | None = None
    stale: bool = False
    age_s: float = 0.0


@dataclass
class KeyHistory:
    ops: list[Op] = field(default_factory=list)  # in order: one writer, no overlap
    reads: list[Read] = field(default_factory=list)
    _timeline: Timeline | None = None

    def timeline(self) -> Timeline:
        """The operations indexed for checking (built once, when they are all recorded)."""
        if self._timeline is None or self._timeline.count != len(self.ops):
            self._timeline = Timeline(self.ops)
        return self._timeline


class Timeline:
    """One key's operations that may have taken effect, with what finding a read's baseline
    needs: their end times (sorted: one writer), and the last acknowledged one up to each."""

    def __init__(self, ops: list[Op]) -> None:
        self.count = len(ops)
        self.ops = [op for op in ops if op.outcome != "failed"]
        self.ends = [op.end for op in self.ops]
        self.last_ok: list[int] = []  # index of the last "ok" op at or before each index
        last = -1
        for i, op in enumerate(self.ops):
            if op.outcome == "ok":
                last = i
            self.last_ok.append(last)

    def allowed_states(self, start: float, end: float) -> list[tuple[bytes | None, int | None]]:
        """What a fresh read over [start, end] may see (bodies, versions; ABSENT for none)."""
        before = bisect.bisect_left(self.ends, start) - 1
        ok = self.last_ok[before] if before >= 0 else -1
        states = [self.ops[ok].state if ok >= 0 else ABSENT]
        for op in self.ops[ok + 1 :]:
            if op.start >= end:
                break
            states.append(op.state)  # of unknown outcome since the baseline, or overlapping
        return states

    def states_since(self, since: float, end: float) -> list[tuple[bytes | None, int | None]]:
        """Every state current at some moment in [since, end] (for answers marked stale)."""
        states = self.allowed_states(since, since)
        for op in self.ops[bisect.bisect_left(self.ends, since) :]:
            if op.start >= end:
                break
            states.append(op.state)
        return states


def check_read(history: KeyHistory, read: Read, written: dict[bytes, Op]) -> str | None:
    """None when the read is consistent with the history; else what is wrong with it."""
    if read.status in WRONG_STATUSES:
        return f"status {read.status}"  # a bug (500) or a valid key refused (401, 403)
    if read.status not in (200, 404):
        return None  # unavailable (503, 504) is not wrong: counted apart
    if read.status == 200:
        op = written.get(read.body)
        if op is None or op.kind != "put":
            return "a value that was never written"
        if op.version is not None and read.version != op.version:
            return f"the body of version {op.version} under ETag {read.version}"
        seen: tuple[bytes | None, int | None] = (read.body, op.version)
    else:
        seen = ABSENT
    timeline = history.timeline()
    if read.stale:
        since = read.start - read.age_s - STALENESS_SLACK_S
        allowed = timeline.states_since(since, read.end)
    else:
        allowed = timeline.allowed_states(read.start, read.end)
    bodies = {body for body, _ in allowed}
    if seen[0] in bodies:
        return None
    newest = allowed[0]
    if seen == ABSENT:
        return f"404 for a key that exists (version {newest[1]} acknowledged before the read)"
    if newest == ABSENT:
        return f"version {seen[1]} of a key acknowledged deleted before the read"
    return f"version {seen[1]} older than version {newest[1]} acknowledged before the read"


def last_acknowledged(ops: list[Op]) -> list[tuple[bytes | None, int | None]]:
    """The final states the store may hold: the last acknowledged operation's, and those of
    the unknown-outcome operations after it."""
    return Timeline(ops).allowed_states(float("inf"), float("inf"))
