"""The Python client (``clients/python``) against scripted answers (``httpx.MockTransport``):
the requests it builds, how it reads answers and problems, and when it retries."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from cachegw_client import (
    AsyncClient,
    BadRequestError,
    BatchOp,
    CachegwError,
    CacheStatus,
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
    Safety,
    TouchOp,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    UnexpectedResponseError,
    WriteOutcomeUnknownError,
)
from cachegw_client._errors import error_for, retry_after_of

from app.api.problems import PROBLEM_TYPES

BASE = "http://gateway"
Outcome = httpx.Response | type[httpx.TransportError]


class Script:
    """Answers requests with ``outcomes`` in turn (an exception class is raised) and keeps
    every request it was sent."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, httpx.Response):
            return outcome
        raise outcome("scripted", request=request)


def problem(status: int, slug: str, **headers: str) -> httpx.Response:
    body = {
        "type": f"/problems/{slug}", "title": slug.replace("-", " "), "status": status,
        "detail": f"the detail of {slug}", "instance": "/v1/keys/k",
    }  # fmt: skip
    return httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/problem+json", **headers},
    )


def entry(value: bytes = b"v", version: int = 7, **headers: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=value,
        headers={
            "etag": f'"{version}"', "age": "0", "cache-status": "cachegw; hit; detail=primary",
            "content-type": "application/octet-stream", **headers,
        },
    )  # fmt: skip


def written(
    version: int = 8, *, status: int = 200, expires_at: str | None = None
) -> httpx.Response:
    body = {"key": "k", "version": version, "etag": f'"{version}"', "expires_at": expires_at}
    return httpx.Response(status, json=body, headers={"etag": f'"{version}"'})


def no_content() -> httpx.Response:
    return httpx.Response(204)


def batch_answer(*results: dict[str, object]) -> httpx.Response:
    return httpx.Response(200, json={"results": list(results)})


class Sleeps(list[float]):
    """The waits a client asked for, in order (the client sleeps no real time)."""

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


def client(
    script: Script, sleeps: Sleeps | None = None, *, retry: RetryPolicy | None = None
) -> Client:
    return Client(
        BASE, "cg_prefix_secret", transport=httpx.MockTransport(script), retry=retry,
        sleep=(sleeps if sleeps is not None else Sleeps()).append,
    )  # fmt: skip


def async_client(script: Script, sleeps: Sleeps) -> AsyncClient:
    return AsyncClient(
        BASE, "cg_prefix_secret", transport=httpx.MockTransport(script), sleep=sleeps.asleep
    )


NO_RETRY = RetryPolicy(max_retries=0)


# --- the requests


def test_get_sends_the_key_encoded_the_api_key_and_the_read_directives() -> None:
    script = Script(
        entry(b"hello", 41, age="3", **{
            "cache-control": "max-age=60", "content-type": "text/plain", "x-request-id": "r1",
        })
    )  # fmt: skip
    with client(script) as cache:
        got = cache.get(
            "{user:42}:cart é", min_version=41, max_stale_s=5, stale_if_error_s=60, no_cache=True
        )
    request = script.requests[0]
    assert request.method == "GET"
    assert request.url.raw_path == b"/v1/keys/%7Buser%3A42%7D%3Acart%20%C3%A9"
    assert request.headers["authorization"] == "Bearer cg_prefix_secret"
    assert request.headers["user-agent"] == "cachegw-client/0.1.0"
    assert request.headers["cache-control"] == "no-cache, max-stale=5, stale-if-error=60"
    assert request.headers["cachegw-min-version"] == "41"
    assert got.key == "{user:42}:cart é"
    assert (got.value, got.etag, got.version, got.content_type) == (
        b"hello", '"41"', 41, "text/plain"
    )  # fmt: skip
    assert (got.age_s, got.max_age_s, got.request_id) == (3, 60, "r1")
    assert got.cache_status.tier == "primary"
    assert got.cache_status.hit


