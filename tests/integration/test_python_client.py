"""The Python client (``clients/python``) against a real gateway: ``cachegw serve`` in its own
process over the test stack, reached over HTTP by ``Client`` and ``AsyncClient``."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from cachegw_client import (
    AsyncClient,
    BadRequestError,
    Client,
    DeleteOp,
    ForbiddenError,
    GetOp,
    InvalidateOp,
    MinVersionUnavailableError,
    NotCachedError,
    NotFoundError,
    PreconditionFailedError,
    PutOp,
    RateLimitedError,
    RetryPolicy,
    TouchOp,
    UnauthorizedError,
)

from devstack import Stack
from devstack.serving import serve_gateway
from tests.integration.conftest import create_key

NAMESPACE = "pyclient-" + secrets.token_hex(3)


@pytest.fixture(scope="module")
def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_gateway(stack, tmp_path_factory.mktemp("pyclient"), timeout_s=20) as base:
        yield base


@pytest.fixture(scope="module")
def api_key(stack: Stack) -> str:
    return create_key(stack, NAMESPACE, "read,write")


def new_key() -> str:
    return "{py}:" + secrets.token_hex(6)  # a tag and a ':' to percent-encode


def test_put_get_compare_and_set_and_delete(server: str, api_key: str) -> None:
    key = new_key()
    with Client(server, api_key, timeout_s=10) as cache:
        created = cache.put(key, b"\x00hello\xff", content_type="text/plain", ttl_s=600)
        got = cache.get(key)
        replaced = cache.put(key, b"again", if_match=got.etag)
        with pytest.raises(PreconditionFailedError) as lost:
            cache.put(key, b"lost update", if_match=got.etag)
        with pytest.raises(PreconditionFailedError):
            cache.put(key, b"create only", if_none_match="*")
        after = cache.get(key, no_cache=True)
        cache.delete(key, if_match=after.version)
        with pytest.raises(NotFoundError) as gone:
            cache.get(key)
        with pytest.raises(NotFoundError):
            cache.delete(key)
    assert created.created
    assert created.key == key
    assert created.expires_at is not None
    assert (got.value, got.etag, got.version) == (b"\x00hello\xff", created.etag, created.version)
    assert got.content_type == "text/plain"
    assert got.cache_status.raw.startswith("cachegw;")
    assert got.age_s >= 0
    assert got.max_age_s is not None
    assert 0 < got.max_age_s <= 600
    assert got.request_id
    assert not replaced.created
    assert replaced.version > created.version
    assert lost.value.status == 412
    assert lost.value.type == "/problems/precondition-failed"
    assert lost.value.etag == replaced.etag  # the version that won
    assert after.value == b"again"
    assert after.cache_status.fwd == "request"  # no-cache: the store answered
    assert gone.value.type == "/problems/key-not-found"
    assert gone.value.problem["status"] == 404


def test_touch_sets_a_new_ttl_and_keeps_the_version(server: str, api_key: str) -> None:
    key = new_key()
    with Client(server, api_key, timeout_s=10) as cache:
        written = cache.put(key, b"v", ttl_s=60)
        touched = cache.touch(key, 3600, if_match=written.etag)
        got = cache.get(key)
        with pytest.raises(PreconditionFailedError):
            cache.touch(key, 60, if_match=written.version + 1)
        with pytest.raises(NotFoundError):
            cache.touch(new_key(), 60)
    assert touched.etag == written.etag  # a touch is not a new version
    assert touched.expires_at is not None
    assert written.expires_at is not None
    assert touched.expires_at > written.expires_at
    assert got.max_age_s is not None
    assert got.max_age_s > 60


def test_min_version_reads_your_writes_or_says_the_store_is_older(
    server: str, api_key: str
) -> None:
    key = new_key()
    with Client(server, api_key, timeout_s=10) as cache:
        written = cache.put(key, b"v1")
        mine = cache.get(key, min_version=written.version)
        quoted = cache.get(key, min_version=written.etag)
        with pytest.raises(MinVersionUnavailableError) as older:
            cache.get(key, min_version=written.version + 1_000_000)
        with pytest.raises(BadRequestError) as malformed:
            cache.get(key, min_version="forty-two")
    assert mine.version == quoted.version == written.version
    assert isinstance(older.value, PreconditionFailedError)
    assert older.value.status == 412
    assert older.value.etag == written.etag  # the store's version
    assert malformed.value.status == 400
    assert malformed.value.slug == "invalid-min-version"


def test_api_keys_scopes_and_namespaces(server: str, api_key: str, stack: Stack) -> None:
    key = new_key()
    reader = create_key(stack, NAMESPACE, "read")
    elsewhere = create_key(stack, NAMESPACE + "-b", "read,write")
    with Client(server, api_key, timeout_s=10) as cache:
        cache.put(key, b"v")
    with Client(server, timeout_s=10) as anonymous, pytest.raises(UnauthorizedError) as no_key:
        anonymous.get(key)
    with Client(server, "cg_nope_nope", timeout_s=10) as bad, pytest.raises(UnauthorizedError):
        bad.get(key)
    with Client(server, reader, timeout_s=10) as read_only:
        assert read_only.get(key).value == b"v"
        with pytest.raises(ForbiddenError) as refused:
            read_only.put(key, b"w")
    with Client(server, elsewhere, timeout_s=10) as other, pytest.raises(NotFoundError):
        other.get(key)  # another namespace's key does not exist here
    assert no_key.value.status == 401
    assert refused.value.slug == "forbidden"


def test_a_rate_limited_call_is_retried_after_retry_after(server: str, stack: Stack) -> None:
    limited = create_key(stack, NAMESPACE, "read,write", "--rate", "1", "--burst", "1")
    key = new_key()
    with Client(server, limited, timeout_s=10, retry=RetryPolicy(max_retries=0)) as once:
        with pytest.raises(NotFoundError):
            once.get(key)  # the one token of the burst
        with pytest.raises(RateLimitedError) as refused:
            once.get(key)
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 1
    with Client(server, limited, timeout_s=10) as patient:
        started = time.monotonic()
        patient.put(key, b"v")  # refused at first (no token yet), then let through
        assert patient.get(key).value == b"v"
    assert time.monotonic() - started >= 0.5


async def test_the_async_client(server: str, api_key: str) -> None:
    key, absent = new_key(), new_key()
    async with AsyncClient(server, api_key, timeout_s=10) as cache:
        written = await cache.put(key, b"async", content_type="application/octet-stream")
        got = await cache.get(key, max_stale_s=1, stale_if_error_s=30)
        with pytest.raises(PreconditionFailedError):
            await cache.put(key, b"x", if_match=written.version + 5)
        await cache.invalidate(key)
        reloaded = await cache.get(key)
        with pytest.raises(NotCachedError) as not_cached:
            await cache.get(absent, only_if_cached=True)
        await cache.delete(key)
        with pytest.raises(NotFoundError):
            await cache.get(key)
    assert (got.value, got.version) == (b"async", written.version)
    assert reloaded.value == b"async"
    assert reloaded.cache_status.tier == "store"  # invalidated: loaded again from the store
    assert not_cached.value.status == 504


async def test_a_batch_answers_each_op_as_its_single_key_call(server: str, api_key: str) -> None:
    one, two, absent = new_key(), new_key(), new_key()
    async with AsyncClient(server, api_key, timeout_s=10) as cache:
        before = await cache.put(two, b"two")
        results = await cache.batch([
            PutOp(one, b"\x00\xff", content_type="text/plain", ttl_s=60),
            GetOp(one),  # after the put: one key's ops run in order
            GetOp(absent),
            PutOp(two, b"lost", if_match=before.version + 7),
            TouchOp(one, 3600),
            InvalidateOp(two),
            DeleteOp(two, if_match=before.etag),
            GetOp(two),
        ])  # fmt: skip
        reads = await cache.batch([GetOp(one), GetOp(one, min_version=10**15)], no_cache=True)
        single = await cache.get(one)
    put, got, missing, conflict, touched, invalidated, deleted, gone = results
    assert [r.status for r in results] == [201, 200, 404, 412, 200, 204, 204, 404]
    assert got.value == b"\x00\xff"
    assert got.content_type == "text/plain"
    assert got.version == put.version == touched.version
    assert got.cache_status is not None
    assert got.cache_status.raw.startswith("cachegw;")
    assert isinstance(missing.error, NotFoundError)
    assert isinstance(conflict.error, PreconditionFailedError)
    assert conflict.etag == before.etag
    assert invalidated.ok
    assert deleted.ok
    assert isinstance(gone.error, NotFoundError)
    assert reads[0].value == b"\x00\xff"
    assert reads[0].cache_status is not None
    assert reads[0].cache_status.fwd == "request"
    assert isinstance(reads[1].error, MinVersionUnavailableError)
    assert single.etag == put.etag
