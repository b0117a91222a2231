"""``POST /v1/batch``: many key operations in one request, a result for each.

Each op means exactly what its single-key form means (the same router calls, scopes, namespace,
staleness policy, preconditions, tombstones and outbox), and one op's failure is that op's result
(a ``problem`` object, as its single-key form would answer), never the batch's. Request-level
errors (not JSON, not of the batch's shape, an unknown op, more ops or bytes than the limits)
are problems for the whole request, and nothing is read or written.

There is no atomicity across keys. Ops on one key run one after the other in request order (a
``put`` then a ``get`` of the same key reads the put); ops on different keys run concurrently,
so the reads of a batch reach each Redis node in the same turn of the event loop and travel in
one pipeline per node (``app/cluster/node.py`` pipelines what is submitted together), and the
misses are loaded concurrently, each joining a load of the same key already in flight.
``Cache-Control`` is given once for the batch and applies to every ``get``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Scope

from app.api import conditional, schemas
from app.api.conditional import parse_tag_list
from app.api.deps import PRINCIPAL
from app.api.handlers import Answer, header, if_match_of, parse_min_version, policy_of
from app.api.http import (
    age_s,
    cache_status,
    content_type_of,
    read_limited,
    validate_key,
)
from app.api.problems import problem_document
from app.auth import Principal
from app.codec import now_ms
from app.errors import (
    InvalidBatchError,
    InvalidPreconditionError,
    InvalidTtlError,
    UnsupportedMediaTypeError,
    ValueTooLargeError,
)
from app.gateway import Gateway
from app.router import ReadPolicy, ReadResult
from app.settings import LimitSettings
from app.tiers.base import KeyRef

# Ops of different keys run at most this many at a time: a batch of 1,000 misses does not open
# 1,000 store loads at once.
CONCURRENCY = 256
JSON_TYPES = ("application/json",)


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: StrictStr = Field(description="The key, as in `/v1/keys/{key}` (not percent-encoded).")


class GetOp(_Op):
    op: Literal["get"]
    min_version: StrictInt | StrictStr | None = Field(
        default=None, description="As the header `Cachegw-Min-Version`: no older answer."
    )


class PutOp(_Op):
    op: Literal["put"]
    value: StrictStr = Field(default="", description="The value's bytes, base64 (RFC 4648).")
    content_type: StrictStr | None = Field(
        default=None, description="Kept with the value (default application/octet-stream)."
    )
    ttl: StrictInt | None = Field(default=None, description="Seconds until it expires.")
    if_match: StrictStr | None = Field(default=None, description='As If-Match: `"41"` or `*`.')
    if_none_match: StrictStr | None = Field(default=None, description="`*`: create only.")


class DeleteOp(_Op):
    op: Literal["delete"]
    if_match: StrictStr | None = None


class TouchOp(_Op):
    op: Literal["touch"]
    ttl: StrictInt = Field(description="Seconds from now until it expires.")
    if_match: StrictStr | None = None


class InvalidateOp(_Op):
    op: Literal["invalidate"]


AnyOp = GetOp | PutOp | DeleteOp | TouchOp | InvalidateOp
Op = Annotated[AnyOp, Field(discriminator="op")]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ops: list[Op] = Field(
        min_length=1,
        description="The operations, answered in this order; at most CACHEGW_LIMITS__MAX_BATCH_OPS "
        "(1,000 by default).",
    )


BATCH = TypeAdapter(BatchRequest)
EXAMPLE = {
    "ops": [
        {"op": "get", "key": "user:1"},
        {"op": "put", "key": "user:2", "value": "aGVsbG8=", "content_type": "text/plain",
         "ttl": 60},
        {"op": "delete", "key": "user:3"},
    ]
}  # fmt: skip
Result = dict[str, Any]


class OpResult(BaseModel):
    """One op's result: the fields of its single-key answer that apply, or its problem."""

    status: int = Field(description="The status its single-key form would answer.")
    etag: str | None = Field(default=None, examples=['"41"'])
    version: int | None = Field(default=None, description="put and touch: the version.")
    cache_status: str | None = Field(default=None, description="get: as the Cache-Status header.")
    age: int | None = Field(default=None, description="get: as the Age header, seconds.")
    content_type: str | None = Field(default=None, description="get: the stored Content-Type.")
    value: str | None = Field(default=None, description="get: the value's bytes, base64.")
    expires_at: str | None = Field(default=None, description="When it expires (ISO 8601).")
    retry_after: int | None = Field(default=None, description="As Retry-After, seconds.")
    problem: dict[str, Any] | None = Field(
        default=None, description="The op's RFC 9457 problem, when it failed."
    )