def test_a_plain_get_sends_no_directive_and_no_key_without_one() -> None:
    script = Script(entry(), entry())
    with client(script) as cache:
        cache.get("k", only_if_cached=True, min_version='"9"')
    with Client(BASE, transport=httpx.MockTransport(script)) as anonymous:
        anonymous.get("k")
    first, second = script.requests
    assert first.headers["cache-control"] == "only-if-cached"
    assert first.headers["cachegw-min-version"] == '"9"'  # an ETag as it was read
    assert "cache-control" not in second.headers
    assert "cachegw-min-version" not in second.headers
    assert "authorization" not in second.headers


def test_the_base_url_may_have_a_path() -> None:
    script = Script(entry())
    with Client(BASE + "/cache", transport=httpx.MockTransport(script)) as cache:
        cache.get("k")
    assert script.requests[0].url.path == "/cache/v1/keys/k"


def test_put_sends_the_value_ttl_type_and_preconditions() -> None:
    expires = "2026-12-02T09:00:00+00:00"
    script = Script(written(42, status=201, expires_at=expires), written(43))
    with client(script) as cache:
        created = cache.put("k", b"\x00\xff", ttl_s=60, content_type="text/plain", if_match=41)
        replaced = cache.put("k", b"", if_none_match="*")
    first, second = script.requests
    assert (first.method, first.url.path, first.url.params["ttl"]) == ("PUT", "/v1/keys/k", "60")
    assert first.content == b"\x00\xff"
    assert first.headers["content-type"] == "text/plain"
    assert first.headers["if-match"] == '"41"'
    assert second.headers["if-none-match"] == "*"
    assert "ttl" not in second.url.params
    assert "if-match" not in second.headers
    assert created.created
    assert (created.key, created.version, created.etag) == ("k", 42, '"42"')
    assert created.expires_at == datetime(2026, 12, 2, 9, tzinfo=UTC)
    assert not replaced.created
    assert replaced.expires_at is None


def test_delete_touch_and_invalidate() -> None:
    script = Script(no_content(), written(7), no_content())
    with client(script) as cache:
        cache.delete("k", if_match='"7"')
        touched = cache.touch("k", 30, if_match="*")
        cache.invalidate("k")
    delete, touch, invalidate = script.requests
    assert (delete.method, delete.headers["if-match"]) == ("DELETE", '"7"')
    assert (touch.method, touch.url.path, touch.url.params["ttl"]) == (
        "POST", "/v1/keys/k/touch", "30"
    )  # fmt: skip
    assert touch.headers["if-match"] == "*"
    assert touch.content == b""
    assert (invalidate.method, invalidate.url.path) == ("POST", "/v1/keys/k/invalidate")
    assert touched.version == 7


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get(""),
        lambda c: c.put("k", b"v", ttl_s=-1),
        lambda c: c.get("k", max_stale_s=-5),
        lambda c: c.get("k", stale_if_error_s=True),
        lambda c: c.get("k", min_version=-1),
        lambda c: c.put("k", b"v", if_match=-3),
        lambda c: c.batch([]),
    ],
    ids=["empty key", "ttl", "max-stale", "bool seconds", "min-version", "version", "no ops"],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    call: Callable[[Client], object],
) -> None:
    script = Script()
    with client(script) as cache, pytest.raises(ValueError, match=r"."):
        call(cache)
    assert script.requests == []


# --- the answers


