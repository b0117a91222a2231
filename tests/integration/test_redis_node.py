"""One Redis node's client (``app/cluster/node.py``) against real sockets and real nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from app.cluster.node import NodeClient, NodeOptions
from app.errors import TierError


@pytest.fixture
async def silent_node() -> AsyncIterator[tuple[str, int]]:
    """Accepts connections and never answers (a frozen process, a blackholed host)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "options",
    [
        NodeOptions(password="secret", connect_timeout_s=0.2),  # AUTH in the handshake
        NodeOptions(readonly=True, connect_timeout_s=0.2),  # READONLY in the handshake
    ],
    ids=["auth", "readonly"],
)
async def test_a_handshake_that_gets_no_answer_gives_its_connection_up(
    silent_node: tuple[str, int], options: NodeOptions
) -> None:
    """Audit §13: the AUTH/READONLY handshake ran with no timeout, so a node that accepts and
    never answers kept the connection slot and its commands counted in flight for good."""
    client = NodeClient(silent_node, options)
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(TierError):
            await client.call((b"GET", b"k"), deadline=loop.time() + 0.05)
        for _ in range(100):  # bounded: 2 s
            if client.in_flight == 0 and client.connections == (0, 0):
                break
            await asyncio.sleep(0.02)
        assert (client.in_flight, client.connections) == (0, (0, 0))
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
