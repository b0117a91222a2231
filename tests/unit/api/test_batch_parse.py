"""The batch's fast path for plain gets (``plain_gets``) accepts only what ``parse`` accepts,
and reads the same gets from it."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from app.api.batch import GetOp, parse, plain_gets
from app.errors import InvalidBatchError
from app.settings import LimitSettings

LIMITS = LimitSettings(max_batch_ops=5)
FIELD = st.sampled_from(["op", "key", "min_version", "value", "ttl", "extra"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
VALUE = st.one_of(st.sampled_from(["get", "put", "delete", "touch"]), JSON)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2**70), st.text(max_size=3),
    st.floats(allow_nan=False, allow_infinity=False),
)  # fmt: skip
GET = st.fixed_dictionaries(
    {"op": st.just("get"), "key": st.text(max_size=4) | JSON},
    optional={"min_version": SCALAR | JSON},
)
OP = GET | st.dictionaries(FIELD, VALUE, max_size=4) | JSON
DOCUMENT = st.one_of(
    st.fixed_dictionaries({"ops": st.lists(GET, min_size=1, max_size=6)}),
    st.fixed_dictionaries({"ops": st.lists(OP, max_size=7)}),
    st.dictionaries(st.sampled_from(["ops", "more"]), st.lists(OP, max_size=3)),
    JSON,
)


def gets_of(body: bytes) -> list[tuple[str, object]] | None:
    try:
        ops = parse(body, LIMITS).ops
    except InvalidBatchError:
        return None
    if not all(isinstance(op, GetOp) for op in ops):
        return None
    return [(op.key, op.min_version) for op in ops]  # type: ignore[union-attr]


@settings(max_examples=400, deadline=None)
@given(DOCUMENT)
def test_plain_gets_accepts_nothing_parse_refuses(document: object) -> None:
    body = json.dumps(document).encode()  # (orjson refuses integers past 64 bits)
    fast = plain_gets(body, LIMITS)
    if fast is not None:
        assert fast == gets_of(body)


def test_plain_gets_takes_the_common_batch() -> None:
    body = b'{"ops": [{"op": "get", "key": "a"}, {"op": "get", "key": "b", "min_version": "7"}]}'
    assert plain_gets(body, LIMITS) == [("a", None), ("b", "7")] == gets_of(body)


def test_plain_gets_leaves_everything_else_to_parse() -> None:
    for body in (
        b'{"ops": [{"op": "get", "key": "a", "x": 1}]}',
        b'{"ops": [{"op": "get", "key": 1}]}',
        b'{"ops": [{"op": "get", "key": "a", "min_version": true}]}',
        b'{"ops": [{"op": "get", "key": "a", "min_version": 1.5}]}',
        b'{"ops": [{"op": "put", "key": "a"}]}',
        b'{"ops": []}',
        b'{"ops": [' + b",".join([b'{"op": "get", "key": "a"}'] * 6) + b"]}",
        b'{"ops": [{"op": "get", "key": "a"}], "x": 1}',
        b"[]",
        b"not json",
    ):
        assert plain_gets(body, LIMITS) is None, body
