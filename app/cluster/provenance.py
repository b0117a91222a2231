"""Whether a primary's data can be believed: Redis that returns with old data never is.

A primary can come back holding older data than it acknowledged: restarted from an older
snapshot (``save`` persistence after a crash) before any failover, replaced at the same address,
a replica promoted while it was behind. None of this needs the set of primary addresses to
change, so none of it is detected by watching that set. What does change is the node's identity
as it reports it:

* ``run_id`` (``INFO server``): a new process;
* ``master_replid`` and ``master_repl_offset`` (``INFO replication``): a new replication history
  (a promotion, a restart without its replication state) or one that went back;
* its role: a replica that became a primary.

The topology watcher reports what it sees (``observe``); the slot router reports a node it lost
contact with (``lost_contact``: until the watcher has seen its identity again, a restart in
between cannot be ruled out) and an address that became a primary (``promoted``). A primary that
is suspect or unverified is not *trusted*: its copies are not served as fresh (the router reads
the store and fills it). The outbox repairs a suspect primary once (``Outbox.repair_suspects``:
replays the outbox rows its data may lack, or empties it of the gateway's keys when its data is
older than the outbox can vouch for) and then calls ``repaired``.

Owned by the slot router; the watcher and the outbox write to it through these methods only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app import telemetry
from app.cluster.slots import Address, format_address

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a node says it is: its process, its replication history and its place in it."""

    run_id: str
    role: str  # "primary" | "replica"
    replid: str
    offset: int


@dataclass(frozen=True, slots=True)
class Suspicion:
    reason: str
    since: float
    # Counts every doubt raised on the address (a suspicion, a lost contact): a repair made
    # for one generation does not clear a doubt raised while it ran.
    generation: int = 0


class Provenance:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._identities: dict[Address, Identity] = {}
        self._suspects: dict[Address, Suspicion] = {}
        self._unverified: set[Address] = set()
        self._generations: dict[Address, int] = {}

    def trusted(self, address: Address) -> bool:
        return address not in self._suspects and address not in self._unverified

    def suspects(self) -> dict[Address, Suspicion]:
        return dict(self._suspects)

    def unverified(self) -> set[Address]:
        return set(self._unverified)

    def observe(self, address: Address, identity: Identity) -> str | None:
        """The watcher's latest view of a node; the reason it became suspect, if it did.

        A node seen for the first time is taken as it is (nothing to compare with); after that,
        a primary whose process, history or role changed is suspect. Seeing a node unchanged
        verifies it again after a lost contact; a replica is never suspect (when one becomes a
        primary, that is a change of role).
        """
        before = self._identities.get(address)
        self._identities[address] = identity
        reason = None if before is None else _change(before, identity)
        if reason is not None and identity.role == "primary":
            self.suspect(address, reason)
        else:  # seen, and nothing to doubt (a replica's data follows its primary's)
            self._unverified.discard(address)
        return reason

    def lost_contact(self, address: Address) -> None:
        """A connection to the primary broke: it may have restarted; unverified until seen."""
        self._unverified.add(address)
        self._doubt(address)

    def _doubt(self, address: Address) -> int:
        generation = self._generations.get(address, 0) + 1
        self._generations[address] = generation
        return generation

    def promoted(self, address: Address) -> None:
        """The address became a primary in the slot map (a failover, a MOVED to it)."""
        self.suspect(address, "new primary")

    def suspect(self, address: Address, reason: str) -> None:
        """Doubt the primary's data; a new suspicion replaces one being repaired (the repair
        of the older one then does not clear it)."""
        log.warning(
            "primary %s is not believed until repaired: %s", format_address(address), reason
        )
        telemetry.PRIMARY_SUSPECTED.labels(reason=reason).inc()
        self._suspects[address] = Suspicion(reason, self.clock(), self._doubt(address))

    def repaired(self, address: Address, suspicion: Suspicion) -> bool:
        """The node's data was repaired for ``suspicion``: believed again, unless a doubt was
        raised since (then it stays suspect, or unverified). Whether it is believed now."""
        generation = self._generations.get(address, 0)
        if generation != suspicion.generation:
            current = self._suspects.get(address)
            if current is not None and current.generation != generation:
                # Doubted again while it was repaired (a lost contact): repair it again.
                self._suspects[address] = Suspicion(current.reason, current.since, generation)
            return False
        self._suspects.pop(address, None)
        self._unverified.discard(address)
        return True

    def forget(self, keep: Callable[[Address], bool]) -> None:
        """Drop what is known of nodes that left the cluster."""
        for address in [a for a in self._identities if not keep(a)]:
            del self._identities[address]
        for address in [a for a in self._suspects if not keep(a)]:
            del self._suspects[address]
        for address in [a for a in self._generations if not keep(a)]:
            del self._generations[address]
        self._unverified = {a for a in self._unverified if keep(a)}


def _change(before: Identity, now: Identity) -> str | None:
    if now.run_id != before.run_id:
        return "restarted"
    if now.role == "primary" and before.role != "primary":
        return "promoted"
    if now.role == "primary" and now.replid != before.replid:
        return "new replication history"
    if now.role == "primary" and now.offset < before.offset:
        return "replication offset went back"
    return None
