"""Processes: identity checks through /proc, pidfd signalling, bounded waits, commands.

Nothing here signals a PID without first checking, through /proc, that it is still the
program the caller expects (see :func:`signal_checked`).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devstack.errors import StackError

POLL_INTERVAL_S = 0.05
PROCESS_EXIT_TIMEOUT_S = 10.0
SIGKILL_AFTER_S = 5.0
_COMMAND_TIMEOUT_S = 120.0


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may itself contain spaces/parens.
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    return fields[0] if fields else None


def processes_in(directory: Path, name: str) -> list[int]:
    """The live PIDs whose working directory is ``directory`` and whose command line names
    ``name`` (a node's own process, and its forks: they keep its directory, and its port)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if proc_cwd(pid) == directory and name in proc_cmdline(pid) and pid_alive(pid):
                found.append(pid)
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (or stopped) process; a zombie counts as gone."""
    state = proc_state(pid)
    return state is not None and state not in {"Z", "X", "x"}


def proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\x00", b" ").decode("utf-8", errors="replace").strip()


def proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def read_pid(pidfile: Path) -> int | None:
    try:
        first = pidfile.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    if not first.isdigit():
        return None
    pid = int(first)
    return pid if pid > 1 else None


def signal_checked(pid: int, sig: signal.Signals, is_ours: Callable[[int], bool]) -> bool:
    """Send ``sig`` to ``pid`` only if ``is_ours(pid)`` holds; True when it was sent.

    A pidfd is opened first and the identity checked after, so a PID that is recycled between
    the check and the signal cannot receive it.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        pidfd = -1  # no pidfd support: fall back to a plain kill after the check
    try:
        if not is_ours(pid):
            return False
        try:
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return False
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait (bounded) until every pid is gone; return those still alive."""
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if pid_alive(p)]
    for _ in range(math.ceil(timeout_s / POLL_INTERVAL_S) + 1):
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
        remaining = [p for p in remaining if pid_alive(p)]
    return remaining


def run(
    cmd: Sequence[str],
    *,
    timeout_s: float = _COMMAND_TIMEOUT_S,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (bounded), capturing output; a missing binary or timeout is a StackError."""
    try:
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"cannot run {cmd[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"{shlex.join(cmd)} did not finish within {timeout_s:.0f} s") from None


def clean_env(*prefixes: str) -> dict[str, str]:
    """This process's environment without variables that would redirect our clients."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def output_tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    text = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"


def find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/local/bin", "/usr/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(f"{name} is not installed (not on PATH, not in /usr/bin or /usr/local/bin)")
