"""A scripted RESP2 server on loopback, for unit tests of the slot router and node client.

Each command goes to ``handler(session, args)``, which returns the reply; ``session`` is the
per-connection state (its id, and whether the previous command was ASKING).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import hiredis


class Err(str):
    """An error reply, e.g. Err("MOVED 12 127.0.0.1:7001")."""


@dataclass
class Session:
    id: int
    asking: bool = False
    commands: list[list[bytes]] = field(default_factory=list)


Reply = object
Handler = Callable[[Session, list[bytes]], Reply | Awaitable[Reply]]


def encode(reply: Reply) -> bytes:
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, Err):
        return b"-" + reply.encode() + b"\r\n"
    if isinstance(reply, bool):
        return b":%d\r\n" % int(reply)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, str):
        reply = reply.encode()
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(encode(item) for item in reply)
    raise TypeError(type(reply))


class FakeNode:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sessions: list[Session] = []
        self.reads_per_session: dict[int, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def start(self) -> FakeNode:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for session_task in list(self._tasks):
                session_task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        session = Session(id=len(self.sessions))
        self.sessions.append(session)
        parser = hiredis.Reader()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                self.reads_per_session[session.id] = self.reads_per_session.get(session.id, 0) + 1
                parser.feed(data)
                out = []
                while (command := parser.gets()) is not False:
                    args = [bytes(a) for a in command]
                    session.commands.append(args)
                    if args[0].upper() == b"ASKING":
                        session.asking = True
                        out.append(encode("OK"))
                        continue
                    reply = self.handler(session, args)
                    if asyncio.iscoroutine(reply):
                        reply = await reply
                    session.asking = False
                    out.append(encode(reply))
                writer.write(b"".join(out))
                await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            return
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)


def shards_reply(
    layout: list[tuple[tuple[int, int], tuple[str, int], list[tuple[str, int]]]],
) -> list[object]:
    """A RESP2 CLUSTER SHARDS reply for [(slot range, primary, replicas)]."""
    out: list[object] = []
    for (start, end), primary, replicas in layout:
        nodes: list[object] = []
        for role, (host, port) in [("master", primary)] + [("replica", r) for r in replicas]:
            nodes.append([
                b"id", f"{port:040d}".encode(), b"port", port, b"ip", host.encode(),
                b"endpoint", host.encode(), b"role", role.encode(),
                b"replication-offset", 1, b"health", b"online",
            ])  # fmt: skip
        out.append([b"slots", [start, end], b"nodes", nodes])
    return out
