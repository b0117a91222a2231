"""API keys: who may call, in which namespace, with which scopes, at what rate.

A key looks like ``cg_<prefix>_<secret>``. The store keeps the prefix (to find the key) and a
SHA-256 of the secret (to check it, in constant time); the secret itself is shown once, when the
key is made, and never stored or logged. Every process keeps the table in memory and reloads it
every ``refresh_s``, so a revoked key stops working within that time in every process.

A key this process has not heard of (made a moment ago) is looked up in the store by its prefix
at once, one lookup per prefix at a time; a prefix the store does not know is remembered as
unknown for ``refresh_s``, and lookups are limited to ``LOOKUPS_PER_S`` per process (past that,
503 ``auth-unavailable``: the key cannot be checked now), so random keys cannot flood Postgres.
While the table cannot be loaded at all (Postgres down since start), the answer is 503
``auth-unavailable``, never 401: the key may well be valid.

Each key has a token bucket: ``rate_per_s`` refill, ``burst`` capacity. With
``rate_scope = "fleet"`` (the default) the bucket is shared by every process through Redis
(``app/ratelimit.py``); a refusal is remembered here until its token is due, so a flood of one
key costs Redis at most one call per process per refill. While Redis cannot answer within
``shared_rate_timeout_ms``, each process falls back to a bucket of its own at the key's whole
rate. With ``rate_scope = "process"`` only the per-process buckets count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app import tasks, telemetry
from app.errors import (
    AuthUnavailableError,
    ForbiddenError,
    RateLimitedError,
    StoreError,
    TierError,
    UnauthenticatedError,
)
from app.ratelimit import Limiter
from app.settings import AuthSettings
from app.singleflight import SingleFlight
from app.store import ApiKeyRow, Store

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "cg"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's namespace and scopes (or everything, with auth disabled)."""

    namespace: str
    scopes: frozenset[str]
    key_prefix: str | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(f"this API key lacks the {scope!r} scope")


@dataclass(frozen=True, slots=True)
class NewKey:
    token: str
    prefix: str
    secret_hash: bytes


