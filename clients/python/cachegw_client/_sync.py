"""``Client``: the key operations, blocking. Requests and answers are ``_calls``'s; retry
decisions are ``_retry``'s; this module only sends and sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar

import httpx

from cachegw_client import _calls
from cachegw_client._batch import BatchOp, OpResult
from cachegw_client._errors import transport_error
from cachegw_client._etags import ETag
from cachegw_client._models import Entry, WriteResult
from cachegw_client._retry import RetryPolicy

T = TypeVar("T")


class Client:
    """A blocking client of one gateway (``base_url``), sending ``api_key`` as a bearer token.

    ``timeout_s`` bounds each attempt; ``retry`` says when a call is tried again (see
    ``RetryPolicy``); ``transport`` replaces httpx's (TLS settings, a mock in tests); ``sleep``
    waits between attempts. Close it with ``close()``, or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_calls.default_headers(api_key), timeout=timeout_s,
            transport=transport,
        )  # fmt: skip
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

    def get(
        self,
        key: str,
        *,
        min_version: int | str | None = None,
        max_stale_s: int | None = None,
        stale_if_error_s: int | None = None,
        no_cache: bool = False,
        only_if_cached: bool = False,
    ) -> Entry:
        """The key's value; ``NotFoundError`` when the store has none. ``min_version``: no answer
        older than that version (``MinVersionUnavailableError`` if even the store's is)."""
        return self._run(
            _calls.get(
                key,
                min_version=min_version,
                max_stale_s=max_stale_s,
                stale_if_error_s=stale_if_error_s,
                no_cache=no_cache,
                only_if_cached=only_if_cached,
            )
        )

    def put(
        self,
        key: str,
        value: bytes,
        *,
        ttl_s: int | None = None,
        content_type: str | None = None,
        if_match: ETag | None = None,
        if_none_match: str | None = None,
    ) -> WriteResult:
        """Store ``value``; ``if_match`` (an ETag, a version or ``*``) compare-and-set,
        ``if_none_match="*"`` create only: ``PreconditionFailedError`` when it does not hold."""
        return self._run(
            _calls.put(
                key,
                value,
                ttl_s=ttl_s,
                content_type=content_type,
                if_match=if_match,
                if_none_match=if_none_match,
            )
        )

    def delete(self, key: str, *, if_match: ETag | None = None) -> None:
        """Delete the key; ``NotFoundError`` when absent."""
        self._run(_calls.delete(key, if_match=if_match))

    def touch(self, key: str, ttl_s: int, *, if_match: ETag | None = None) -> WriteResult:
        """A new ttl, from now, without sending the value again; the version stays."""
        return self._run(_calls.touch(key, ttl_s, if_match=if_match))

    def invalidate(self, key: str) -> None:
        """Drop the key from every cache tier of every gateway process; the store keeps it."""
        self._run(_calls.invalidate(key))

    def batch(
        self,
        ops: Sequence[BatchOp],
        *,
        max_stale_s: int | None = None,
        stale_if_error_s: int | None = None,
        no_cache: bool = False,
        only_if_cached: bool = False,
    ) -> list[OpResult]:
        """Many ops in one request, a result each in order; the read options apply to every get."""
        return self._run(
            _calls.batch(
                ops,
                max_stale_s=max_stale_s,
                stale_if_error_s=stale_if_error_s,
                no_cache=no_cache,
                only_if_cached=only_if_cached,
            )
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: _calls.Call[T]) -> T:
        request = call.request(self._http)
        attempts = self._retry.attempts(call.safety)
        while True:
            delay: float | None
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = attempts.after_failure(exc)
                if delay is None:
                    raise transport_error(exc) from exc
            else:
                delay = attempts.after_response(response)
                if delay is None:
                    return call.parse(response)
            self._sleep(delay)
