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
from pathlib import Path

import httpx

from devstack.ports import find_free_port
from devstack.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = (sys.executable, "-m", "app.cli", "serve")
"""``cachegw serve``, as ``make run`` starts it."""


@contextlib.contextmanager
def serve_gateway(
    stack: Stack,
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
    port = find_free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{log_name}-{port}.log"
    try:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*command, "--port", str(port)],
                cwd=cwd,
                env={**os.environ, **stack.env(), **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_ready(proc, f"{base_url}{ready_path}", ready_statuses, timeout_s, log_path)
                yield base_url
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
    finally:
        if not keep_log:
            log_path.unlink(missing_ok=True)


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
