"""Whose data is believed: a repair clears only the doubts raised before it began."""

from __future__ import annotations

from app.cluster.provenance import Identity, Provenance

NODE = ("10.0.0.1", 6379)


def identity(
    run_id: str = "a", role: str = "primary", replid: str = "r", offset: int = 10
) -> Identity:
    return Identity(run_id=run_id, role=role, replid=replid, offset=offset)


def test_a_change_of_process_history_or_role_makes_a_primary_suspect() -> None:
    provenance = Provenance()
    assert provenance.observe(NODE, identity()) is None  # first sight: taken as it is
    assert provenance.observe(NODE, identity(offset=20)) is None
    assert provenance.trusted(NODE)
    assert provenance.observe(NODE, identity(offset=5)) == "replication offset went back"
    assert not provenance.trusted(NODE)
    other = ("10.0.0.2", 6379)
    provenance.observe(other, identity(role="replica"))
    assert provenance.observe(other, identity(role="primary")) == "promoted"


def test_a_repair_does_not_clear_a_doubt_raised_while_it_ran() -> None:
    provenance = Provenance()
    provenance.suspect(NODE, "restarted")
    first = provenance.suspects()[NODE]
    provenance.suspect(NODE, "restarted again")  # during the repair of the first
    assert provenance.repaired(NODE, first) is False
    assert not provenance.trusted(NODE)
    assert provenance.repaired(NODE, provenance.suspects()[NODE]) is True
    assert provenance.trusted(NODE)


def test_a_contact_lost_during_a_repair_makes_it_run_again() -> None:
    provenance = Provenance()
    provenance.suspect(NODE, "restarted")
    first = provenance.suspects()[NODE]
    provenance.lost_contact(NODE)
    assert provenance.repaired(NODE, first) is False
    again = provenance.suspects()[NODE]
    assert again.reason == "restarted"
    assert again != first  # the next repair is for everything doubted so far
    assert provenance.repaired(NODE, again) is True
    assert provenance.trusted(NODE)