@pytest.mark.parametrize(
    ("header", "tier", "hit", "stale", "fwd", "stored", "fwd_status"),
    [
        ("cachegw; hit; detail=primary", "primary", True, False, None, False, None),
        ("cachegw; hit; detail=local", "local", True, False, None, False, None),
        ("cachegw; fwd=stale; detail=replica", "replica", False, True, "stale", False, None),
        ("cachegw; fwd=miss; stored", "store", False, False, "miss", True, None),
        ("cachegw; fwd=request", "store", False, False, "request", False, None),
        ("cachegw; fwd=stale; fwd-status=503; detail=local", "local", False, True, "stale",
         False, 503),
        ('CDN; hit, cachegw; fwd=miss; stored; collapsed', "store", False, False, "miss", True,
         None),
        ("", None, False, False, None, False, None),
    ],
)  # fmt: skip
def test_cache_status_is_read_from_the_gateways_member(
    header: str, tier: str | None, hit: bool, stale: bool, fwd: str | None, stored: bool,
    fwd_status: int | None,
) -> None:  # fmt: skip
    status = CacheStatus.parse(header)
    assert (status.tier, status.hit, status.stale, status.fwd, status.stored) == (
        tier, hit, stale, fwd, stored
    )  # fmt: skip
    assert status.fwd_status == fwd_status
    assert status.raw == header


@pytest.mark.parametrize(
    ("answer", "cls"),
    [
        (problem(400, "invalid-min-version"), BadRequestError),
        (problem(422, "invalid-key"), BadRequestError),
        (problem(413, "value-too-large"), BadRequestError),
        (problem(401, "unauthenticated"), UnauthorizedError),
        (problem(403, "forbidden"), ForbiddenError),
        (problem(404, "key-not-found"), NotFoundError),
        (problem(412, "precondition-failed", etag='"9"'), PreconditionFailedError),
        (problem(412, "min-version-unavailable", etag='"9"'), MinVersionUnavailableError),
        (problem(429, "rate-limited", **{"retry-after": "1"}), RateLimitedError),
        (problem(503, "store-unavailable", **{"retry-after": "1"}), UnavailableError),
        (problem(503, "write-outcome-unknown"), WriteOutcomeUnknownError),
        (problem(504, "not-cached"), NotCachedError),
    ],
)
def test_a_problem_is_raised_as_its_class_with_its_fields(
    answer: httpx.Response, cls: type[CachegwError]
) -> None:
    with client(Script(answer), retry=NO_RETRY) as cache, pytest.raises(cls) as raised:
        cache.get("k")
    exc = raised.value
    slug = answer.json()["type"].rsplit("/", 1)[-1]
    assert type(exc) is cls
    assert exc.status == answer.status_code
    assert (exc.type, exc.slug, exc.instance) == (f"/problems/{slug}", slug, "/v1/keys/k")
    assert exc.title == slug.replace("-", " ")
    assert exc.detail == f"the detail of {slug}"
    assert exc.problem == answer.json()
    assert exc.etag == answer.headers.get("etag")
    assert exc.retry_after_s == (1.0 if "retry-after" in answer.headers else None)
    assert str(exc).startswith(f"{answer.status_code} ")


def test_min_version_unavailable_is_a_precondition_failure() -> None:
    assert issubclass(MinVersionUnavailableError, PreconditionFailedError)
    assert issubclass(WriteOutcomeUnknownError, UnavailableError)


def test_an_answer_that_is_not_a_problem_still_names_its_status() -> None:
    html = {"content-type": "text/html"}
    page = httpx.Response(502, content=b"<html>bad gateway</html>", headers=html)
    with client(Script(page)) as cache, pytest.raises(CachegwError) as raised:
        cache.get("k")
    assert type(raised.value) is CachegwError
    assert (raised.value.status, raised.value.type) == (502, "about:blank")
    assert raised.value.title == "Bad Gateway"
    forbidden = httpx.Response(403, content=b"no", headers={"content-type": "text/plain"})
    with client(Script(forbidden)) as cache, pytest.raises(ForbiddenError):
        cache.get("k")


