"""``POST /v1/batch``: the ops a batch carries, their JSON, and the result of each.

Each op means what its single-key call means; one op's failure is only its own result (its
``problem``, and ``error``: the exception its single-key call would raise). Values travel as
base64 in both directions; this module encodes and decodes them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cachegw_client._errors import CachegwError, UnexpectedResponseError, error_for
from cachegw_client._etags import ETag, tag, version_of
from cachegw_client._models import CacheStatus


@dataclass(frozen=True, slots=True)
class GetOp:
    key: str
    min_version: int | str | None = None


@dataclass(frozen=True, slots=True)
class PutOp:
    key: str
    value: bytes = b""
    content_type: str | None = None
    ttl_s: int | None = None
    if_match: ETag | None = None
    if_none_match: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteOp:
    key: str
    if_match: ETag | None = None


@dataclass(frozen=True, slots=True)
class TouchOp:
    key: str
    ttl_s: int
    if_match: ETag | None = None


@dataclass(frozen=True, slots=True)
class InvalidateOp:
    key: str


BatchOp = GetOp | PutOp | DeleteOp | TouchOp | InvalidateOp


@dataclass(frozen=True, slots=True)
class OpResult:
    """One op's result, in request order: the fields of its single-key answer that apply.

    ``value`` (decoded), ``content_type``, ``cache_status`` and ``age_s`` are a get's;
    ``version`` and ``etag`` a get's, put's or touch's (a failed precondition's ``etag`` is the
    current one); ``problem`` and ``error`` are set when the op failed.
    """

    op: BatchOp
    status: int
    etag: str | None = None
    version: int | None = None
    cache_status: CacheStatus | None = None
    age_s: int | None = None
    content_type: str | None = None
    value: bytes | None = None
    expires_at: datetime | None = None
    retry_after_s: float | None = None
    problem: dict[str, object] | None = None
    error: CachegwError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def encode(ops: Sequence[BatchOp]) -> dict[str, object]:
    """The batch's JSON document."""
    if not ops:
        raise ValueError("a batch has at least one op")
    return {"ops": [_encode(op) for op in ops]}


def _encode(op: BatchOp) -> dict[str, object]:
    out: dict[str, object]
    if isinstance(op, GetOp):
        out = {"op": "get", "key": op.key}
        if op.min_version is not None:
            out["min_version"] = op.min_version
    elif isinstance(op, PutOp):
        out = {"op": "put", "key": op.key, "value": base64.b64encode(op.value).decode("ascii")}
        if op.content_type is not None:
            out["content_type"] = op.content_type
        if op.ttl_s is not None:
            out["ttl"] = op.ttl_s
        if op.if_none_match is not None:
            out["if_none_match"] = op.if_none_match
    elif isinstance(op, DeleteOp):
        out = {"op": "delete", "key": op.key}
    elif isinstance(op, TouchOp):
        out = {"op": "touch", "key": op.key, "ttl": op.ttl_s}
    else:
        out = {"op": "invalidate", "key": op.key}
    if isinstance(op, PutOp | DeleteOp | TouchOp) and op.if_match is not None:
        out["if_match"] = tag(op.if_match)
    return out


def decode(ops: Sequence[BatchOp], document: object) -> list[OpResult]:
    """The results of ``ops`` from the answer's JSON; one each, or ``UnexpectedResponseError``."""
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list) or len(results) != len(ops):
        raise UnexpectedResponseError("the batch's answer has not one result per op")
    try:
        return [_decode(op, result) for op, result in zip(ops, results, strict=True)]
    except (TypeError, ValueError, binascii.Error) as exc:
        raise UnexpectedResponseError(f"a batch result is malformed: {exc}") from exc


def _decode(op: BatchOp, result: object) -> OpResult:
    if not isinstance(result, dict):
        raise TypeError("a result is not an object")
    status = _int(result, "status")
    if status is None:
        raise ValueError("a result has no status")
    etag, version = _str(result, "etag"), _int(result, "version")
    if version is None and etag is not None:
        version = version_of(etag)
    raw_problem = result.get("problem")
    problem = {str(k): v for k, v in raw_problem.items()} if isinstance(raw_problem, dict) else None
    retry_after = _int(result, "retry_after")
    retry_after_s = None if retry_after is None else float(retry_after)
    cache_status, value = _str(result, "cache_status"), _str(result, "value")
    expires_at = _str(result, "expires_at")
    return OpResult(
        op, status, etag=etag, version=version,
        cache_status=None if cache_status is None else CacheStatus.parse(cache_status),
        age_s=_int(result, "age"), content_type=_str(result, "content_type"),
        value=None if value is None else base64.b64decode(value, validate=True),
        expires_at=None if expires_at is None else datetime.fromisoformat(expires_at),
        retry_after_s=retry_after_s, problem=problem,
        error=None if problem is None
        else error_for(status, problem, retry_after_s=retry_after_s, etag=etag),
    )  # fmt: skip


def _str(result: Mapping[str, object], name: str) -> str | None:
    value = result.get(name)
    return value if isinstance(value, str) else None


def _int(result: Mapping[str, object], name: str) -> int | None:
    value = result.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
