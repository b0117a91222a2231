"""Ports for the stack's servers are chosen below the kernel's ephemeral range."""

from __future__ import annotations

from devstack import BUS_PORT_OFFSET, find_free_base_port, find_free_port
from devstack.ports import ephemeral_range, port_bindable


def test_ports_stay_below_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 1024 <= low < high <= 65535
    for _ in range(20):
        base = find_free_base_port()
        assert base + 5 + BUS_PORT_OFFSET < low
        port = find_free_port(avoid=frozenset({base}))
        assert port < low
        assert port != base
        assert port_bindable(port)
