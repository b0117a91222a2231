"""HAProxy in front of gateway instances, for the fleet tests and the fleet benchmark.

One HAProxy process in the foreground (``-db``), on a free loopback port, with a stats socket in
its own directory (to read each server's state and to take one out by hand); stopped by PID at
the end. The configuration is what a platform team would run in front of a fleet:

- round robin over keep-alive connections;
- health checks of ``/readyz`` every ``inter_ms``: ``fall`` failures mark a server down (a
  drain's 503 or a dead process), ``rise`` successes bring it back;
- a request whose connection fails (refused, reset before a reply, nothing answered) is sent to
  another server (``retry-on`` with ``option redispatch``), but only GET and HEAD once the
  request has reached a server: a write may have been applied there, and only its caller can
  tell whether to send it again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.ports import find_free_port

READY_TIMEOUT_S = 20.0
BACKEND = "fleet"


@dataclass(frozen=True)
class Checks:
    """How HAProxy health-checks its servers."""

    path: str = "/readyz"
    inter_ms: int = 500
    fall: int = 2
    rise: int = 2


def config(
    port: int, servers: Sequence[str], stats_socket: Path, checks: Checks, *, retry: bool = True
) -> str:
    """HAProxy's configuration: ``servers`` are ``host:port`` (or ``http://host:port``);
    without ``retry``, a request that fails is not sent anywhere again."""
    lines = [
        "global",
        "    maxconn 4096",
        f"    stats socket {stats_socket} mode 600 level admin",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 30s",
        "    timeout server 10s",
        "    timeout http-keep-alive 10s",
        "    option http-keep-alive",
        *(
            ("    retries 3", "    option redispatch 1", "    retry-on all-retryable-errors")
            if retry  # every retry goes to another server
            else ("    retries 0", "    retry-on none")
        ),
        "frontend gateways",
        f"    bind 127.0.0.1:{port}",
        "    default_backend " + BACKEND,
        "backend " + BACKEND,
        "    balance roundrobin",
        f"    option httpchk GET {checks.path}",
        "    http-check expect status 200",
        # A request that reached a server is sent again only if it reads: GET and HEAD.
        "    http-request disable-l7-retry if !METH_GET !METH_HEAD",
        f"    default-server check inter {checks.inter_ms}ms fall {checks.fall} rise {checks.rise}",
    ]
    for i, server in enumerate(servers):
        lines.append(f"    server g{i} {server.removeprefix('http://')}")
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    """A running HAProxy: its URL, its process and its stats socket."""

    url: str
    proc: subprocess.Popen[bytes]
    stats_socket: Path

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ``disable server fleet/g0``...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.stats_socket))
            conn.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it: UP, DOWN, "UP 1/2" (going down), MAINT..."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for(self, server: str, status: str, *, timeout_s: float = 20.0) -> float:
        """Wait until ``server`` (``g0``...) has ``status``; the seconds it took."""
        began = time.monotonic()
        while True:
            seen = self.states().get(server)
            if seen == status:
                return time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(f"{server} is {seen}, not {status}, after {timeout_s:g} s")
            time.sleep(0.05)


@contextlib.contextmanager
def balancer(
    servers: Sequence[str], work: Path, *, checks: Checks | None = None, retry: bool = True
) -> Iterator[Balancer]:
    """HAProxy in the foreground in front of ``servers``, on a free port, until every server is
    up; stopped by PID at the end. Its configuration and socket live in ``work``."""
    binary = shutil.which(
        "haproxy", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin"))
    )
    if binary is None:
        raise RuntimeError(
            "haproxy is not installed: run scripts/install-system-deps.sh test (as root), or "
            "apt-get install haproxy"
        )
    port = find_free_port()
    stats_socket = work / f"haproxy-{port}.sock"
    path = work / f"haproxy-{port}.cfg"
    path.write_text(config(port, servers, stats_socket, checks or Checks(), retry=retry))
    log = (work / f"haproxy-{port}.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
    running = Balancer(f"http://127.0.0.1:{port}", proc, stats_socket)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(f"haproxy exited: {log.name}: {Path(log.name).read_text()}")
            with contextlib.suppress(OSError):
                states = running.states() if stats_socket.exists() else {}
                if len(states) == len(servers) and set(states.values()) == {"UP"}:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"haproxy's servers are not all up: {running.states()}")
            time.sleep(0.1)
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        stats_socket.unlink(missing_ok=True)
