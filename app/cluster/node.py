"""Commands to one Redis node over redis-py connections, pipelined automatically.

Every command submitted during one turn of the event loop is written in one batch on one
connection and its replies are read back in order (automatic pipelining). A *group* of commands
(``ASKING`` followed by the redirected command) always travels in one batch, so it shares a
connection: the fix for redis-py's ASK handling, which sends the two on different connections.

There are no hidden retries: one attempt per command, bounded by the socket timeout, and the caller
bounds its wait by the request deadline. A caller that stops waiting cancels only its own future;
the batch goes on and its connection stays in step with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as rex
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import Connection, SSLConnection

from app.cluster.errors import map_redis_errors, reply_error
from app.cluster.slots import Address, format_address
from app.errors import NodeBusyError, NodeGoneError, TierError, TierTimeoutError

log = logging.getLogger(__name__)

Command = tuple[bytes | str | int, ...]
# A reply is a decoded RESP value, or the ResponseError instance the server sent for it.
Reply = Any

# Arguments larger than this are written as their own chunk instead of being copied into one.
LARGE_ARGUMENT_BYTES = 16384
# A deadline timer that runs this much after its time says the event loop was behind.
LATE_TIMER_S = 0.005
# The silence timeout of a batch moves on with its replies at most this often: a node that stops
# answering is given up after socket_timeout_s of silence, less at most this much.
SILENCE_STEP_S = 0.001


def pack(commands: Iterable[Command]) -> list[bytes]:
    """RESP for ``commands``: a few chunks for one write (about 3x faster than redis-py's
    ``pack_commands`` for the small commands the gateway sends most)."""
    chunks: list[bytes] = []
    parts: list[bytes] = []
    for args in commands:
        parts.append(b"*%d\r\n" % len(args))
        for arg in args:
            data = (
                arg
                if isinstance(arg, bytes)
                else arg.encode()
                if isinstance(arg, str)
                else b"%d" % arg
            )
            if len(data) > LARGE_ARGUMENT_BYTES:
                parts.append(b"$%d\r\n" % len(data))
                chunks.append(b"".join(parts))
                chunks.append(data)
                parts = [b"\r\n"]
            else:
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    chunks.append(b"".join(parts))
    return chunks


@dataclass(frozen=True, slots=True)
class NodeOptions:
    readonly: bool = False
    connect_timeout_s: float = 0.2
    socket_timeout_s: float = 0.2
    max_connections: int = 32
    max_in_flight: int = 1024
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_check_hostname: bool = True
    # Groups per batch: the bulk lane (large values) sends one at a time, each on a connection
    # of its own, so that no reply queues behind megabytes of another's.
    max_batch_groups: int = 128


@dataclass(slots=True)
class _Group:
    commands: tuple[Command, ...]
    future: asyncio.Future[list[Reply]] = field(repr=False)


def _reply_reader(conn: Connection) -> Callable[[], Awaitable[Reply]]:
    """The next reply on ``conn``, undecoded; an error reply as its ``ResponseError``.

    With hiredis (a dependency), the replies already in the connection's buffer are taken from
    its reader directly: what redis-py's ``read_response`` does for RESP2 without its two
    coroutine layers per reply, which a group of a hundred GETs paid a hundred times. Without
    it, ``read_response`` itself.
    """
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not isinstance(parser, _AsyncHiredisParser) or reader is None:

        async def read_response() -> Reply:
            try:
                return await conn.read_response(disable_decoding=True)
            except rex.ResponseError as reply:
                return reply

        return read_response
    gets = reader.gets
    refill = parser.read_from_socket

    async def read() -> Reply:
        reply = gets(False)
        while reply is NOT_ENOUGH_DATA:
            await refill()  # type: ignore[no-untyped-call]
            reply = gets(False)
        if isinstance(reply, rex.ConnectionError):
            raise reply
        return reply

    return read


class NodeClient:
    """One node's connections (READONLY ones when ``options.readonly``), pipelined.

    ``_pending`` is appended to by ``submit`` and drained only by ``_flush``; ``_idle`` holds the
    connections no batch is using. A batch task owns its connection until it puts it back.
    """

    def __init__(
        self,
        address: Address,
        options: NodeOptions,
        *,
        on_lost: Callable[[Address], None] = lambda address: None,
    ) -> None:
        self.address = address
        self.options = options
        self.on_lost = on_lost  # a connection failed (not a timeout): the node may be another
        self.name = format_address(address)
        self._pending: deque[_Group] = deque()
        self._idle: list[Connection] = []
        self._open = 0
        self._flush_scheduled = False
        self._batches: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # groups submitted and not yet answered or failed
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def connections(self) -> tuple[int, int]:
        """(open, idle) connections."""
        return self._open, len(self._idle)

    def submit(self, *commands: Command) -> asyncio.Future[list[Reply]]:
        """Queue a group of commands for the next batch; the future gets one reply per command."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise NodeGoneError(f"{self.name}: client closed", route=self.name)
        if self._in_flight >= self.options.max_in_flight:
            raise NodeBusyError(
                f"{self.name}: {self._in_flight} commands in flight", route=self.name
            )
        future: asyncio.Future[list[Reply]] = loop.create_future()
        self._pending.append(_Group(commands, future))
        self._in_flight += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def call(self, *commands: Command, deadline: float) -> list[Reply]:
        """Send a group and wait for its replies until ``deadline`` (event-loop time)."""
        future = self.submit(*commands)
        # A timer that fails the future, rather than asyncio.timeout: the same effect for a
        # fraction of the cost, on the hottest await of the gateway.
        timers: list[asyncio.TimerHandle] = []
        timers.append(
            asyncio.get_running_loop().call_at(deadline, self._expire, future, deadline, timers)
        )
        try:
            return await future
        finally:
            timers[-1].cancel()

    def _expire(
        self,
        future: asyncio.Future[list[Reply]],
        deadline: float,
        timers: list[asyncio.TimerHandle],
    ) -> None:
        """Fail the call, unless this timer itself ran late: then the event loop was behind
        (a burst of requests, a busy CPU) and the reply may be waiting in our own socket
        buffer. Blaming the node for our lag would fail the request over, count against the
        node's breaker and feed degraded mode; so the call gets once as long again as the loop
        was late, and only then fails."""
        if future.done():
            return
        loop = asyncio.get_running_loop()
        late = loop.time() - deadline
        if len(timers) == 1 and late > LATE_TIMER_S:
            timers.append(loop.call_at(loop.time() + late, self._expire, future, deadline, timers))
            return
        future.set_exception(
            TierTimeoutError(f"{self.name}: no reply before the deadline", route=self.name)
        )

    async def execute(self, *args: bytes | str | int, deadline: float) -> Reply:
        """One command; a ResponseError reply is raised translated (no redirect handling)."""
        (reply,) = await self.call(args, deadline=deadline)
        if isinstance(reply, rex.ResponseError):
            raise reply_error(reply, route=self.name) from reply
        return reply

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            conn = self._checkout()
            if conn is None:
                return  # every connection is busy; a finishing batch calls _flush again
            batch: list[_Group] = []
            while self._pending and len(batch) < self.options.max_batch_groups:
                group = self._pending.popleft()
                if not group.future.done():  # a caller that gave up before the write costs nothing
                    batch.append(group)
                else:
                    self._in_flight -= 1
            if not batch:
                self._idle.append(conn)
                return
            task = asyncio.get_running_loop().create_task(self._run(conn, batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _checkout(self) -> Connection | None:
        if self._idle:
            return self._idle.pop()
        if self._open >= self.options.max_connections:
            return None
        self._open += 1
        host, port = self.address
        options = self.options
        tls: dict[str, Any] = {}
        if options.tls:
            tls = {
                "ssl_ca_certs": options.tls_ca_file,
                "ssl_certfile": options.tls_cert_file,
                "ssl_keyfile": options.tls_key_file,
                "ssl_check_hostname": options.tls_check_hostname,
            }
        connection_class = SSLConnection if options.tls else Connection
        return connection_class(
            **tls,
            host=host,
            port=port,
            username=self.options.username,
            password=self.options.password,
            # No per-read timeout inside redis-py (a Timeout object per reply, a task per write):
            # one timeout bounds the whole batch in _run instead.
            socket_timeout=None,
            socket_connect_timeout=self.options.connect_timeout_s,
            retry=None,
            driver_info=None,
            protocol=2,  # RESP2: flat replies, and no HELLO round trip on connect
            redis_connect_func=self._on_connect_readonly if self.options.readonly else None,
        )

    @staticmethod
    async def _on_connect_readonly(conn: Connection) -> None:
        await conn.on_connect()
        await conn.send_command("READONLY", check_health=False)
        reply = await conn.read_response()
        if reply not in (b"OK", "OK"):
            raise rex.ConnectionError(f"READONLY refused: {reply!r}")

    async def _run(self, conn: Connection, batch: list[_Group]) -> None:
        """Write the batch and read its replies; a failure fails the groups not yet answered.

        What redis-py, the socket or the silence timeout raise is the node's failure (mapped to
        a ``TierError``; a lost connection is reported to ``on_lost``). Anything else is a bug
        of ours (a ``TypeError`` in ``pack``): logged with its traceback and raised to the
        callers as it is, so it is answered as a bug, not failed over as a node outage.
        """
        healthy = False
        index = 0
        try:
            with map_redis_errors(self.name):
                if not conn.is_connected:
                    # The whole handshake (TCP, TLS, AUTH, READONLY) under the connect timeout: a
                    # node that accepts and never answers must not keep the slot and the batch.
                    async with asyncio.timeout(self.options.connect_timeout_s):
                        await conn.connect()  # type: ignore[no-untyped-call]
                chunks = pack(command for group in batch for command in group.commands)
                loop = asyncio.get_running_loop()
                # A timeout on progress, not on the whole batch: it moves on after each reply,
                # so a batch that keeps answering is never cut off for being long, and a node
                # that stops answering is given up after ``socket_timeout_s`` of silence.
                # Moved at most once per SILENCE_STEP_S (each move is a new timer handle; a
                # group of a hundred replies read in one millisecond needs one, not a hundred).
                timeout_s = self.options.socket_timeout_s
                async with asyncio.timeout(timeout_s) as silence:
                    await conn.send_packed_command(chunks, check_health=False)
                    moved = loop.time()
                    read = _reply_reader(conn)
                    for index, group in enumerate(batch):  # noqa: B007 - read by the handlers
                        replies: list[Reply] = []
                        for _ in group.commands:
                            replies.append(await read())
                            now = loop.time()
                            if now - moved >= SILENCE_STEP_S:
                                silence.reschedule(now + timeout_s)
                                moved = now
                        self._in_flight -= 1
                        if not group.future.done():
                            group.future.set_result(replies)
            healthy = True
        except asyncio.CancelledError:
            self._fail(
                batch[index:], NodeGoneError(f"{self.name}: client closing", route=self.name)
            )
            raise
        except TierError as error:
            if not isinstance(error, TierTimeoutError):
                self.on_lost(self.address)
            self._fail(batch[index:], error)
        except Exception as exc:
            log.exception("%s: a batch failed on an error that is not the node's", self.name)
            self._fail(batch[index:], exc)
        except BaseException:  # KeyboardInterrupt, SystemExit: answer the callers, go on
            self._fail(
                batch[index:], NodeGoneError(f"{self.name}: client closing", route=self.name)
            )
            raise
        finally:
            await self._checkin(conn, healthy=healthy)

    def _fail(self, groups: list[_Group], error: Exception) -> None:
        for group in groups:
            self._in_flight -= 1
            if not group.future.done():
                group.future.set_exception(error)

    async def _checkin(self, conn: Connection, *, healthy: bool) -> None:
        if healthy and not self._closed:
            self._idle.append(conn)
        else:
            self._open -= 1
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def aclose(self) -> None:
        """Stop taking commands, fail what is queued, wait for batches, close connections."""
        self._closed = True
        self._fail(
            list(self._pending), NodeGoneError(f"{self.name}: client closed", route=self.name)
        )
        self._pending.clear()
        if self._batches:
            await asyncio.wait(list(self._batches), timeout=min(self.options.socket_timeout_s, 0.5))
        for task in list(self._batches):
            task.cancel()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
