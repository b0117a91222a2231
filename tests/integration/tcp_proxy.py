"""A TCP proxy on loopback, in the test's own event loop, that can delay or cut what it forwards.

Put between the gateway and Postgres (or a Redis node) to make a real server slow or silent:
``delay_s`` holds every chunk from the server for that long (order kept, both directions can be
slowed); ``blackhole`` stops forwarding without closing anything (a peer that vanished);
``cut()`` resets every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class TcpProxy:
    target: tuple[str, int]
    delay_s: float = 0.0  # server -> client
    request_delay_s: float = 0.0  # client -> server
    port: int = 0
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def blackhole(self) -> bool:
        return not self._flowing.is_set()

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        if value:
            self._flowing.clear()
        else:
            self._flowing.set()

    async def start(self, *, port: int = 0) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Reset every connection through the proxy (new ones are still accepted)."""
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def dsn(self, dsn: str, original_port: int) -> str:
        return dsn.replace(f":{original_port}/", f":{self.port}/")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(source, sink, upstream=upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()  # b"": the source ended

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await self._flowing.wait()
                if not data:
                    return
                sink.write(data)
                await sink.drain()

        forwarder = asyncio.create_task(forward())
        try:
            while data := await source.read(65536):
                delay = self.request_delay_s if upstream else self.delay_s
                queue.put_nowait((loop.time() + delay, data))
            queue.put_nowait((loop.time() + self.delay_s + self.request_delay_s, b""))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(forwarder), timeout=5)
        except OSError:
            pass
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
            with contextlib.suppress(Exception):
                sink.close()
