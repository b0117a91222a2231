"""API keys without a database: token syntax, hashing, scopes and the token bucket."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from app.auth import ApiKeys, Principal, hash_secret, make_key, split_token
from app.errors import (
    AuthUnavailableError,
    ForbiddenError,
    RateLimitedError,
    TierUnavailableError,
    UnauthenticatedError,
)
from app.settings import AuthSettings
from app.store import ApiKeyRow, Store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(prefix: str, secret: str, **fields: Any) -> ApiKeyRow:
    values: dict[str, Any] = {
        "prefix": prefix, "secret_hash": hash_secret(secret), "namespace": "team-a",
        "scopes": ("read",), "rate_per_s": None, "burst": None, "description": None,
        "created_at": datetime.now(UTC), "revoked_at": None,
    }  # fmt: skip
    return ApiKeyRow(**(values | fields))


class KeyStore:
    """What the key table asks of the store: every row, or one by its prefix."""

    def __init__(self, rows: list[ApiKeyRow]) -> None:
        self.rows = rows
        self.lookups = 0

    async def api_keys(self, *, deadline: float) -> list[ApiKeyRow]:
        return list(self.rows)

    async def api_key(self, prefix: str, *, deadline: float) -> ApiKeyRow | None:
        self.lookups += 1
        return next((r for r in self.rows if r.prefix == prefix), None)


def keys(*rows: ApiKeyRow, clock: Clock | None = None, **settings: Any) -> ApiKeys:
    store = KeyStore(list(rows))
    table = ApiKeys(cast(Store, store), AuthSettings(**settings), clock=clock or Clock())
    table.use(list(rows))
    return table


def test_split_token() -> None:
    assert split_token("cg_abcd1234_s3cr_et") == ("abcd1234", "s3cr_et")
    for bad in ("", "cg", "cg_", "cg__secret", "cg_abcd_", "xx_abcd_secret", "abcd_secret"):
        assert split_token(bad) is None, bad


async def test_a_made_key_authenticates_and_only_its_hash_is_kept() -> None:
    new = make_key()
    assert new.token.startswith(f"cg_{new.prefix}_")
    secret = new.token.split("_", 2)[2]  # the secret may itself contain "_"
    assert new.secret_hash == hash_secret(secret)
    assert secret.encode() not in new.secret_hash
    table = keys(row(new.prefix, secret))
    principal = await table.authenticate(f"Bearer {new.token}".encode())
    assert (principal.namespace, principal.scopes, principal.key_prefix) == (
        "team-a", frozenset({"read"}), new.prefix,
    )  # fmt: skip
    assert (await table.authenticate(f"bearer   {new.token}  ".encode())).namespace == "team-a"


@pytest.mark.parametrize(
    "header",
    [
        None, b"", b"Bearer", b"Bearer ", b"Basic cg_abcd1234_secret", b"Token cg_abcd1234_secret",
        b"Bearer cg_abcd1234_wrong", b"Bearer cg_unknown1_secret", b"Bearer abcd1234",
    ],
)  # fmt: skip
async def test_what_does_not_authenticate(header: bytes | None) -> None:
    table = keys(row("abcd1234", "secret"))
    with pytest.raises(UnauthenticatedError) as caught:
        await table.authenticate(header)
    assert b"secret" not in str(caught.value).encode()


async def test_a_revoked_key_does_not_authenticate() -> None:
    table = keys(row("abcd1234", "secret", revoked_at=datetime.now(UTC)))
    with pytest.raises(UnauthenticatedError):
        await table.authenticate(b"Bearer cg_abcd1234_secret")


async def test_scopes() -> None:
    principal = await keys(row("abcd1234", "secret", scopes=("read", "write"))).authenticate(
        b"Bearer cg_abcd1234_secret"
    )
    principal.require("read")
    principal.require("write")
    with pytest.raises(ForbiddenError, match="admin"):
        principal.require("admin")


async def test_disabled_auth_gives_everyone_the_default_namespace_and_every_scope() -> None:
    principal = await keys(enabled=False, default_namespace="shared").authenticate(None)
    assert principal.namespace == "shared"
    assert principal.scopes == {"read", "write", "admin"}
    assert principal.key_prefix is None


async def test_token_bucket_burst_then_refill() -> None:
    clock = Clock()
    table = keys(row("abcd1234", "secret", rate_per_s=2.0, burst=3), clock=clock)
    principal = await table.authenticate(b"Bearer cg_abcd1234_secret")
    for _ in range(3):
        table.admit(principal)
    with pytest.raises(RateLimitedError) as caught:
        table.admit(principal)
    assert caught.value.retry_after_s == 1  # half a second, rounded up to whole seconds
    clock.now += 0.5
    table.admit(principal)  # one token back after 1/rate seconds
    with pytest.raises(RateLimitedError):
        table.admit(principal)
    clock.now += 60
    for _ in range(3):  # refills to the burst, never beyond
        table.admit(principal)
    with pytest.raises(RateLimitedError):
        table.admit(principal)


async def test_default_limits_apply_and_zero_means_unlimited() -> None:
    clock = Clock()
    limited = keys(row("abcd1234", "secret"), clock=clock, rate_per_s=0.1, burst=1)
    principal = await limited.authenticate(b"Bearer cg_abcd1234_secret")
    limited.admit(principal)
    with pytest.raises(RateLimitedError) as caught:
        limited.admit(principal)
    assert caught.value.retry_after_s == 10
    unlimited = keys(row("abcd1234", "secret"), clock=clock)
    principal = await unlimited.authenticate(b"Bearer cg_abcd1234_secret")
    for _ in range(10_000):
        unlimited.admit(principal)


async def test_a_changed_limit_takes_effect_at_the_next_reload() -> None:
    clock = Clock()
    table = keys(row("abcd1234", "secret", rate_per_s=1.0, burst=1), clock=clock)
    principal = await table.authenticate(b"Bearer cg_abcd1234_secret")
    table.admit(principal)
    with pytest.raises(RateLimitedError):
        table.admit(principal)
    table.use([row("abcd1234", "secret", rate_per_s=1.0, burst=5)])
    for _ in range(5):
        table.admit(principal)


async def test_a_checked_key_is_remembered_until_the_table_reloads() -> None:
    table = keys(row("abcd1234", "secret"))
    header = b"Bearer cg_abcd1234_secret"
    assert await table.authenticate(header) is await table.authenticate(header)  # checked once
    revoked = [row("abcd1234", "secret", revoked_at=datetime.now(UTC))]
    cast(KeyStore, table.store).rows = revoked
    table.use(revoked)
    with pytest.raises(UnauthenticatedError):
        await table.authenticate(header)


async def test_a_failed_check_is_not_remembered() -> None:
    table = keys()
    header = b"Bearer cg_abcd1234_secret"
    with pytest.raises(UnauthenticatedError):
        await table.authenticate(header)
    table.use([row("abcd1234", "secret")])  # the key is made afterwards
    assert (await table.authenticate(header)).key_prefix == "abcd1234"


async def test_a_key_the_table_does_not_have_is_looked_up_once_and_kept() -> None:
    table = keys()
    store = cast(KeyStore, table.store)
    store.rows = [row("abcd1234", "secret")]  # made after the table was loaded
    header = b"Bearer cg_abcd1234_secret"
    assert (await table.authenticate(header)).key_prefix == "abcd1234"
    assert (await table.authenticate(b"Bearer  cg_abcd1234_secret")).key_prefix == "abcd1234"
    assert store.lookups == 1


async def test_unknown_prefixes_are_remembered_and_lookups_are_budgeted() -> None:
    clock = Clock()
    table = keys(clock=clock)
    store = cast(KeyStore, table.store)
    for _ in range(5):
        with pytest.raises(UnauthenticatedError):
            await table.authenticate(b"Bearer cg_00000000_x")
    assert store.lookups == 1  # remembered as unknown for refresh_s
    refused = 0
    for i in range(100):
        with pytest.raises((UnauthenticatedError, AuthUnavailableError)) as caught:
            await table.authenticate(f"Bearer cg_{i + 1:08x}_x".encode())
        refused += caught.type is AuthUnavailableError  # over budget: cannot be checked now
    assert store.lookups <= 1 + 20  # the per-process lookup budget's burst
    assert refused >= 79
    with pytest.raises(UnauthenticatedError):
        await table.authenticate(b"Bearer cg_nothex!!_x")  # not a prefix we make: not asked
    assert store.lookups <= 21


class SharedBuckets:
    """The fleet's buckets as ``app/ratelimit.py`` keeps them in Redis (one per key, refilled by
    one clock, a token taken only when there is one), or down: ``TierUnavailableError``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.down = False
        self.calls = 0
        self._buckets: dict[str, tuple[float, float]] = {}

    async def take(self, prefix: str, *, rate_per_s: float, burst: float, deadline: float) -> float:
        self.calls += 1
        if self.down:
            raise TierUnavailableError("primary down", route="primary")
        tokens, at = self._buckets.get(prefix, (burst, self.clock.now))
        tokens = min(burst, tokens + (self.clock.now - at) * rate_per_s)
        wait_s = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait_s = (1 - tokens) / rate_per_s
        self._buckets[prefix] = (tokens, self.clock.now)
        return wait_s


