"""The feed's payloads: batches round-trip whatever a key holds, and split under the limit."""

from __future__ import annotations

import pytest

from app.announce import MAX_PAYLOAD_BYTES, decode, encode
from app.store import FeedRow, Position

AT = Position("100:105:101,103", at=1_800_000_000.123456)
BEFORE = Position("90:95:", at=1_799_999_999.5)


def test_a_batch_round_trips_keys_with_any_character() -> None:
    rows = [
        FeedRow("default", "plain", 7, 1_800_000_000_001),
        FeedRow("ns two", "tab\there\nnewline 3 4 ", 8, 1_800_000_000_002),
        FeedRow("ünï", "日本語 key", 9, 1_800_000_000_003),
        FeedRow("n", "", 10, 0),
    ]
    [payload] = encode(rows, position=AT, before=BEFORE)
    batch = decode(payload)
    assert batch.relayed
    assert batch.position == AT
    assert batch.rows == rows


def test_a_heartbeat_is_one_payload_with_the_position_and_no_rows() -> None:
    [payload] = encode([], position=AT, before=BEFORE)
    assert decode(payload).rows == []
    assert decode(payload).position == AT
    [none] = encode([], position=None, before=None)
    assert decode(none).position is None


def test_rows_split_over_as_few_payloads_as_fit_and_only_the_last_completes_the_position() -> None:
    rows = [FeedRow("default", f"key-é-{i:05d}" + "x" * (i % 300), i, i) for i in range(2000)]
    payloads = encode(rows, position=AT, before=BEFORE)
    sizes = [len(p.encode()) for p in payloads]
    assert max(sizes) <= MAX_PAYLOAD_BYTES
    total = sum(sizes)
    assert len(payloads) <= total // MAX_PAYLOAD_BYTES + 2  # as few as fit, give or take a row
    batches = [decode(p) for p in payloads]
    assert [r for b in batches for r in b.rows] == rows  # in order, none lost or repeated
    assert all(b.position == BEFORE for b in batches[:-1])
    assert batches[-1].position == AT


def test_a_row_that_fits_in_no_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="fits in no payload"):
        encode([FeedRow("ns", "k" * MAX_PAYLOAD_BYTES, 1, 1)], position=AT, before=None)
    [payload] = encode([FeedRow("ns", "k" * 4096, 1, 1)], position=AT, before=None)
    assert decode(payload).rows[0].key == "k" * 4096  # the largest key the API allows fits


def test_a_snapshot_listing_too_many_transactions_is_sent_as_its_xmin() -> None:
    busy = Position("1000:5000:" + ",".join(str(x) for x in range(1000, 1600)), at=1.0)
    [payload] = encode([], position=busy, before=None)
    assert decode(payload).position == Position("1000:1000:", at=1.0)  # sees less: still true


def test_the_trigger_payload_is_still_read() -> None:
    batch = decode("42\t1800000000000\tdefault\tsome key")
    assert not batch.relayed
    assert batch.position is None
    assert batch.rows == [FeedRow("default", "some key", 42, 1_800_000_000_000)]


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "garbage",
        "cgw1 1:1: 1.0\n5 6 7",
        "cgw1 1:1: 1.0\n5 6 1 1 ab",
        "cgw1 - -\n1 2 -1 3 abc\n",
    ],
)
def test_malformed_payloads_raise_value_error(payload: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (every malformation is a ValueError)
        decode(payload)
