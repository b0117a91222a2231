"""The soak's history checker, on histories written by hand."""

from __future__ import annotations

from bench.history import KeyHistory, Op, Read, check_read, last_acknowledged


def history(*ops: Op) -> tuple[KeyHistory, dict[bytes, Op]]:
    h = KeyHistory(ops=list(ops))
    return h, {op.body: op for op in ops if op.body is not None}


PUT1 = Op("put", 0.0, 1.0, "ok", b"one", 1)
PUT2 = Op("put", 2.0, 3.0, "ok", b"two", 2)
DELETE = Op("delete", 4.0, 5.0, "ok")


def test_a_read_after_an_acknowledged_write_sees_it_or_what_overlaps() -> None:
    h, written = history(PUT1, PUT2)
    assert check_read(h, Read(3.5, 3.6, 200, b"two", 2), written) is None
    assert check_read(h, Read(2.5, 2.6, 200, b"one", 1), written) is None  # PUT2 overlaps
    assert check_read(h, Read(2.5, 2.6, 200, b"two", 2), written) is None
    assert "older" in (check_read(h, Read(3.5, 3.6, 200, b"one", 1), written) or "")


def test_deletes_absent_keys_and_404s() -> None:
    h, written = history(PUT1, DELETE)
    assert check_read(h, Read(5.5, 5.6, 404), written) is None
    assert "deleted" in (check_read(h, Read(5.5, 5.6, 200, b"one", 1), written) or "")
    assert "404" in (check_read(h, Read(1.5, 1.6, 404), written) or "")
    assert check_read(h, Read(-1.0, -0.5, 404), written) is None  # before anything


def test_stale_answers_may_be_as_old_as_they_say() -> None:
    h, written = history(PUT1, PUT2)
    late = Read(4.0, 4.1, 200, b"one", 1, stale=True, age_s=2.0)  # 2 s + 1 s slack: back to 1.0
    assert check_read(h, late, written) is None
    too_old = Read(10.0, 10.1, 200, b"one", 1, stale=True, age_s=1.0)
    assert check_read(h, too_old, written) is not None


def test_values_never_written_and_wrong_etags() -> None:
    h, written = history(PUT1)
    assert "never written" in (check_read(h, Read(2.0, 2.1, 200, b"forged", 1), written) or "")
    assert "ETag" in (check_read(h, Read(2.0, 2.1, 200, b"one", 7), written) or "")
    assert check_read(h, Read(2.0, 2.1, 503), written) is None  # unavailable, not wrong
    assert check_read(h, Read(2.0, 2.1, 500), written) == "status 500"
    assert check_read(h, Read(2.0, 2.1, 401), written) == "status 401"


def test_unknown_outcomes_may_or_may_not_have_happened() -> None:
    maybe = Op("put", 2.0, 3.0, "unknown", b"maybe")
    h, written = history(PUT1, maybe)
    assert check_read(h, Read(9.0, 9.1, 200, b"maybe", None), written) is None
    assert check_read(h, Read(9.0, 9.1, 200, b"one", 1), written) is None
    assert last_acknowledged(h.ops) == [(b"one", 1), (b"maybe", None)]
    failed = Op("put", 2.0, 3.0, "failed", b"no")
    h, written = history(PUT1, failed)
    assert check_read(h, Read(9.0, 9.1, 200, b"no", None), written) is not None
    assert last_acknowledged(h.ops) == [(b"one", 1)]
