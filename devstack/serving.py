"""A gateway (or another ASGI app) in its own process against a stack, for a test or a benchmark:
started on a free port, awaited, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from devstack.ports import find_free_port


class Environment(Protocol):
    """What a gateway is served against: a stack, or the fault lab's cluster."""

    def env(self) -> dict[str, str]: ...


ROOT = Path(__file__).resolve().parents[1]
GATEWAY = (sys.executable, "-m", "app.cli", "serve")
"""``cachegw serve``, as ``make run`` starts it."""


@dataclass(frozen=True)
class Served:
    """A server process that answered its readiness path: its address, process and log."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path


@contextlib.contextmanager
def serve_gateway(
    stack: Environment,
    log_dir: Path,
    *,
    command: Sequence[str] = GATEWAY,
    env: Mapping[str, str] | None = None,
    log_name: str = "gateway",
    keep_log: bool = True,
    ready_path: str = "/readyz",
    ready_statuses: tuple[int, ...] = (200,),
    timeout_s: float = 20.0,
    cwd: Path = ROOT,
) -> Iterator[str]:
    """Run ``command --port N`` on a free port N, in ``cwd`` (the repository root), with the stack's
    variables and ``env`` over this process's environment; yield ``http://127.0.0.1:N`` once
    ``ready_path`` answers one of ``ready_statuses``.

    Output goes to ``log_dir/<log_name>-N.log`` (deleted at the end unless ``keep_log``). At exit
    SIGINT, then SIGKILL if the process has not stopped within 15 s.
    """
    with spawn_gateway(
        stack, log_dir, command=command, env=env, log_name=log_name, keep_log=keep_log,
        ready_path=ready_path, ready_statuses=ready_statuses, timeout_s=timeout_s, cwd=cwd,
    ) as served:  # fmt: skip
        yield served.url


@contextlib.contextmanager
def spawn_gateway(
    stack: Environment,
    log_dir: Path,
    *,
    port: int | None = None,
    command: Sequence[str] = GATEWAY,
    env: Mapping[str, str] | None = None,
    log_name: str = "gateway",
    keep_log: bool = True,
    ready_path: str = "/readyz",
    ready_statuses: tuple[int, ...] = (200,),
    timeout_s: float = 20.0,
    cwd: Path = ROOT,
) -> Iterator[Served]:
    """``serve_gateway``, yielding the process too (to signal it), on ``port`` if given."""
    port = port or find_free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{log_name}-{port}.log"
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=cwd,
                env={**os.environ, **stack.env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(proc, f"{base_url}{ready_path}", ready_statuses, timeout_s, log_path)
                yield Served(base_url, port, proc, log_path)
            finally:
                stop(proc)
    finally:
        if not keep_log:
            log_path.unlink(missing_ok=True)


def stop(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGINT, timeout_s: float = 15) -> None:
    """Send ``sig`` (if it still runs), wait up to ``timeout_s``, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_ready(
    proc: subprocess.Popen[bytes],
    ready_url: str,
    ready_statuses: tuple[int, ...],
    timeout_s: float,
    log_path: Path,
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}):\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=1).status_code in ready_statuses:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready in {timeout_s:g} s:\n{_tail(log_path)}")
        time.sleep(0.1)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]
