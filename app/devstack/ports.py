"""Finding ports on 127.0.0.1 that are free right now (checked, never reserved)."""

from __future__ import annotations

import contextlib
import random
import socket

from app.devstack.config import BUS_PORT_OFFSET, HOST
from app.devstack.errors import StackError

_PORT_SEARCH_ATTEMPTS = 200


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


def find_free_base_port(count: int = 6, *, low: int = 20000, high: int = 50000) -> int:
    """A random base port such that ``base .. base+count-1`` and their cluster bus ports
    (``+10000``) can all be bound on 127.0.0.1 now.

    ``base`` is drawn from ``low .. high-count``. Tries a bounded number of times, then
    raises :class:`StackError`. The ports are free when checked, not reserved.
    """
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


def find_free_port() -> int:
    """A port that the kernel reports free on 127.0.0.1 now (not reserved)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port