def test_every_problem_the_gateway_documents_has_the_class_its_status_names() -> None:
    by_status: dict[int, type[CachegwError]] = {
        400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
        412: PreconditionFailedError, 413: BadRequestError, 414: BadRequestError,
        415: BadRequestError, 422: BadRequestError, 429: RateLimitedError, 431: BadRequestError,
        503: UnavailableError, 504: NotCachedError,
    }  # fmt: skip
    unmapped = {"internal-error"}  # a 500 is the gateway's bug: a plain CachegwError
    for slug, kind in PROBLEM_TYPES.items():
        exc = error_for(kind.status, {"type": kind.uri, "title": kind.title, "status": kind.status})
        if slug in unmapped:
            assert type(exc) is CachegwError
        else:
            assert isinstance(exc, by_status[kind.status]), (slug, type(exc))


def test_an_answer_not_of_the_gateways_shape_is_unexpected() -> None:
    no_etag = httpx.Response(200, content=b"v")
    not_modified = httpx.Response(304)
    with client(Script(no_etag, not_modified)) as cache:
        with pytest.raises(UnexpectedResponseError, match="ETag"):
            cache.get("k")
        with pytest.raises(UnexpectedResponseError) as raised:
            cache.get("k")
    assert raised.value.status == 304


# --- batches


def test_a_batch_encodes_each_op_and_decodes_each_result() -> None:
    ops: list[BatchOp] = [
        GetOp("a", min_version=3),
        PutOp("b", b"\x00\xff", content_type="text/plain", ttl_s=60, if_match=2),
        DeleteOp("c", if_match='"5"'),
        TouchOp("d", 30),
        InvalidateOp("e"),
        GetOp("absent"),
    ]
    script = Script(batch_answer(
        {"status": 200, "etag": '"3"', "cache_status": "cachegw; fwd=miss; stored", "age": 0,
         "content_type": "text/plain", "value": base64.b64encode(b"hello").decode()},
        {"status": 412, "etag": '"4"', "problem": {"type": "/problems/precondition-failed",
                                                   "title": "Precondition failed", "status": 412}},
        {"status": 204},
        {"status": 200, "etag": '"6"', "version": 6, "expires_at": "2026-12-02T09:00:00+00:00"},
        {"status": 204},
        {"status": 404, "problem": {"type": "/problems/key-not-found", "status": 404}},
    ))  # fmt: skip
    with client(script) as cache:
        results = cache.batch(ops, max_stale_s=2)
    request = script.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/batch")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["cache-control"] == "max-stale=2"
    assert json.loads(request.content) == {"ops": [
        {"op": "get", "key": "a", "min_version": 3},
        {"op": "put", "key": "b", "value": "AP8=", "content_type": "text/plain", "ttl": 60,
         "if_match": '"2"'},
        {"op": "delete", "key": "c", "if_match": '"5"'},
        {"op": "touch", "key": "d", "ttl": 30},
        {"op": "invalidate", "key": "e"},
        {"op": "get", "key": "absent"},
    ]}  # fmt: skip
    got, conflict, deleted, touched, invalidated, absent = results
    assert [r.op for r in results] == ops
    assert (got.value, got.version, got.content_type, got.age_s) == (b"hello", 3, "text/plain", 0)
    assert got.cache_status is not None
    assert got.cache_status.tier == "store"
    assert got.ok
    assert isinstance(conflict.error, PreconditionFailedError)
    assert conflict.error.etag == '"4"'
    assert not conflict.ok
    assert deleted.ok
    assert invalidated.ok
    assert touched.expires_at == datetime(2026, 12, 2, 9, tzinfo=UTC)
    assert isinstance(absent.error, NotFoundError)
    assert absent.problem == {"type": "/problems/key-not-found", "status": 404}


def test_a_batch_without_one_result_per_op_is_unexpected() -> None:
    script = Script(batch_answer({"status": 204}))
    with client(script) as cache, pytest.raises(UnexpectedResponseError):
        cache.batch([InvalidateOp("a"), InvalidateOp("b")])


# --- retries


def test_a_read_waits_as_long_as_retry_after_says() -> None:
    sleeps = Sleeps()
    script = Script(problem(503, "no-answer", **{"retry-after": "1"}), entry(b"late"))
    with client(script, sleeps) as cache:
        assert cache.get("k").value == b"late"
    assert sleeps == [1.0]
    assert len(script.requests) == 2


