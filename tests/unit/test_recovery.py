"""How a suspect primary is repaired: from its marker, or emptied when nothing vouches for it."""

from __future__ import annotations

from app.recovery import TXN_MARGIN_S, Marker, replay_from


def test_a_marker_says_from_when_to_replay() -> None:
    marker = Marker.parse(b"ab12 1000.000 990.500")
    assert marker == Marker("ab12", 1000.0, 990.5)
    # The oldest pending update then may have been applied after the data was taken.
    assert replay_from(marker, now=1005.0, retain_s=120) == 990.5 - TXN_MARGIN_S


def test_without_a_marker_or_with_one_older_than_the_outbox_the_node_is_emptied() -> None:
    assert replay_from(None, now=1000.0, retain_s=120) is None
    stale = Marker("ab12", 1000.0, 1000.0)  # a replica promoted after falling 200 s behind
    assert replay_from(stale, now=1200.0, retain_s=120) is None


def test_what_is_not_a_marker_counts_as_none() -> None:
    for raw in (None, b"", b"garbage", b"ab12 x y", b"a b c d"):
        assert Marker.parse(raw) is None