async def admitted(table: ApiKeys, principal: Principal, count: int) -> int:
    """How many of ``count`` requests the table admits, as the middleware asks it."""
    passed = 0
    for _ in range(count):
        try:
            if not table.admit(principal):
                await table.admit_shared(principal)
        except RateLimitedError:
            continue
        passed += 1
    return passed


def fleet(clock: Clock, shared: SharedBuckets, count: int, **fields: Any) -> list[ApiKeys]:
    tables = [keys(row("abcd1234", "secret", **fields), clock=clock) for _ in range(count)]
    for table in tables:
        table.limiter = shared
    return tables


async def test_a_shared_bucket_limits_the_fleet_as_a_whole() -> None:
    clock = Clock()
    shared = SharedBuckets(clock)
    tables = fleet(clock, shared, 3, rate_per_s=50.0, burst=10)
    principal = await tables[0].authenticate(b"Bearer cg_abcd1234_secret")
    passed = 0
    for _ in range(1000):  # 10 s, each process offered 100 requests a second
        for table in tables:
            passed += await admitted(table, principal, 1)
        clock.now += 0.01
    assert abs(passed - (10 + 50 * 10)) <= 1  # the burst, then the rate: not three times it


async def test_a_refusal_is_kept_until_its_token_is_due_without_asking_redis_again() -> None:
    clock = Clock()
    shared = SharedBuckets(clock)
    (table,) = fleet(clock, shared, 1, rate_per_s=2.0, burst=1)
    principal = await table.authenticate(b"Bearer cg_abcd1234_secret")
    assert await admitted(table, principal, 1) == 1
    assert await admitted(table, principal, 1000) == 0
    assert shared.calls == 2  # the first refusal said 0.5 s; the rest were refused here
    clock.now += 0.5
    assert await admitted(table, principal, 1) == 1
    assert shared.calls == 3


async def test_while_redis_cannot_answer_each_process_keeps_the_whole_rate() -> None:
    clock = Clock()
    shared = SharedBuckets(clock)
    shared.down = True
    tables = fleet(clock, shared, 3, rate_per_s=1.0, burst=5)
    principal = await tables[0].authenticate(b"Bearer cg_abcd1234_secret")
    assert [await admitted(t, principal, 100) for t in tables] == [5, 5, 5]
    shared.down = False
    clock.now += 100
    assert sum([await admitted(t, principal, 100) for t in tables]) == 5  # shared again
