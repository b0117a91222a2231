"""The fault lab's delay proxy, on loopback: bytes pass at once with no fault, each chunk is
held for the delay in force (read again when the control file changes), order is kept, and
the lab stops it by the PID it recorded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devstack.labcluster import checked_proxy_pid, stop_proxy
from devstack.ports import find_free_port

ROOT = Path(__file__).resolve().parents[2]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    port = find_free_port()
    control = tmp_path / "fault.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devstack.faultproxy", f"127.0.0.1:{port}", f"127.0.0.1:{target}",
        str(control), cwd=ROOT,
    )  # fmt: skip
    try:
        for _ in range(200):
            if checked_proxy_pid(control) is not None:
                break
            await asyncio.sleep(0.05)
        assert checked_proxy_pid(control) == proc.pid
        yield port, control
    finally:
        stop_proxy(control)
        await asyncio.wait_for(proc.wait(), 10)
        server.close()
        await server.wait_closed()


async def _round_trip(port: int, payload: bytes) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    elapsed = time.monotonic() - began
    writer.close()
    assert got == payload
    return elapsed


def _set(control: Path, low: int, high: int) -> None:
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps({"delay_ms": [low, high]}))
    tmp.replace(control)


async def test_no_fault_passes_at_once_and_a_delay_holds_each_way(
    proxy: tuple[int, Path],
) -> None:
    port, control = proxy
    assert await _round_trip(port, b"ping") < 0.15
    _set(control, 150, 150)
    await asyncio.sleep(0.3)  # the proxy polls its control file
    assert await _round_trip(port, b"ping") >= 0.3  # 150 ms there, 150 ms back
    control.unlink()
    await asyncio.sleep(0.3)
    assert await _round_trip(port, b"ping") < 0.15


async def test_a_varying_delay_keeps_the_stream_in_order(proxy: tuple[int, Path]) -> None:
    port, control = proxy
    _set(control, 0, 40)
    await asyncio.sleep(0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunks = [f"{i:05d}".encode() for i in range(200)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.001)
    got = await asyncio.wait_for(reader.readexactly(5 * len(chunks)), 20)
    writer.close()
    assert got == b"".join(chunks)


def test_a_pid_that_is_not_the_proxy_is_never_signalled(tmp_path: Path) -> None:
    control = tmp_path / "fault.json"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        Path(f"{control}.pid").write_text(str(sleeper.pid))
        assert checked_proxy_pid(control) is None
        stop_proxy(control)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
