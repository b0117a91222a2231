"""The entry every tier carries, and its encoding as one Redis string.

A cached record is one header line and the raw value::

    V <seq> <version> <stored_at_ms> <expires_at_ms or 0> <content-type>\\n<value bytes>

and a tombstone, left by a delete or an invalidate, is ``T <seq>\\n``. ``seq`` is the order of
cache writes for the key: the entry's version after a write, and a newer number from the same
sequence after an invalidate (so a fresh fill outranks every copy older than the invalidate).
The conditional set below compares ``seq`` only, reading the first bytes with GETRANGE so that
a large value is never copied into Lua.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from app.cluster.slots import key_slot, tag_for_slot

# KEYS[1] key; ARGV[1] seq; ARGV[2] record; ARGV[3] time to live in ms; ARGV[4] "1" to refresh.
# Writes when the key holds an older seq, or a tombstone of the same seq and the record is an
# entry (the fresh fill from the store after an invalidate carries the invalidate's seq), or, when
# refreshing (early refresh), an entry of the same seq (a new life for the same version).
# Returns 1 when written, 0 when not.
SET_IF_NEWER = b"""
local head = redis.call('GETRANGE', KEYS[1], 0, 23)
if head ~= '' then
  local kind, current = string.match(head, '^(%u) (%d+)')
  current = tonumber(current)
  local seq = tonumber(ARGV[1])
  local entry = string.sub(ARGV[2], 1, 1) == 'V'
  if current and (current > seq or (current == seq and
      not (entry and (kind == 'T' or ARGV[4] == '1')))) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS[1] lock; ARGV[1] the holder's token. Deletes the lock only if it is still ours.
UNLOCK = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] key; KEYS[2] its lock. What a process waiting for another's load looks at.
POLL_FILL = b"""
return {redis.call('GET', KEYS[1]), redis.call('EXISTS', KEYS[2])}
"""


def now_ms() -> int:
    """The wall clock in milliseconds: the clock of ``Entry``'s ``stored_at_ms`` and
    ``expires_at_ms``, shared by every process (a monotonic clock is not)."""
    return time.time_ns() // 1_000_000


class Entry(NamedTuple):
    """A value as the store holds it, with what caches need to judge its freshness.

    A named tuple, not a dataclass: a tuple of bytes, str and ints is untracked by the cyclic
    garbage collector, so thousands of cached entries add nothing to its pauses.
    """

    value: bytes
    content_type: str
    version: int
    seq: int
    stored_at_ms: int
    expires_at_ms: int | None = None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and self.expires_at_ms <= now_ms

    def ttl_ms(self, now_ms: int) -> int | None:
        return None if self.expires_at_ms is None else self.expires_at_ms - now_ms


class Tombstone(NamedTuple):
    """A delete or invalidate with sequence ``seq``: older fills must not land."""

    seq: int


def lock_key(rkey: bytes) -> bytes | None:
    """A key for the load lock of ``rkey`` that hashes to the same slot (None if none does).

    It carries a NUL byte, which no caller's key may contain, so it is never a caller's key.
    """
    slot = key_slot(rkey)
    for candidate in (rkey + b"\x00lock", b"{" + rkey + b"}\x00lock"):
        if key_slot(candidate) == slot:
            return candidate
    return None


# KEYS[1] a node's marker; ARGV[1] "<marked_at> <oldest_pending_at>"; ARGV[2] the mode;
# ARGV[3] (mode "repaired") the marker as it was when the repair began.
# The marker starts with the run_id of the process that holds it when it is written, read by the
# script itself: a marker that names another process came back with old data (a snapshot, a
# replica's copy). Mode "mark": write it unless it names another process (then return it).
# Mode "repaired": write it if it is still as the repair found it, or names this process (another
# gateway repaired it meanwhile); else return it (the node came back again during the repair).
# Returns nil when written.
MARK = b"""
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local current = redis.call('GET', KEYS[1])
local ours = current and string.sub(current, 1, #run_id) == run_id
if current and not ours then
  if ARGV[2] ~= 'repaired' or current ~= ARGV[3] then return current end
elseif not current and ARGV[2] == 'repaired' and ARGV[3] ~= '' then
  return ''
end
redis.call('SET', KEYS[1], run_id .. ' ' .. ARGV[1])
return false
"""