def test_without_retry_after_the_wait_is_a_jittered_backoff() -> None:
    sleeps = Sleeps()
    script = Script(problem(429, "rate-limited"), problem(429, "rate-limited"), entry())
    policy = RetryPolicy(backoff_s=0.1, max_backoff_s=0.15)
    with client(script, sleeps, retry=policy) as cache:
        cache.get("k")
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 0.1
    assert 0 <= sleeps[1] <= 0.15  # 0.2, capped


def test_retries_stop_at_max_retries_and_raise_the_last_answer() -> None:
    sleeps = Sleeps()
    busy = [problem(503, "store-unavailable", **{"retry-after": "1"}) for _ in range(3)]
    script = Script(*busy)
    with client(script, sleeps) as cache, pytest.raises(UnavailableError) as raised:
        cache.get("k")
    assert len(script.requests) == 3  # max_retries=2
    assert sleeps == [1.0, 1.0]
    assert raised.value.retry_after_s == 1.0


def test_retries_stop_at_max_wait_s() -> None:
    sleeps = Sleeps()
    script = Script(*(problem(429, "rate-limited", **{"retry-after": "4"}) for _ in range(3)))
    policy = RetryPolicy(max_wait_s=5)
    with client(script, sleeps, retry=policy) as cache, pytest.raises(RateLimitedError) as raised:
        cache.get("k")
    assert sleeps == [4.0]  # a second 4 s would pass 5 s in all
    assert raised.value.retry_after_s == 4.0


def test_a_retry_after_longer_than_the_budget_is_not_waited_for() -> None:
    sleeps = Sleeps()
    script = Script(problem(429, "rate-limited", **{"retry-after": "30"}))
    with client(script, sleeps) as cache, pytest.raises(RateLimitedError) as raised:
        cache.get("k")
    assert sleeps == []
    assert raised.value.retry_after_s == 30.0


def test_a_write_is_retried_only_when_it_did_not_run() -> None:
    sleeps = Sleeps()
    script = Script(
        problem(503, "store-unavailable", **{"retry-after": "1"}), written(status=201),
        problem(503, "write-outcome-unknown", **{"retry-after": "1"}),
        problem(503, "store-unavailable", **{"retry-after": "1"}), no_content(),
    )  # fmt: skip
    with client(script, sleeps) as cache:
        assert cache.put("k", b"v").created  # nothing was changed: safe to repeat
        with pytest.raises(WriteOutcomeUnknownError):
            cache.put("k", b"v", if_match=3)  # it may have committed: the caller decides
        cache.delete("k")
    assert [r.method for r in script.requests] == ["PUT", "PUT", "PUT", "DELETE", "DELETE"]
    assert sleeps == [1.0, 1.0]


def test_touch_and_invalidate_are_retried_only_when_nothing_ran() -> None:
    sleeps = Sleeps()
    script = Script(
        problem(503, "store-unavailable", **{"retry-after": "1"}),
        problem(429, "rate-limited", **{"retry-after": "1"}), written(),
        problem(503, "auth-unavailable", **{"retry-after": "1"}), no_content(),
        httpx.ReadTimeout,
    )  # fmt: skip
    with client(script, sleeps) as cache:
        with pytest.raises(UnavailableError):
            cache.touch("k", 30)  # a POST that may have run
        cache.touch("k", 30)  # refused by the rate limit before anything ran
        cache.invalidate("k")  # no verdict on the key: nothing ran
        with pytest.raises(TransportError):
            cache.invalidate("k")
    assert sleeps == [1.0, 1.0]
    assert len(script.requests) == 6


