"""Finding ports on 127.0.0.1 that are free right now (checked, never reserved).

Every port chosen here lies below the kernel's ephemeral range (``ip_local_port_range``), for a
reason the fault tests met: while a node is down, clients keep connecting to its port, and a
connection to an unused port inside the ephemeral range can be given that very port as its own
source (a TCP self-connect), or take it as the source of a connection elsewhere; the restarted
node then cannot bind. Below the range, no outgoing connection is ever given the port.
"""

from __future__ import annotations

import contextlib
import random
import socket

from devstack.config import BUS_PORT_OFFSET, HOST
from devstack.errors import StackError

_PORT_SEARCH_ATTEMPTS = 200
_LOWEST = 10000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux's default if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(v) for v in handle.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def port_bindable(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 right now (as Redis binds it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        # Redis and Postgres set SO_REUSEADDR too, so TIME_WAIT leftovers do not count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_base_port(count: int = 6, *, low: int | None = None, high: int | None = None) -> int:
    """A random base port such that ``base .. base+count-1`` and their cluster bus ports
    (``+10000``) can all be bound on 127.0.0.1 now.

    ``base`` is drawn from ``low .. high-count``; by default, so that the bus ports too stay
    below the ephemeral range. Tries a bounded number of times, then raises
    :class:`StackError`. The ports are free when checked, not reserved.
    """
    if low is None:
        low = _LOWEST
    if high is None:
        high = ephemeral_range()[0] - BUS_PORT_OFFSET
    if count < 1:
        raise StackError(f"count must be at least 1, got {count}")
    top = high - count
    if low < 1 or top < low or high - 1 + BUS_PORT_OFFSET > 65535:
        raise StackError(
            f"no room for {count} ports (and bus ports +{BUS_PORT_OFFSET}) in {low}..{high}"
        )
    rng = random.SystemRandom()
    for _ in range(_PORT_SEARCH_ATTEMPTS):
        base = rng.randint(low, top)
        ports = [base + i for i in range(count)]
        if all(port_bindable(p) and port_bindable(p + BUS_PORT_OFFSET) for p in ports):
            return base
    raise StackError(
        f"found no {count} free consecutive ports (with bus ports) in {low}..{high} "
        f"after {_PORT_SEARCH_ATTEMPTS} attempts"
    )


def find_free_port(*, avoid: frozenset[int] = frozenset()) -> int:
    """A random port below the ephemeral range that can be bound on 127.0.0.1 now (not
    reserved), other than those in ``avoid``."""
    top = ephemeral_range()[0] - 1
    rng = random.SystemRandom()
    for _ in range(_PORT_SEARCH_ATTEMPTS):
        port = rng.randint(_LOWEST, top)
        if port not in avoid and port_bindable(port):
            return port
    raise StackError(f"found no free port in {_LOWEST}..{top}")


# /proc/net/tcp socket states (include/net/tcp_states.h).
_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK",
    "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def sockets_on(port: int, *, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> (
    list[str]
):  # fmt: skip
    """The states of the TCP sockets whose local port is ``port`` (``LISTEN``, ``ESTABLISHED``,
    ``TIME_WAIT``...), from the kernel's tables; empty when none or unreadable."""
    states: list[str] = []
    for table in tables:
        try:
            with open(table) as handle:
                lines = handle.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(_TCP_STATES.get(fields[3], fields[3]))
    return states


def port_use(port: int) -> str:
    """Why ``port`` cannot be bound, in words: another program listens on it, or an outgoing
    connection holds it as its own source port (inside the kernel's ephemeral range any
    connection may be given it; it frees itself when that connection closes)."""
    states = sockets_on(port)
    if "LISTEN" in states:
        return f"port {port} on {HOST} is in use: another program listens on it"
    if states:
        low, high = ephemeral_range()
        where = f" (inside the ephemeral range {low}-{high})" if low <= port <= high else ""
        return (
            f"port {port} on {HOST} is held by a connection's own end{where}, state "
            f"{', '.join(sorted(set(states)))}: nothing listens there, and it frees itself once "
            "that connection closes"
        )
    return f"port {port} on {HOST} cannot be bound"
