"""The fault lab's delay proxy: a TCP forwarder that holds every chunk for a while.

This machine's kernel has neither ``sch_netem`` nor ``sch_prio``, so ``tc`` cannot add latency.
A lab node that is to be slowed runs one of these in its own namespace, in front of it, from the
start: the node announces the proxy's port (``cluster-announce-port``), so clients and the other
nodes reach it only through the proxy (the cluster bus goes direct). With no fault the proxy
passes bytes through at once.

The fault is a small JSON file, ``{"delay_ms": [low, high]}``, read again whenever its mtime
changes (checked every ``POLL_S``): each chunk read from either side is written on after a delay
drawn from ``[low, high]``, never before an earlier chunk of the same direction (order kept, so
a stream stays a stream). Loss is not the proxy's: the lab adds it as nftables rules
(``NetLab.lose``), so TCP itself retransmits as it would over a lossy link.

Run as ``python -m devstack.faultproxy LISTEN_HOST:PORT TARGET_HOST:PORT CONTROL_FILE``; it
writes its PID to ``CONTROL_FILE.pid`` once it listens, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

POLL_S = 0.05
CHUNK = 65536
MAX_DELAY_MS = 10_000


@dataclass
class Fault:
    """The delay in force, reloaded from ``path`` when it changes."""

    path: Path
    low_s: float = 0.0
    high_s: float = 0.0
    _mtime: float = -1.0
    rng: random.Random = field(default_factory=random.Random)

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.low_s = self.high_s = 0.0
            self._mtime = -1.0
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        with contextlib.suppress(ValueError, OSError, TypeError, KeyError):
            low, high = json.loads(self.path.read_text())["delay_ms"]
            low, high = sorted((int(low), int(high)))
            if low >= 0 and high <= MAX_DELAY_MS:
                self.low_s, self.high_s = low / 1000, high / 1000

    def delay_s(self) -> float:
        if self.high_s <= 0:
            return 0.0
        return self.rng.uniform(self.low_s, self.high_s)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault) -> None:
    """Copy ``reader`` to ``writer``, each chunk after its delay, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    last_due = 0.0
    try:
        while True:
            data = await reader.read(CHUNK)
            due = max(last_due, time.monotonic() + fault.delay_s())
            last_due = due
            queue.put_nowait((due, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int], control: Path) -> None:
    fault = Fault(control)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer, fault), _pump(up_reader, writer, fault))

    async def poll() -> None:
        while True:
            fault.reload()
            await asyncio.sleep(POLL_S)

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    await asyncio.to_thread(Path(f"{control}.pid").write_text, str(os.getpid()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    poller = asyncio.create_task(poll())
    async with server:
        await stop.wait()
    poller.cancel()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m devstack.faultproxy LISTEN TARGET CONTROL_FILE")
    asyncio.run(_serve(_address(argv[0]), _address(argv[1]), Path(argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
