"""asyncpg's errors at the store's edge: what each becomes, and what passes through unchanged."""

from __future__ import annotations

import asyncpg
import pytest

from app.errors import StoreUnavailableError, WriteOutcomeUnknownError
from app.store import map_asyncpg_errors

NO_REPLY = [
    TimeoutError(),
    ConnectionResetError(),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.InternalClientError("bad state"),
]


@pytest.mark.parametrize("exc", NO_REPLY, ids=lambda e: type(e).__name__)
def test_no_reply_is_unavailable_before_sending(exc: Exception) -> None:
    with pytest.raises(StoreUnavailableError) as caught, map_asyncpg_errors("store: get"):
        raise exc
    assert type(caught.value) is StoreUnavailableError
    assert caught.value.__cause__ is exc


@pytest.mark.parametrize("exc", NO_REPLY, ids=lambda e: type(e).__name__)
def test_no_reply_to_a_sent_write_is_an_unknown_outcome(exc: Exception) -> None:
    with pytest.raises(WriteOutcomeUnknownError) as caught, map_asyncpg_errors("s", sent=True):
        raise exc
    assert caught.value.__cause__ is exc


def test_a_refusal_by_postgres_was_rolled_back_even_for_a_sent_write() -> None:
    exc = asyncpg.exceptions.SerializationError("could not serialize")
    with pytest.raises(StoreUnavailableError) as caught, map_asyncpg_errors("s", sent=True):
        raise exc
    assert type(caught.value) is StoreUnavailableError
    assert str(caught.value) == "s: SerializationError"


def test_the_messages_say_what_happened() -> None:
    slow = map_asyncpg_errors("store: get", deadline_means="no connection in time")
    with pytest.raises(StoreUnavailableError, match=r"^store: get: no connection in time$"), slow:
        raise TimeoutError
    unknown = r"^store: put sent, no reply \(timed out\): it may have committed$"
    with (
        pytest.raises(WriteOutcomeUnknownError, match=unknown),
        map_asyncpg_errors("store: put", sent=True),
    ):
        raise TimeoutError


@pytest.mark.parametrize("exc", [TypeError("x"), KeyError("x"), ValueError("x")])
def test_what_is_not_the_store_s_passes_through_unchanged(exc: Exception) -> None:
    with pytest.raises(type(exc)) as caught, map_asyncpg_errors("store: get", sent=True):
        raise exc
    assert caught.value is exc


def test_pool_sessions_turn_the_outbox_notify_off_in_relay_mode_only() -> None:
    from app.settings import Settings
    from app.store import Store

    relay = Store(Settings(feed={"mode": "relay"}).pg)._pool_settings()
    assert relay["cachegw.feed_notify"] == "off"
    notify = Store(Settings(feed={"mode": "notify"}).pg)._pool_settings()
    assert "cachegw.feed_notify" not in notify
    assert notify["statement_timeout"] == relay["statement_timeout"]
