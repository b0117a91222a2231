"""Ports for the stack's servers are chosen below the kernel's ephemeral range."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from devstack import BUS_PORT_OFFSET, StackConfig, find_free_base_port, find_free_port
from devstack.layout import Layout
from devstack.ports import ephemeral_range, port_bindable, port_use


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


def test_the_default_ports_stay_below_the_ephemeral_range_too() -> None:
    """``make run`` once failed on the default Postgres port, 55432: an outgoing connection had
    been given it as its own end."""
    low, _ = ephemeral_range()
    config = StackConfig(root=Path("/nonexistent"))
    assert config.pg_port < low
    assert config.redis_base_port + 5 + BUS_PORT_OFFSET < low


def test_a_port_held_by_a_connection_is_told_from_one_a_program_listens_on() -> None:
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as server:
        listening = server.getsockname()[1]
        assert "listens on it" in port_use(listening)
        with contextlib.closing(socket.create_connection(("127.0.0.1", listening))) as client:
            accepted, _ = server.accept()
            with contextlib.closing(accepted):
                own_end = client.getsockname()[1]
                described = port_use(own_end)
                assert "held by a connection's own end" in described, described
                assert "ESTABLISHED" in described


def test_a_slow_step_says_it_has_started_before_it_ends() -> None:
    """``make run`` is never silent during a wait: the line before, the duration after."""
    lines: list[str] = []
    layout = Layout(StackConfig(root=Path("/nonexistent")), echo=lines.append)
    with layout.step("redis: cluster ok", starting="redis: waiting for the cluster"):
        assert lines == ["redis: waiting for the cluster ..."]
    with layout.step("env written"):
        pass
    assert lines[1].startswith("redis: cluster ok (")
    assert lines[2].startswith("env written (")
    assert len(lines) == 3