class BatchResponse(BaseModel):
    results: list[OpResult] = Field(description="One per op, in request order.")


def batch_routes(limits: LimitSettings) -> list[BaseRoute]:
    """``POST /v1/batch`` in the OpenAPI schema (never dispatched: ``dispatch.py`` serves it)."""
    router = APIRouter(tags=["keys"])

    @router.post(
        "/v1/batch",
        operation_id="batch",
        summary="Many key operations in one request, a result for each",
        response_model=BatchResponse,
        responses={
            400: schemas.problem_response(
                "Not JSON, not a batch, an unknown op, no ops or too many.",
                "invalid-batch",
                "not a batch: ops.1.op: Input tag 'incr' found using 'op' does not match",
            ),
            413: schemas.problem_response(
                f"The body is over {limits.max_batch_bytes} bytes.",
                "value-too-large",
                f"the batch exceeds the limit of {limits.max_batch_bytes} bytes",
            ),
            415: schemas.UNSUPPORTED,
        },
    )
    async def batch_ops(
        body: Annotated[BatchRequest, Body(openapi_examples={"mixed": {"value": EXAMPLE}})],
    ) -> Response:
        """Each op means what its single-key form means (scopes, namespace, staleness,
        preconditions, tombstones, the outbox); one op's failure is only its own result. Ops on
        one key run in request order, different keys concurrently; no atomicity across keys.
        `Cache-Control` applies to every get; a get's `min_version` is `Cachegw-Min-Version`."""
        raise RuntimeError("the batch is served by app.api.dispatch, not by this route")

    return list(router.routes)


def parse(body: bytes, limits: LimitSettings) -> BatchRequest:
    """The batch, or ``InvalidBatchError`` saying what is wrong with it (nothing has run)."""
    try:
        batch = BATCH.validate_json(body)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_url=False)[:5]
        )
        raise InvalidBatchError(f"not a batch: {problems}") from None
    if len(batch.ops) > limits.max_batch_ops:
        raise InvalidBatchError(
            f"{len(batch.ops)} ops; a batch may carry at most {limits.max_batch_ops}"
        )
    return batch


Get = tuple[str, int | str | None]  # a get op's key and min_version


