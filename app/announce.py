"""The feed's payloads: the relay's batches, and the single-row NOTIFY of the outbox trigger.

A batch (``app/relay.py``) is one NOTIFY payload::

    cgw1 <snapshot or -> <at, s>\\n
    <seq> <created ms> <len(namespace)> <len(key)> <namespace><key>\\n   (per row)

Namespaces and keys are length-prefixed (in characters), so no character in them, a tab or a
newline included, can break the parse; the API refuses control characters anyway. The header's
position says what the batch completes: once it has arrived, every transaction that snapshot sees
has been announced (``-``: nothing more than before). Postgres refuses a payload of 8,000 bytes or
more, so a round's rows are split over as few payloads as fit, and only the last one carries the
round's position (the others carry the round's starting one, already true before they arrive).

The trigger's payload (``seq<TAB>sent ms<TAB>namespace<TAB>key``, migration 0002) is parsed too:
a writer in notify mode, or an older gateway in a rolling upgrade, still sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.store import FeedRow, Position

MAGIC = "cgw1"
# Postgres: a payload must be shorter than 8,000 bytes (BLCKSZ - NAMEDATALEN - 128).
MAX_PAYLOAD_BYTES = 7999
# A snapshot listing this many bytes of in-progress transactions is sent as its xmin alone: a
# position that sees less is still true (catch-up from it reads more), and the rows keep room.
MAX_SNAPSHOT_BYTES = 2000


@dataclass(frozen=True, slots=True)
class Batch:
    position: Position | None  # None: this payload completes no new position
    rows: list[FeedRow]
    relayed: bool  # False: the trigger's single-row payload


def _header(position: Position | None) -> str:
    if position is None:
        return f"{MAGIC} - -\n"
    snapshot = position.snapshot
    if len(snapshot) > MAX_SNAPSHOT_BYTES:
        xmin = snapshot.split(":", 1)[0]
        snapshot = f"{xmin}:{xmin}:"
    return f"{MAGIC} {snapshot} {position.at!r}\n"


def _row(row: FeedRow) -> str:
    return (
        f"{row.seq} {row.created_ms} {len(row.namespace)} {len(row.key)} {row.namespace}{row.key}\n"
    )


def encode(
    rows: Sequence[FeedRow],
    *,
    position: Position | None,
    before: Position | None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[str]:
    """The payloads of one round, in order: ``rows`` in as few as fit in ``max_bytes``, the
    last one carrying ``position``, the others ``before``; with no rows, one (a heartbeat).

    ``ValueError`` for a row that fits in no payload (the API's limits make one impossible).
    """
    last_header = _header(position)
    other_header = _header(before)
    room = max_bytes - max(len(last_header.encode()), len(other_header.encode()))
    chunks: list[list[str]] = [[]]
    used = 0
    for row in rows:
        text = _row(row)
        size = len(text.encode())
        if size > room:
            raise ValueError(f"an announcement of {size} bytes fits in no payload")
        if used + size > room:
            chunks.append([])
            used = 0
        chunks[-1].append(text)
        used += size
    payloads = [other_header + "".join(chunk) for chunk in chunks[:-1]]
    payloads.append(last_header + "".join(chunks[-1]))
    return payloads


def decode(payload: str) -> Batch:
    """A payload of either kind; ``ValueError`` when it is neither."""
    if not payload.startswith(MAGIC + " "):
        seq_text, sent_ms, namespace, key = payload.split("\t", 3)
        return Batch(None, [FeedRow(namespace, key, int(seq_text), int(sent_ms))], relayed=False)
    end = payload.index("\n")
    _, snapshot, at = payload[:end].split(" ")
    position = None if snapshot == "-" else Position(snapshot=snapshot, at=float(at))
    rows: list[FeedRow] = []
    i = end + 1
    while i < len(payload):
        fields_end = i
        for _ in range(4):
            fields_end = payload.index(" ", fields_end) + 1
        seq, created_ms, ns_len, key_len = (int(f) for f in payload[i : fields_end - 1].split(" "))
        key_at = fields_end + ns_len
        end = key_at + key_len
        if ns_len < 0 or key_len < 0 or payload[end : end + 1] != "\n":
            raise ValueError("malformed batch row")
        rows.append(FeedRow(payload[fields_end:key_at], payload[key_at:end], seq, created_ms))
        i = end + 1
    return Batch(position, rows, relayed=True)
