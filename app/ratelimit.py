"""Fleet-wide request rates per API key: one token bucket per key in Redis, shared by every process.

A bucket is a hash in the slot of its key's prefix (``<key_prefix>rate:{<api key prefix>}``),
updated by one script on that slot's primary, so the fleet's admissions of one key are counted
in one place whatever the number of processes. The script refills by the node's own clock
(``TIME``), so the processes' clocks do not matter. Idle buckets expire once they would be full.

The caller (``app/auth.py``) keeps a per-process bucket beside it, used only while Redis cannot
answer in time: then each process admits up to the key's whole rate, so a fleet of N may admit N
times the rate for as long as the slot's primary is out (README, "Rate limits").
"""

from __future__ import annotations

from typing import Protocol

from app.cluster.slot_router import SlotRouter
from app.errors import TierUnavailableError

# KEYS[1] the bucket; ARGV rate (tokens/s), burst (tokens). Returns 0 (admitted, one token taken)
# or the whole milliseconds until a token will be there (nothing taken).
TAKE = b"""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  at = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class Limiter(Protocol):
    """What ``ApiKeys`` needs of a shared limiter: take one token of a key's bucket, answering
    0 or the seconds until one will be there; ``TierError`` when it cannot say in time."""

    async def take(
        self, prefix: str, *, rate_per_s: float, burst: float, deadline: float
    ) -> float: ...


class FleetLimiter:
    """Token buckets in the Redis Cluster, through the gateway's slot router (its breakers,
    deadlines and redirects)."""

    def __init__(self, slots: SlotRouter, *, key_prefix: str) -> None:
        self.slots = slots
        self.key_prefix = key_prefix

    def bucket_key(self, prefix: str) -> bytes:
        return f"{self.key_prefix}rate:{{{prefix}}}".encode()

    async def take(self, prefix: str, *, rate_per_s: float, burst: float, deadline: float) -> float:
        key = self.bucket_key(prefix)
        wait_ms = await self.slots.execute(
            key, b"EVAL", TAKE, 1, key, repr(rate_per_s), repr(float(burst)), deadline=deadline
        )
        if not isinstance(wait_ms, int) or wait_ms < 0:
            raise TierUnavailableError(
                f"rate bucket: unexpected reply {wait_ms!r}", route="primary"
            )
        return wait_ms / 1000
