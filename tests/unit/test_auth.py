"""API keys without a database: token syntax, hashing, scopes and the token bucket."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from app.auth import ApiKeys, hash_secret, make_key, split_token
from app.errors import ForbiddenError, RateLimitedError, UnauthenticatedError
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


def keys(*rows: ApiKeyRow, clock: Clock | None = None, **settings: Any) -> ApiKeys:
    table = ApiKeys(cast(Store, None), AuthSettings(**settings), clock=clock or Clock())
    table.use(list(rows))
    return table


def test_split_token() -> None:
    assert split_token("cg_abcd1234_s3cr_et") == ("abcd1234", "s3cr_et")
    for bad in ("", "cg", "cg_", "cg__secret", "cg_abcd_", "xx_abcd_secret", "abcd_secret"):
        assert split_token(bad) is None, bad


def test_a_made_key_authenticates_and_only_its_hash_is_kept() -> None:
    new = make_key()
    assert new.token.startswith(f"cg_{new.prefix}_")
    secret = new.token.split("_", 2)[2]  # the secret may itself contain "_"
    assert new.secret_hash == hash_secret(secret)
    assert secret.encode() not in new.secret_hash
    table = keys(row(new.prefix, secret))
    principal = table.authenticate(f"Bearer {new.token}".encode())
    assert (principal.namespace, principal.scopes, principal.key_prefix) == (
        "team-a", frozenset({"read"}), new.prefix,
    )  # fmt: skip
    assert table.authenticate(f"bearer   {new.token}  ".encode()).namespace == "team-a"


@pytest.mark.parametrize(
    "header",
    [
        None, b"", b"Bearer", b"Bearer ", b"Basic cg_abcd1234_secret", b"Token cg_abcd1234_secret",
        b"Bearer cg_abcd1234_wrong", b"Bearer cg_unknown1_secret", b"Bearer abcd1234",
    ],
)  # fmt: skip
def test_what_does_not_authenticate(header: bytes | None) -> None:
    table = keys(row("abcd1234", "secret"))
    with pytest.raises(UnauthenticatedError) as caught:
        table.authenticate(header)
    assert b"secret" not in str(caught.value).encode()


def test_a_revoked_key_does_not_authenticate() -> None:
    table = keys(row("abcd1234", "secret", revoked_at=datetime.now(UTC)))
    with pytest.raises(UnauthenticatedError):
        table.authenticate(b"Bearer cg_abcd1234_secret")


def test_scopes() -> None:
    principal = keys(row("abcd1234", "secret", scopes=("read", "write"))).authenticate(
        b"Bearer cg_abcd1234_secret"
    )
    principal.require("read")
    principal.require("write")
    with pytest.raises(ForbiddenError, match="admin"):
        principal.require("admin")


def test_disabled_auth_gives_everyone_the_default_namespace_and_every_scope() -> None:
    principal = keys(enabled=False, default_namespace="shared").authenticate(None)
    assert principal.namespace == "shared"
    assert principal.scopes == {"read", "write", "admin"}
    assert principal.key_prefix is None


def test_token_bucket_burst_then_refill() -> None:
    clock = Clock()
    table = keys(row("abcd1234", "secret", rate_per_s=2.0, burst=3), clock=clock)
    principal = table.authenticate(b"Bearer cg_abcd1234_secret")
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


def test_default_limits_apply_and_zero_means_unlimited() -> None:
    clock = Clock()
    limited = keys(row("abcd1234", "secret"), clock=clock, rate_per_s=0.1, burst=1)
    principal = limited.authenticate(b"Bearer cg_abcd1234_secret")
    limited.admit(principal)
    with pytest.raises(RateLimitedError) as caught:
        limited.admit(principal)
    assert caught.value.retry_after_s == 10
    unlimited = keys(row("abcd1234", "secret"), clock=clock)
    principal = unlimited.authenticate(b"Bearer cg_abcd1234_secret")
    for _ in range(10_000):
        unlimited.admit(principal)


def test_a_changed_limit_takes_effect_at_the_next_reload() -> None:
    clock = Clock()
    table = keys(row("abcd1234", "secret", rate_per_s=1.0, burst=1), clock=clock)
    principal = table.authenticate(b"Bearer cg_abcd1234_secret")
    table.admit(principal)
    with pytest.raises(RateLimitedError):
        table.admit(principal)
    table.use([row("abcd1234", "secret", rate_per_s=1.0, burst=5)])
    for _ in range(5):
        table.admit(principal)


def test_a_checked_key_is_remembered_until_the_table_reloads() -> None:
    table = keys(row("abcd1234", "secret"))
    header = b"Bearer cg_abcd1234_secret"
    assert table.authenticate(header) is table.authenticate(header)  # checked once
    table.use([row("abcd1234", "secret", revoked_at=datetime.now(UTC))])
    with pytest.raises(UnauthenticatedError):
        table.authenticate(header)


def test_a_failed_check_is_not_remembered() -> None:
    table = keys()
    header = b"Bearer cg_abcd1234_secret"
    with pytest.raises(UnauthenticatedError):
        table.authenticate(header)
    table.use([row("abcd1234", "secret")])  # the key is made afterwards
    assert table.authenticate(header).key_prefix == "abcd1234"