def make_key() -> NewKey:
    """A fresh key: show ``token`` to its owner once; store only ``prefix`` and the hash."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)
    return NewKey(f"{KEY_PREFIX}_{prefix}_{secret}", prefix, hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    # Secrets are 192 random bits: a plain SHA-256 is enough (no dictionary to slow down).
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


@dataclass(slots=True)
class _Bucket:
    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a request may go now, else the seconds until one may."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate_per_s if self.rate_per_s > 0 else math.inf


MAX_VERIFIED = 10_000
MAX_UNKNOWN = 10_000  # prefixes remembered as unknown to the store
LOOKUPS_PER_S = 20.0  # store lookups of unknown prefixes, per process (burst: as many)
RELOAD_RETRY_S = 1.0  # while the table has never loaded: one attempt per this, on demand
LOOKUP_TIMEOUT_S = 1.0
PREFIX_CHARS = frozenset("0123456789abcdef")


@dataclass
class ApiKeys:
    """The key table of this process, and the rate limiters of its keys."""

    store: Store
    settings: AuthSettings
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, ApiKeyRow] = field(default_factory=dict)
    # Per key: the limits its bucket was made with, and the bucket (None: no limit).
    _buckets: dict[str, tuple[tuple[float, float], _Bucket | None]] = field(default_factory=dict)
    # Authorization headers already checked against the current table (cleared with it), so a
    # key's hash is computed once per table, not once per request.
    _verified: dict[bytes, Principal] = field(default_factory=dict)
    # Prefixes the store did not know, until when (clock time); dropped with the table too.
    _unknown: dict[str, float] = field(default_factory=dict)
    _lookups: SingleFlight[ApiKeyRow | None] = field(
        default_factory=lambda: SingleFlight("auth", max_waiters=1_000_000)
    )
    _lookup_budget: _Bucket | None = None
    # The fleet's bucket (None: per-process buckets only), and per key when its last refusal
    # said a token would be there again (clock time).
    limiter: Limiter | None = None
    _refused_until: dict[str, float] = field(default_factory=dict)
    _reload_tried_at: float = -1e9
    _task: asyncio.Task[None] | None = None
    loaded: bool = False

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    async def start(self) -> None:
        if not self.enabled:
            log.warning("authentication is DISABLED (CACHEGW_AUTH__ENABLED=false): anyone may call")
            return
        with contextlib.suppress(StoreError):
            await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self.reload()
            except StoreError as exc:
                log.warning("API key reload failed (keeping the last table): %s", exc)

    async def reload(self) -> None:
        self._reload_tried_at = self.clock()
        rows = await self.store.api_keys(deadline=asyncio.get_running_loop().time() + 2.0)
        self.use(rows)

    def use(self, rows: list[ApiKeyRow]) -> None:
        """Take ``rows`` as the key table; a key whose limits changed gets a fresh bucket."""
        self._keys = {row.prefix: row for row in rows if row.revoked_at is None}
        self._verified = {}
        self._unknown = {}
        for prefix, (limits, _) in list(self._buckets.items()):
            row = self._keys.get(prefix)
            if row is None or limits != self._limits(row):
                del self._buckets[prefix]
        self.loaded = True

    def _limits(self, row: ApiKeyRow | None) -> tuple[float, float]:
        rate = row.rate_per_s if row is not None and row.rate_per_s else self.settings.rate_per_s
        burst = row.burst if row is not None and row.burst else self.settings.burst
        return rate, float(burst)

    def verified(self, authorization: bytes | None) -> Principal | None:
        """The caller, when this exact header was checked against the current table (the hot
        path: no coroutine); else None, and ``authenticate`` decides."""
        if not self.enabled or authorization is None:
            return None
        return self._verified.get(authorization)

    async def authenticate(self, authorization: bytes | None) -> Principal:
        """The caller of a request from its ``Authorization`` header, or UnauthenticatedError
        (AuthUnavailableError when the key table cannot be loaded to tell)."""
        if not self.enabled:
            return Principal(self.settings.default_namespace, frozenset(SCOPES))
        if authorization is None:
            raise UnauthenticatedError("an API key is required: Authorization: Bearer <key>")
        known = self._verified.get(authorization)
        if known is not None:
            return known
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("use Authorization: Bearer <key>")
        parts = split_token(token.strip())
        if parts is None:
            raise UnauthenticatedError("the API key is not valid (unknown, revoked or mistyped)")
        if not self.loaded:
            await self._load_on_demand()
        row = self._keys.get(parts[0])
        if row is None:
            row = await self._look_up(parts[0])
        if row is None or not hmac.compare_digest(hash_secret(parts[1]), row.secret_hash):
            raise UnauthenticatedError("the API key is not valid (unknown, revoked or mistyped)")
        principal = Principal(row.namespace, frozenset(row.scopes), row.prefix)
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[authorization] = principal
        return principal

    async def _load_on_demand(self) -> None:
        """The table has never loaded (Postgres down since start): try now, at most once per
        ``RELOAD_RETRY_S`` (requests meanwhile share the attempt), else AuthUnavailableError."""
        if self.clock() - self._reload_tried_at >= RELOAD_RETRY_S:
            deadline = asyncio.get_running_loop().time() + 2.0
            with contextlib.suppress(StoreError, TimeoutError):
                await self._lookups.do(("reload",), self._reload_none, deadline=deadline)
        if not self.loaded:
            raise AuthUnavailableError(
                "the API key table cannot be loaded from the store; retry shortly"
            )

    async def _reload_none(self) -> None:
        await self.reload()

    async def _look_up(self, prefix: str) -> ApiKeyRow | None:
        """A key the table does not have: ask the store (made a moment ago?), within bounds."""
        now = self.clock()
        if len(prefix) != 8 or not PREFIX_CHARS.issuperset(prefix):
            return None  # not a prefix this gateway makes
        if self._unknown.get(prefix, 0.0) > now:
            return None
        if not self._lookups.in_flight(prefix):  # joining a lookup under way costs nothing
            budget = self._lookup_budget
            if budget is None:
                budget = self._lookup_budget = _Bucket(
                    LOOKUPS_PER_S, LOOKUPS_PER_S, LOOKUPS_PER_S, now
                )
            if budget.take(now) > 0:
                # Over the lookup budget (a flood of keys nobody made): the key cannot be
                # checked now, which is not the same as invalid.
                raise AuthUnavailableError("too many unknown API keys to check; retry shortly")
        deadline = asyncio.get_running_loop().time() + LOOKUP_TIMEOUT_S
        try:
            row = await self._lookups.do(
                prefix, functools.partial(self.store.api_key, prefix, deadline=deadline),
                deadline=deadline,
            )  # fmt: skip
        except (StoreError, TimeoutError) as exc:
            raise AuthUnavailableError("the API key cannot be checked against the store") from exc
        if row is None or row.revoked_at is not None:
            if len(self._unknown) >= MAX_UNKNOWN:
                self._unknown.clear()
            self._unknown[prefix] = now + self.settings.refresh_s
            return None
        self._keys[prefix] = row
        return row

    def admit(self, principal: Principal) -> bool:
        """Decide here when this process can: True when admitted (no limit, or per-process
        buckets), ``RateLimitedError`` when refused (the key's last shared refusal still
        stands); False when the fleet's bucket must be asked (``admit_shared``)."""
        prefix = principal.key_prefix
        if prefix is None:
            return True
        bucket = self._bucket(prefix)
        if bucket is None:
            return True
        if self.limiter is None:
            self._take_local(bucket)
            return True
        now = self.clock()
        refused_until = self._refused_until.get(prefix)
        if refused_until is not None:
            if now < refused_until:
                raise _limited(refused_until - now)
            del self._refused_until[prefix]
        return False

    async def admit_shared(self, principal: Principal) -> None:
        """Take a token of the key's bucket shared by the fleet, or ``RateLimitedError`` with
        the wait; this process's own bucket decides while Redis cannot answer in time."""
        prefix = principal.key_prefix
        bucket = None if prefix is None else self._bucket(prefix)
        if prefix is None or bucket is None or self.limiter is None:
            return
        deadline = asyncio.get_running_loop().time() + self.settings.shared_rate_timeout_ms / 1000
        try:
            wait_s = await self.limiter.take(
                prefix, rate_per_s=bucket.rate_per_s, burst=bucket.burst, deadline=deadline
            )
        except TierError as exc:
            telemetry.RATE_DECISIONS.labels(bucket="process").inc()
            log.debug("shared rate bucket unavailable, this process decides: %s", exc)
            self._take_local(bucket)
            return
        telemetry.RATE_DECISIONS.labels(bucket="fleet").inc()
        if wait_s > 0:
            if len(self._refused_until) >= MAX_VERIFIED:
                self._refused_until.clear()
            self._refused_until[prefix] = self.clock() + wait_s
            raise _limited(wait_s)

    def _bucket(self, prefix: str) -> _Bucket | None:
        """The key's per-process bucket, made on first use (None: the key has no limit)."""
        entry = self._buckets.get(prefix)
        if entry is None:
            limits = rate, burst = self._limits(self._keys.get(prefix))
            bucket = _Bucket(rate, burst, burst, self.clock()) if rate > 0 else None
            entry = self._buckets[prefix] = (limits, bucket)
        return entry[1]

    def _take_local(self, bucket: _Bucket) -> None:
        wait_s = bucket.take(self.clock())
        if wait_s > 0:
            raise _limited(wait_s)


def _limited(wait_s: float) -> RateLimitedError:
    return RateLimitedError(
        "this API key is over its request rate", retry_after_s=max(1, math.ceil(wait_s))
    )