# KEYS[1] the repair lease of a node (``repair_lease_key``), ARGV[1] a process's token, ARGV[2]
# the lease in ms. Taken when free (or only a finished repair's record), renewed when the token's
# own; 1 if the caller holds it now.
LEASE = b"""
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, 5) == 'done ' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] a node's marker. 1 if it names the Redis process that holds it (written since that
# process started: by a repair, or as its first marker), else 0.
MARK_IS_OWN = b"""
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #run_id) == run_id then return 1 end
return 0
"""

# KEYS[1] a repair lease, ARGV[1] its holder's token, ARGV[2] ms. The holder's repair is over:
# the lease becomes the record ``done <token>`` for a while, which the waiting processes read.
LEASE_DONE = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'done ' .. ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] a key of the gateway's. Removes it unless it is a tombstone (a tombstone only ever
# keeps an older value out; removing one could let an in-flight fill of an older value land).
UNLESS_TOMBSTONE_UNLINK = b"""
if redis.call('GETRANGE', KEYS[1], 0, 1) ~= 'T ' then return redis.call('UNLINK', KEYS[1]) end
return 0
"""


def marker_key(prefix: str, slot: int) -> bytes:
    """The key of the marker of the node that owns ``slot``; a NUL byte first, so it is never a
    caller's key, nor matched by the gateway's key pattern."""
    return b"\x00" + prefix.encode() + b":marker:{" + tag_for_slot(slot) + b"}"


def repair_lease_key(prefix: str, slot: int) -> bytes:
    """The key of the lease on repairing the node that owns ``slot`` (one process of the fleet
    repairs it at a time); in the marker's slot, outside the gateway's key pattern as it is."""
    return b"\x00" + prefix.encode() + b":repair-lease:{" + tag_for_slot(slot) + b"}"


def redis_key(prefix: str, namespace: str, key: str) -> bytes:
    """The Redis key. A ``{tag}`` in the caller's key still chooses the slot, as in Redis."""
    return f"{prefix}:{namespace}:{key}".encode()


def encode_entry(entry: Entry) -> bytes:
    head = (
        f"V {entry.seq} {entry.version} {entry.stored_at_ms} {entry.expires_at_ms or 0} "
        f"{entry.content_type}\n"
    )
    return head.encode("latin-1") + entry.value


def encode_tombstone(seq: int) -> bytes:
    return b"T %d\n" % seq


def decode_entry(raw: bytes) -> Entry | None:
    """``decode`` of a record that is an entry; None for a tombstone or what is not ours. The
    hot path of batch reads: one split, one tuple."""
    if raw[:2] != b"V ":
        return None
    newline = raw.find(b"\n")
    if newline < 0:
        return None
    parts = raw[2:newline].split(b" ", 4)
    if len(parts) != 5:
        return None
    seq, version, stored_at_ms, expires_at_ms, content_type = parts
    try:
        expires = int(expires_at_ms)
        return Entry._make(
            (raw[newline + 1 :], _content_type(content_type), int(version), int(seq),
             int(stored_at_ms), expires or None)
        )  # fmt: skip
    except ValueError:
        return None


def _content_type(raw: bytes) -> str:
    known = _CONTENT_TYPES.get(raw)
    if known is None:
        known = raw.decode("latin-1")
        if len(_CONTENT_TYPES) < 256:  # the few a deployment uses, not one per caller's whim
            _CONTENT_TYPES[raw] = known
    return known


_CONTENT_TYPES: dict[bytes, str] = {}


def decode(raw: bytes) -> Entry | Tombstone:
    """Parse a record; ``ValueError`` when it is not one of ours."""
    if raw[:2] == b"T ":
        newline = raw.find(b"\n")
        if newline < 0:
            raise ValueError("tombstone without a header line")
        return Tombstone(int(raw[2:newline]))
    entry = decode_entry(raw)
    if entry is None:
        raise ValueError("not a record of ours (unknown kind or malformed header)")
    return entry
