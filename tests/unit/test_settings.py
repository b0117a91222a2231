from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings, parse_nodes


def test_defaults_are_valid() -> None:
    settings = Settings()
    assert settings.read_deadline_ms == 250
    assert settings.redis.startup_nodes == [("127.0.0.1", 7000)]
    assert settings.pg.sqlalchemy_url.startswith("postgresql+asyncpg://")


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEGW_REDIS__NODES", "10.0.0.1:7000, 10.0.0.2:7001")
    monkeypatch.setenv("CACHEGW_PG__DSN", "postgresql://u:secret@db:5432/x")
    monkeypatch.setenv("CACHEGW_READ_DEADLINE_MS", "100")
    settings = Settings()
    assert settings.redis.startup_nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert settings.read_deadline_ms == 100
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("CACHEGW_REDIS__NODES", "no-port", "redis.nodes"),
        ("CACHEGW_REDIS__NODES", "h:99999", "redis.nodes"),
        ("CACHEGW_READ_DEADLINE_MS", "0", "read_deadline_ms"),
        ("CACHEGW_LIMITS__MAX_VALUE_BYTES", "-1", "limits.max_value_bytes"),
        ("CACHEGW_PG__POOL_MIN_SIZE", "50", "pg"),
        ("CACHEGW_AUTH__DEFAULT_NAMESPACE", "has space", "auth.default_namespace"),
    ],
)
def test_bad_values_fail_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert named in str(info.value)


def test_ipv6_nodes() -> None:
    assert parse_nodes("[::1]:7000") == [("::1", 7000)]


def test_the_feed_defaults_to_notify_and_writes_skip_the_notify_only_in_relay_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    assert settings.feed.mode == "notify"
    assert settings.pg.feed_notify
    monkeypatch.setenv("CACHEGW_FEED__MODE", "relay")
    assert not Settings().pg.feed_notify


def test_a_relay_lost_after_shorter_than_two_heartbeats_is_refused() -> None:
    with pytest.raises(ValidationError, match="relay_lost_after_ms"):
        Settings(feed={"relay_heartbeat_ms": 600, "relay_lost_after_ms": 1000})