def test_network_failures_are_retried_for_reads_and_for_connects() -> None:
    sleeps = Sleeps()
    script = Script(
        httpx.ReadTimeout, entry(),  # a read: retried
        httpx.ConnectError, written(),  # nothing sent: retried
        httpx.ReadTimeout,  # the put may have arrived: not retried
    )  # fmt: skip
    with client(script, sleeps) as cache:
        cache.get("k")
        cache.put("k", b"v")
        with pytest.raises(TransportError) as raised:
            cache.put("k", b"v")
    assert isinstance(raised.value.__cause__, httpx.ReadTimeout)
    assert raised.value.status is None
    assert len(script.requests) == 5
    assert len(sleeps) == 2


def test_a_read_that_never_gets_an_answer_raises_a_transport_error() -> None:
    script = Script(httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError)
    with client(script) as cache, pytest.raises(TransportError, match="ReadError"):
        cache.get("k")
    assert len(script.requests) == 3


def test_a_batch_is_retried_only_when_it_only_reads() -> None:
    sleeps = Sleeps()
    busy = problem(503, "no-answer", **{"retry-after": "1"})
    script = Script(busy, batch_answer({"status": 204}), busy)
    with client(script, sleeps) as cache:
        cache.batch([GetOp("a")])
        with pytest.raises(UnavailableError):
            cache.batch([GetOp("a"), DeleteOp("a")])
    assert sleeps == [1.0]
    assert len(script.requests) == 3


def test_max_retries_zero_never_retries() -> None:
    script = Script(problem(429, "rate-limited", **{"retry-after": "1"}))
    with client(script, retry=NO_RETRY) as cache, pytest.raises(RateLimitedError):
        cache.get("k")
    assert len(script.requests) == 1


def test_a_policy_with_a_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        RetryPolicy(max_wait_s=-1)


def test_the_backoff_grows_and_is_capped() -> None:
    attempts = RetryPolicy(max_retries=5, backoff_s=0.1, max_backoff_s=0.3).attempts(Safety.READ)
    ceilings = [0.1, 0.2, 0.3, 0.3, 0.3]
    for ceiling in ceilings:
        delay = attempts.after_failure(httpx.ConnectError("refused"))
        assert delay is not None
        assert 0 <= delay <= ceiling
    assert attempts.after_failure(httpx.ConnectError("refused")) is None


def test_retry_after_may_be_an_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    dated = httpx.Response(503, headers={"retry-after": format_datetime(when, usegmt=True)})
    seconds = retry_after_of(dated)
    assert seconds is not None
    assert 28 <= seconds <= 30
    assert retry_after_of(httpx.Response(503, headers={"retry-after": "soon"})) is None
    assert retry_after_of(httpx.Response(503)) is None


# --- the async client: the same calls, awaited


async def test_the_async_client_builds_reads_and_retries_the_same_way() -> None:
    sleeps = Sleeps()
    script = Script(
        problem(503, "no-answer", **{"retry-after": "2"}), entry(b"v", 5),
        written(6, status=201),
        problem(412, "precondition-failed", etag='"6"'),
        problem(503, "write-outcome-unknown"),
        batch_answer({"status": 204}),
    )  # fmt: skip
    async with async_client(script, sleeps) as cache:
        got = await cache.get("k", no_cache=True)
        put = await cache.put("k", b"w", if_match=got.etag)
        with pytest.raises(PreconditionFailedError) as raised:
            await cache.put("k", b"x", if_match=got.etag)
        with pytest.raises(WriteOutcomeUnknownError):
            await cache.delete("k")
        results = await cache.batch([InvalidateOp("k")])
    assert (got.value, got.version, put.version, put.created) == (b"v", 5, 6, True)
    assert raised.value.etag == '"6"'
    assert results[0].ok
    assert sleeps == [2.0]
    assert script.requests[0].headers["cache-control"] == "no-cache"
    assert script.requests[2].headers["if-match"] == '"5"'
    assert [r.method for r in script.requests] == ["GET", "GET", "PUT", "PUT", "DELETE", "POST"]