def plain_gets(body: bytes, limits: LimitSettings) -> list[Get] | None:
    """The batch's gets when it is only gets of the plainest form (``op`` and ``key``, maybe
    ``min_version``), read without building a model per op (a batch's common case, where
    pydantic's models cost more than the reads); None for anything else, which ``parse``
    judges. Whatever this accepts, ``parse`` accepts as the same gets."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(document) is not dict or len(document) != 1:
        return None
    ops = document.get("ops")
    if type(ops) is not list or not 0 < len(ops) <= limits.max_batch_ops:
        return None
    gets: list[Get] = []
    for op in ops:
        if type(op) is not dict or op.get("op") != "get" or type(key := op.get("key")) is not str:
            return None
        if len(op) == 2:
            gets.append((key, None))
            continue
        min_version = op.get("min_version", ...)
        if len(op) != 3 or not (min_version is None or type(min_version) in (int, str)):
            return None
        gets.append((key, min_version))
    return gets


async def serve(gateway: Gateway, scope: Scope, body: AsyncIterator[bytes]) -> Answer:
    """POST /v1/batch."""
    limits = gateway.settings.limits
    media = (header(scope, b"content-type") or "application/json").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise UnsupportedMediaTypeError("a batch is sent as application/json")
    try:
        raw = await read_limited(
            body, content_length=header(scope, b"content-length"), limit=limits.max_batch_bytes
        )
    except ValueTooLargeError:
        raise ValueTooLargeError(
            f"the batch exceeds the limit of {limits.max_batch_bytes} bytes",
            limit_bytes=limits.max_batch_bytes,
        ) from None
    gets = plain_gets(raw, limits)
    ops = parse(raw, limits).ops if gets is None else []  # (parsed before Cache-Control)
    policy = policy_of(gateway, header(scope, b"cache-control"))
    principal: Principal | None = scope.get(PRINCIPAL)
    run = _Run(gateway, principal, policy)
    if gets is None:
        results = await run.all(ops)
    else:
        results = [{} for _ in gets]
        await run.reads(list(enumerate(gets)), results)
    content = orjson.dumps({"results": results})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    return 200, headers, content


@dataclasses.dataclass
class _Run:
    gateway: Gateway
    principal: Principal | None
    policy: ReadPolicy

    @property
    def namespace(self) -> str:
        if self.principal is None:
            return self.gateway.settings.auth.default_namespace
        return self.principal.namespace

    async def all(self, ops: list[AnyOp]) -> list[Result]:
        """Every op's result in request order: one key's ops in turn, keys concurrently; the
        gets of keys the batch only reads go together (``FallbackRouter.get_many``)."""
        results: list[Result] = [{} for _ in ops]
        chains: dict[str, list[int]] = {}
        for index, op in enumerate(ops):
            chains.setdefault(op.key, []).append(index)
        reads: list[int] = []
        writes: list[list[int]] = []
        for indices in chains.values():
            if all(ops[i].op == "get" for i in indices):
                reads.extend(indices)
            else:
                writes.append(indices)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def chain(indices: list[int]) -> None:
            async with limit:
                for index in indices:
                    results[index] = await self.one(ops[index])

        gets: list[tuple[int, Get]] = []
        for index in reads:
            op = ops[index]
            assert isinstance(op, GetOp)
            gets.append((index, (op.key, op.min_version)))
        await asyncio.gather(self.reads(gets, results), *(chain(c) for c in writes))
        return results

    async def reads(self, gets: list[tuple[int, Get]], results: list[Result]) -> None:
        """Gets (by index into ``results``) of keys no op of the batch writes: read together,
        each answer its own."""
        try:
            if self.principal is not None and gets:
                self.principal.require("read")
        except Exception as exc:
            for index, _get in gets:
                results[index] = _failed(exc)
            return
        wanted: list[int] = []
        refs: list[KeyRef] = []
        policies: list[ReadPolicy] = []
        max_key_bytes = self.gateway.settings.limits.max_key_bytes
        ref_of, namespace = self.gateway.router.ref, self.namespace
        for index, (key, min_version) in gets:
            try:
                ref = ref_of(namespace, validate_key(key, max_bytes=max_key_bytes))
                policy = self._policy(min_version)
            except Exception as exc:
                results[index] = _failed(exc)
                continue
            wanted.append(index)
            refs.append(ref)
            policies.append(policy)
        if not refs:
            return
        found = await self.gateway.router.get_many(refs, policies)
        now = now_ms()
        for index, answer in zip(wanted, found, strict=True):
            results[index] = (
                _failed(answer) if isinstance(answer, Exception) else _read(answer, now)
            )

    def _ref(self, op: AnyOp) -> KeyRef:
        if self.principal is not None:
            self.principal.require("read" if op.op == "get" else "write")
        limits = self.gateway.settings.limits
        key = validate_key(op.key, max_bytes=limits.max_key_bytes)
        return self.gateway.router.ref(self.namespace, key)

    def _policy(self, min_version: int | str | None) -> ReadPolicy:
        if min_version is None:
            return self.policy
        return dataclasses.replace(self.policy, min_version=parse_min_version(str(min_version)))

    async def one(self, op: AnyOp) -> Result:
        try:
            ref = self._ref(op)
            handler: Callable[..., Awaitable[Result]] = getattr(self, f"_{op.op}")
            return await handler(ref, op, self.gateway.settings.limits)
        except Exception as exc:  # the op's own answer; the others go on
            return _failed(exc)

    async def _get(self, ref: KeyRef, op: GetOp, _limits: LimitSettings) -> Result:
        found = await self.gateway.router.get(ref, self._policy(op.min_version))
        return _read(found, now_ms())

    async def _put(self, ref: KeyRef, op: PutOp, limits: LimitSettings) -> Result:
        try:
            value = base64.b64decode(op.value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidBatchError("value is not base64 (RFC 4648)") from None
        if len(value) > limits.max_value_bytes:
            raise ValueTooLargeError(
                f"the value is {len(value)} bytes; the limit is {limits.max_value_bytes}",
                limit_bytes=limits.max_value_bytes,
            )
        if_match, if_exists = if_match_of(op.if_match)
        create_only = False
        if op.if_none_match is not None and op.if_none_match.strip():
            if not parse_tag_list(op.if_none_match, name="if_none_match").any:
                raise InvalidPreconditionError("on put, if_none_match supports only *")
            create_only = True
        written = await self.gateway.router.put(
            ref, value, content_type=content_type_of(op.content_type),
            ttl_s=_ttl(op.ttl, limits), if_match=if_match, if_exists=if_exists,
            if_none_match=create_only,
        )  # fmt: skip
        return {
            "status": 201 if written.created else 200,
            "etag": conditional.etag(written.version),
            "version": written.version,
            "expires_at": None if written.expires_at_ms is None else _iso(written.expires_at_ms),
        }

    async def _delete(self, ref: KeyRef, op: DeleteOp, _limits: LimitSettings) -> Result:
        if_match, if_exists = if_match_of(op.if_match)
        await self.gateway.router.delete(ref, if_match=if_match, if_exists=if_exists)
        return {"status": 204}

    async def _touch(self, ref: KeyRef, op: TouchOp, limits: LimitSettings) -> Result:
        if_match, if_exists = if_match_of(op.if_match)
        ttl = _ttl(op.ttl, limits)
        assert ttl is not None
        touched = await self.gateway.router.touch(
            ref, ttl_s=ttl, if_match=if_match, if_exists=if_exists
        )
        return {
            "status": 200,
            "etag": conditional.etag(touched.version),
            "version": touched.version,
            "expires_at": _iso(touched.expires_at_ms),
        }

    async def _invalidate(self, ref: KeyRef, _op: InvalidateOp, _limits: LimitSettings) -> Result:
        await self.gateway.router.invalidate(ref)
        return {"status": 204}


def _read(found: ReadResult, now: int) -> Result:
    entry = found.entry
    result: Result = {
        "status": 200,
        "etag": conditional.etag(entry.version),
        "cache_status": cache_status(found),
        "age": age_s(found, now),
        "content_type": entry.content_type,
        "value": binascii.b2a_base64(entry.value, newline=False).decode("ascii"),
    }
    if entry.expires_at_ms is not None:
        result["expires_at"] = _iso(entry.expires_at_ms)
    return result


def _failed(exc: Exception) -> Result:
    """An op's problem, with the headers its single-key answer would carry that matter."""
    body, headers = problem_document(exc)
    result: Result = {"status": body["status"], "problem": body}
    if "ETag" in headers:
        result["etag"] = headers["ETag"]
    if "Retry-After" in headers:
        result["retry_after"] = int(headers["Retry-After"])
    return result


def _ttl(ttl: int | None, limits: LimitSettings) -> int | None:
    if ttl is not None and not limits.min_ttl_s <= ttl <= limits.max_ttl_s:
        raise InvalidTtlError(
            f"ttl must be a whole number of seconds from {limits.min_ttl_s} to {limits.max_ttl_s}"
        )
    return ttl


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()
