"""A server in its own process for a test or a benchmark: started, awaited, stopped by PID."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def served(
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    ready_url: str,
    ready_statuses: tuple[int, ...] = (200,),
    timeout_s: float = 20.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (output to ``log_path``) until ``ready_url`` answers one of
    ``ready_statuses``; at exit SIGINT, then SIGKILL if it has not stopped in 15 s."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited ({proc.returncode}):\n{_tail(log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=1).status_code in ready_statuses:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready in {timeout_s:g} s:\n{_tail(log_path)}")
                time.sleep(0.1)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]
