"""A local stack for development and tests: a 6-node Redis Cluster and a private Postgres.

Everything lives under one data directory (``StackConfig.root``)::

    root/redis/<port>/redis.conf, nodes.conf, redis.pid, redis.log   one dir per Redis node
    root/pg/data, root/pg/pg.log                                      the private Postgres
    root/env                                                          KEY=value lines for cachegw

The stack only ever signals processes it started itself: a PID is taken from a pidfile and
is used only when ``/proc/<pid>`` shows the expected program (``redis-server`` with the
node's port and working directory, or ``postgres`` with the stack's data directory). A stale
pidfile whose PID now belongs to another program is ignored, never signalled.

The module is synchronous (subprocess, socket, time); every wait is bounded in iterations and
in time. Command line: ``python -m app.devstack up|down|status`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import math
import os
import pwd
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = [
    "CLUSTER_SLOTS",
    "NODE_COUNT",
    "Stack",
    "StackConfig",
    "StackError",
    "find_free_base_port",
    "find_free_port",
    "main",
]

NODE_COUNT = 6
"""Redis nodes in the cluster: 3 primaries, each with one replica."""
PRIMARY_COUNT = 3
CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000
"""Redis Cluster's bus port is the client port plus this."""
HOST = "127.0.0.1"

_POLL_INTERVAL_S = 0.05
_CLUSTER_POLL_INTERVAL_S = 0.1
_NODE_START_TIMEOUT_S = 10.0
_PROCESS_EXIT_TIMEOUT_S = 10.0
_SIGKILL_AFTER_S = 5.0
_REDIS_CALL_TIMEOUT_S = 1.0
_CLUSTER_CREATE_TIMEOUT_S = 60.0
_PG_START_TIMEOUT_S = 30
_PG_STOP_TIMEOUT_S = 30
_PG_READY_TIMEOUT_S = 30.0
_EXTERNAL_PG_WAIT_S = 15.0
_COMMAND_TIMEOUT_S = 120.0
_LOCK_TIMEOUT_S = 300.0
_PORT_SEARCH_ATTEMPTS = 200
_MAX_UNIX_SOCKET_PATH = 100  # sockaddr_un.sun_path is 108 bytes including the NUL
_BAD_NODE_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})
_DB_NAME_MAX = 63
_PG_FALLBACK_BASE = Path("/var/tmp/cachegw-devstack")


class StackError(Exception):
    """The local stack could not be brought to (or checked in) the requested state."""


class _RedisReplyError(Exception):
    """Redis answered a command with an error reply."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which ports it uses.

    ``root`` is the data directory. Redis nodes listen on ``redis_base_port`` ..
    ``redis_base_port + 5`` (cluster bus ports are those plus 10000). When
    ``external_pg_dsn`` is set, no private Postgres is started and that DSN is used as is.
    """

    root: Path
    redis_base_port: int = 7000
    pg_port: int = 55432
    cluster_node_timeout_ms: int = 2000
    external_pg_dsn: str | None = None
    pg_database: str = "cachegw"

    def __post_init__(self) -> None:
        top = self.redis_base_port + NODE_COUNT - 1 + BUS_PORT_OFFSET
        if self.redis_base_port < 1 or top > 65535:
            raise StackError(
                f"redis_base_port {self.redis_base_port} is out of range: nodes use "
                f"{self.redis_base_port}..{self.redis_base_port + NODE_COUNT - 1} and bus ports "
                f"+{BUS_PORT_OFFSET}, which must stay below 65536"
            )
        if not 1 <= self.pg_port <= 65535:
            raise StackError(f"pg_port {self.pg_port} is out of range 1..65535")
        if self.external_pg_dsn is None:
            redis_ports = {self.redis_base_port + i for i in range(NODE_COUNT)}
            bus_ports = {p + BUS_PORT_OFFSET for p in redis_ports}
            if self.pg_port in redis_ports | bus_ports:
                raise StackError(f"pg_port {self.pg_port} collides with a Redis node or bus port")
        if not 100 <= self.cluster_node_timeout_ms <= 600_000:
            raise StackError(
                f"cluster_node_timeout_ms {self.cluster_node_timeout_ms} is out of range "
                "100..600000"
            )
        if (
            not self.pg_database
            or len(self.pg_database) > _DB_NAME_MAX
            or "\x00" in self.pg_database
        ):
            raise StackError(f"pg_database {self.pg_database!r} is not a valid database name")
        if self.external_pg_dsn is not None and not self.external_pg_dsn.strip():
            raise StackError("external_pg_dsn is empty")


# --------------------------------------------------------------------------------------------
# Ports


def _port_bindable(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 right now (as Redis binds it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        # Redis and Postgres set SO_REUSEADDR too, so TIME_WAIT leftovers do not count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_base_port(count: int = 6, *, low: int = 20000, high: int = 50000) -> int:
    """A random base port such that ``base .. base+count-1`` and their cluster bus ports
    (``+10000``) can all be bound on 127.0.0.1 now.

    ``base`` is drawn from ``low .. high-count``. Tries a bounded number of times, then
    raises :class:`StackError`. The ports are free when checked, not reserved.
    """
    if count < 1:
        raise StackError(f"count must be at least 1, got {count}")
    top = high - count
    if low < 1 or top < low or high - 1 + BUS_PORT_OFFSET > 65535:
        raise StackError(
            f"no room for {count} ports (and bus ports +{BUS_PORT_OFFSET}) in {low}..{high}"
        )
    rng = random.SystemRandom()
    for _ in range(_PORT_SEARCH_ATTEMPTS):
        base = rng.randint(low, top)
        ports = [base + i for i in range(count)]
        if all(_port_bindable(p) and _port_bindable(p + BUS_PORT_OFFSET) for p in ports):
            return base
    raise StackError(
        f"found no {count} free consecutive ports (with bus ports) in {low}..{high} "
        f"after {_PORT_SEARCH_ATTEMPTS} attempts"
    )


def find_free_port() -> int:
    """A port that the kernel reports free on 127.0.0.1 now (not reserved)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------------------------
# Processes


def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may itself contain spaces/parens.
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    return fields[0] if fields else None


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running (or stopped) process; a zombie counts as gone."""
    state = _proc_state(pid)
    return state is not None and state not in {"Z", "X", "x"}


def _proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\x00", b" ").decode("utf-8", errors="replace").strip()


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _read_pid(pidfile: Path) -> int | None:
    try:
        first = pidfile.read_text(encoding="ascii", errors="replace").split("\n", 1)[0].strip()
    except OSError:
        return None
    if not first.isdigit():
        return None
    pid = int(first)
    return pid if pid > 1 else None


def _signal_checked(pid: int, sig: signal.Signals, is_ours: Callable[[int], bool]) -> bool:
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


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    """Wait (bounded) until every pid is gone; return those still alive."""
    deadline = time.monotonic() + timeout_s
    remaining = [p for p in pids if _pid_alive(p)]
    for _ in range(math.ceil(timeout_s / _POLL_INTERVAL_S) + 1):
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_INTERVAL_S)
        remaining = [p for p in remaining if _pid_alive(p)]
    return remaining


def _run(
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


def _clean_env(*prefixes: str) -> dict[str, str]:
    """This process's environment without variables that would redirect our clients."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def _output_tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    text = (proc.stdout or "") + (proc.stderr or "")
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(no output)"


# --------------------------------------------------------------------------------------------
# A tiny RESP client (enough for CLUSTER/INFO/PING against our own nodes)


def _read_reply(stream: BinaryIO) -> object:
    line = stream.readline(1 << 20)
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode("utf-8", errors="replace")
    if kind == b"-":
        raise _RedisReplyError(body.decode("utf-8", errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed in the middle of a reply")
        return data[:-2].decode("utf-8", errors="replace")
    if kind == b"*":
        size = int(body)
        if size < 0:
            return None
        return [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply from Redis: {line[:60]!r}")


def _redis_call(port: int, *args: str, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> object:
    """One command to the Redis node on 127.0.0.1:port. Raises OSError or _RedisReplyError."""
    payload = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        payload.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(b"".join(payload))
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _redis_text(port: int, *args: str, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> str:
    reply = _redis_call(port, *args, timeout_s=timeout_s)
    if not isinstance(reply, str):
        raise ConnectionError(f"unexpected reply to {' '.join(args)}: {reply!r}")
    return reply


def _parse_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _ping(port: int, timeout_s: float = _REDIS_CALL_TIMEOUT_S) -> bool:
    try:
        return _redis_call(port, "PING", timeout_s=timeout_s) == "PONG"
    except (OSError, _RedisReplyError, ValueError):
        return False


@dataclass(frozen=True)
class _ClusterNode:
    id: str
    host: str
    port: int
    role: str  # "primary" | "replica" | "unknown"
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]
    flags: frozenset[str]
    link_state: str

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "role": self.role,
            "primary_id": self.primary_id,
            "slots": list(self.slots),
            "flags": sorted(self.flags),
            "link_state": self.link_state,
        }


def _parse_cluster_nodes(text: str) -> list[_ClusterNode]:
    """Parse CLUSTER NODES output (``<id> <ip:port@cport[,host]> <flags> <primary> ...``)."""
    nodes: list[_ClusterNode] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, address, flag_text, primary = parts[0], parts[1], parts[2], parts[3]
        hostport = address.split("@", 1)[0].split(",", 1)[0]
        host, _, port_text = hostport.rpartition(":")
        flags = frozenset(f for f in flag_text.split(",") if f and f != "noflags")
        if "master" in flags:
            role = "primary"
        elif "slave" in flags:
            role = "replica"
        else:
            role = "unknown"
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # [slot->-importing] / [slot-<-migrating]
                continue
            start, _, end = item.partition("-")
            if start.isdigit() and (not end or end.isdigit()):
                slots.append((int(start), int(end or start)))
        nodes.append(
            _ClusterNode(
                id=node_id,
                host=host,
                port=int(port_text) if port_text.isdigit() else 0,
                role=role,
                primary_id=None if primary == "-" else primary,
                slots=tuple(sorted(slots)),
                flags=flags,
                link_state=parts[7],
            )
        )
    return nodes


@dataclass
class _NodeView:
    info: dict[str, str]
    nodes: list[_ClusterNode] = field(default_factory=list)


def _node_view(port: int) -> _NodeView:
    info = _parse_info(_redis_text(port, "CLUSTER", "INFO"))
    nodes = _parse_cluster_nodes(_redis_text(port, "CLUSTER", "NODES"))
    return _NodeView(info=info, nodes=nodes)


def _int(info: dict[str, str], key: str) -> int:
    value = info.get(key, "")
    return int(value) if value.isdigit() else -1


# --------------------------------------------------------------------------------------------
# Binaries


def _find_pg_bin() -> Path | None:
    """The highest-version ``/usr/lib/postgresql/<v>/bin`` with pg_ctl, else pg_ctl on PATH."""

    def version_key(path: Path) -> tuple[int, ...]:
        numbers = re.findall(r"\d+", path.parent.name)
        return tuple(int(n) for n in numbers)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").is_file()]
    if candidates:
        return max(candidates, key=version_key)
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def _find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/bin", "/usr/local/bin", "/usr/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StackError(f"{name} is not installed (not on PATH, not in /usr/bin or /usr/local/bin)")


def _mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for printing)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable DSN>"
    if parts.password is None:
        return dsn
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _redis_quote(path: Path) -> str:
    """A path as a double-quoted redis.conf argument (spaces and quotes survive)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dotenv_value(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./\-\[\]]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------------------------
# The stack


class Stack:
    """The local Redis Cluster and Postgres described by a :class:`StackConfig`.

    ``echo`` receives one line per step (with its duration); the CLI prints them, library use
    is silent by default. Public methods are safe to repeat; ``up`` and ``down`` take a file
    lock in the data directory so two of them never interleave.
    """

    def __init__(self, config: StackConfig, *, echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.root = config.root.expanduser().absolute().resolve()
        self._echo = echo
        self._is_root = os.geteuid() == 0
        self._pg_bin_cache: Path | None = None

    # ---------------------------------------------------------------- paths and basics

    @property
    def redis_ports(self) -> list[int]:
        """The six client ports, ``redis_base_port`` .. ``redis_base_port + 5``."""
        return [self.config.redis_base_port + i for i in range(NODE_COUNT)]

    @property
    def pg_dir(self) -> Path:
        """``root/pg``; or, as root when the postgres user cannot enter the directories above
        ``root`` (a checkout under a 0700 home or temp dir), a directory of its own under
        ``/var/tmp/cachegw-devstack`` that ``root/pg`` links to."""
        local = self.root / "pg"
        if local.is_symlink():
            return Path(os.readlink(local))
        if not self._is_root or self._postgres_can_reach(self.root):
            return local
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return _PG_FALLBACK_BASE / digest / "pg"

    def _postgres_can_reach(self, path: Path) -> bool:
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            return True  # created later; the check in _prepare_pg_dirs reports what it finds
        groups = set(os.getgrouplist("postgres", entry.pw_gid))
        return all(
            _can_traverse(parent.stat(), entry.pw_uid, groups)
            for parent in reversed(path.parents)
            if parent.exists()
        )

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def env_path(self) -> Path:
        return self.root / "env"

    def node_dir(self, port: int) -> Path:
        return self.root / "redis" / str(port)

    @property
    def pg_dsn(self) -> str:
        """The DSN cachegw uses: the external one, or the private Postgres's."""
        if self.config.external_pg_dsn is not None:
            return self.config.external_pg_dsn
        return (
            f"postgresql://postgres@{HOST}:{self.config.pg_port}/"
            f"{quote(self.config.pg_database, safe='')}"
        )

    def env(self) -> dict[str, str]:
        """The variables that point cachegw at this stack."""
        return {
            "CACHEGW_REDIS__NODES": ",".join(f"{HOST}:{p}" for p in self.redis_ports),
            "CACHEGW_PG__DSN": self.pg_dsn,
        }

    def write_env_file(self) -> Path:
        """Write :meth:`env` to ``root/env`` as dotenv ``KEY=value`` lines (mode 0600)."""
        self.root.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{k}={_dotenv_value(v)}\n" for k, v in self.env().items())
        tmp = self.env_path.with_name(f".env.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.replace(tmp, self.env_path)
        return self.env_path

    def _say(self, message: str) -> None:
        if self._echo is not None:
            self._echo(message)

    @contextlib.contextmanager
    def _step(self, message: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self._say(f"{message} ({time.monotonic() - started:.2f} s)")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on ``root/.lock`` (bounded wait)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            for _ in range(math.ceil(_LOCK_TIMEOUT_S / 0.1) + 1):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise StackError(f"another devstack command holds {self.root / '.lock'}")
                time.sleep(0.1)
            else:
                raise StackError(f"another devstack command holds {self.root / '.lock'}")
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # ---------------------------------------------------------------- up / down / status

    def up(self) -> None:
        """Bring the whole stack up, or leave it be where it already is.

        Running nodes are left alone, stopped (or paused) ones are started (resumed) and rejoin
        from nodes.conf. A fresh set of nodes becomes a cluster (``redis-cli --cluster
        create``); a half-formed or broken one is recreated (its Redis data is discarded).
        Then waits until the cluster is ok, makes sure Postgres runs with the database, and
        writes ``root/env``. Raises :class:`StackError` when something cannot be done.
        """
        started = time.monotonic()
        with self._locked():
            self._up_redis()
            self._up_postgres()
            with self._step(f"env written to {self.env_path}"):
                self.write_env_file()
        self._say(f"stack up ({time.monotonic() - started:.2f} s)")

    def down(self, *, purge: bool = False) -> None:
        """Stop exactly the processes this stack started (by PID from its pidfiles).

        Each gets SIGTERM (Postgres: ``pg_ctl stop -m fast``), a bounded wait, then SIGKILL.
        The data directory stays (pidfiles aside) unless ``purge``: then the stack's own files
        under ``root`` are deleted, and ``root`` itself when nothing else is left in it.
        """
        if not self.root.exists():
            self._say(f"nothing to stop: {self.root} does not exist")
            return
        started = time.monotonic()
        with self._locked():
            self._stop_all_nodes()
            if self.config.external_pg_dsn is None or self.pg_data.exists():
                self.stop_postgres()
            if purge:
                with self._step(f"purged {self.root}"):
                    self._purge()
        self._say(f"stack down ({time.monotonic() - started:.2f} s)")

    def status(self) -> dict[str, object]:
        """A snapshot: per node port, pid, alive, role and cluster_state; the cluster's health;
        Postgres readiness and DSN; ``healthy`` when all of it is fine."""
        nodes: list[dict[str, object]] = []
        for port in self.redis_ports:
            pid = self.node_pid(port)
            entry: dict[str, object] = {
                "port": port,
                "pid": pid,
                "alive": False,
                "role": None,
                "cluster_state": None,
            }
            if pid is not None:
                try:
                    repl = _parse_info(_redis_text(port, "INFO", "replication"))
                    info = _parse_info(_redis_text(port, "CLUSTER", "INFO"))
                except (OSError, _RedisReplyError):
                    pass
                else:
                    entry["alive"] = True
                    role = repl.get("role")
                    entry["role"] = {"master": "primary", "slave": "replica"}.get(role or "", role)
                    entry["cluster_state"] = info.get("cluster_state")
            nodes.append(entry)
        problem = self._cluster_problem()
        pg_ready = self._pg_ready()
        postgres: dict[str, object] = {
            "ready": pg_ready,
            "dsn": _mask_dsn(self.pg_dsn),
            "external": self.config.external_pg_dsn is not None,
            "pid": None if self.config.external_pg_dsn is not None else self._postmaster_pid(),
        }
        return {
            "root": str(self.root),
            "redis": nodes,
            "cluster_ok": problem is None,
            "cluster_problem": problem,
            "postgres": postgres,
            "healthy": problem is None and pg_ready and all(bool(n["alive"]) for n in nodes),
        }

    # ---------------------------------------------------------------- Redis nodes

    def _redis_conf(self, port: int) -> str:
        directory = self.node_dir(port)
        return "\n".join(
            [
                "# Written by app.devstack; rewritten on every start.",
                f"port {port}",
                f"bind {HOST}",
                "protected-mode yes",
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {self.config.cluster_node_timeout_ms}",
                "cluster-require-full-coverage no",
                "cluster-allow-reads-when-down yes",
                "appendonly no",
                'save ""',
                # Full syncs start at once instead of after the 5 s default batching delay.
                "repl-diskless-sync-delay 0",
                f"dir {_redis_quote(directory)}",
                "daemonize yes",
                f"pidfile {_redis_quote(directory / 'redis.pid')}",
                f"logfile {_redis_quote(directory / 'redis.log')}",
                "enable-debug-command local",
                "",
            ]
        )

    def _write_node_conf(self, port: int) -> Path:
        directory = self.node_dir(port)
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "redis.conf"
        text = self._redis_conf(port)
        try:
            current = conf.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            conf.write_text(text, encoding="utf-8")
        return conf

    def _is_our_node(self, pid: int, port: int) -> bool:
        cmdline = _proc_cmdline(pid)
        return (
            _pid_alive(pid)
            and "redis-server" in cmdline
            and re.search(rf":{port}(?!\d)", cmdline) is not None
            and _proc_cwd(pid) == self.node_dir(port)
        )

    def _node_checker(self, port: int) -> Callable[[int], bool]:
        def check(pid: int) -> bool:
            return self._is_our_node(pid, port)

        return check

    def node_pid(self, port: int) -> int | None:
        """The PID of this stack's node on ``port`` when it runs (validated), else None."""
        pid = _read_pid(self.node_dir(port) / "redis.pid")
        if pid is None or not self._is_our_node(pid, port):
            return None
        return pid

    def _signal_node(self, port: int, sig: signal.Signals) -> int | None:
        pid = self.node_pid(port)
        if pid is None:
            return None
        if not _signal_checked(pid, sig, self._node_checker(port)):
            return None
        return pid

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port`` (when it runs) and wait until its PID is gone."""
        self._check_port(port)
        pid = self._signal_node(port, signal.SIGKILL)
        if pid is None:
            return
        if _wait_gone([pid], _PROCESS_EXIT_TIMEOUT_S):
            raise StackError(f"redis node {port} (pid {pid}) is still alive after SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            (self.node_dir(port) / "redis.pid").unlink()

    def pause_node(self, port: int) -> None:
        """SIGSTOP the node on ``port``: it stays alive but answers nothing."""
        self._check_port(port)
        if self._signal_node(port, signal.SIGSTOP) is None:
            raise StackError(f"redis node {port} is not running")

    def resume_node(self, port: int) -> None:
        """SIGCONT the node on ``port`` (after :meth:`pause_node`)."""
        self._check_port(port)
        if self._signal_node(port, signal.SIGCONT) is None:
            raise StackError(f"redis node {port} is not running")

    def start_node(self, port: int) -> None:
        """Start the node on ``port`` from its config and nodes.conf (a node that belonged to
        the cluster rejoins it) and wait until it answers PING. A running node is left alone
        (resumed if paused)."""
        self._check_port(port)
        self._start_nodes([port])

    def _check_port(self, port: int) -> None:
        if port not in self.redis_ports:
            raise StackError(f"{port} is not one of this stack's Redis ports {self.redis_ports}")

    def _start_nodes(self, ports: Sequence[int]) -> list[int]:
        """Start the given nodes that are not running; resume paused ones; wait for PING.
        Returns the ports that were actually started."""
        redis_server = _find_binary("redis-server")
        started: list[int] = []
        for port in ports:
            conf = self._write_node_conf(port)
            pid = self.node_pid(port)
            if pid is not None:
                if _proc_state(pid) in {"T", "t"}:
                    _signal_checked(pid, signal.SIGCONT, self._node_checker(port))
                    self._say(f"redis {HOST}:{port} was paused: resumed (pid {pid})")
                continue
            for busy in (port, port + BUS_PORT_OFFSET):
                if not _port_bindable(busy):
                    raise StackError(
                        f"port {busy} on {HOST} is in use by a process this stack did not start "
                        f"(needed by the Redis node {port}); stop it or choose another "
                        "--redis-base-port"
                    )
            with contextlib.suppress(FileNotFoundError):
                (self.node_dir(port) / "redis.pid").unlink()
            proc = _run([redis_server, str(conf)], timeout_s=30, cwd=self.node_dir(port))
            if proc.returncode != 0:
                raise StackError(
                    f"redis-server for port {port} failed (exit {proc.returncode}):\n"
                    f"{_output_tail(proc)}\n{_tail(self.node_dir(port) / 'redis.log')}"
                )
            started.append(port)
        for port in ports:
            self._wait_node_answers(port)
        return started

    def _wait_node_answers(self, port: int) -> None:
        deadline = time.monotonic() + _NODE_START_TIMEOUT_S
        for _ in range(math.ceil(_NODE_START_TIMEOUT_S / _POLL_INTERVAL_S) + 1):
            if _ping(port, timeout_s=0.5) and self.node_pid(port) is not None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_INTERVAL_S)
        raise StackError(
            f"redis node {port} did not answer PING within {_NODE_START_TIMEOUT_S:.0f} s; "
            f"log {self.node_dir(port) / 'redis.log'}:\n{_tail(self.node_dir(port) / 'redis.log')}"
        )

    def _node_dirs_on_disk(self) -> list[int]:
        """Ports of every node dir under root/redis (also from an earlier base port)."""
        base = self.root / "redis"
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())

    def _stop_nodes(self, ports: Sequence[int]) -> None:
        """SIGTERM our running nodes on ``ports``, wait (bounded), SIGKILL leftovers."""
        pids: dict[int, int] = {}
        for port in ports:
            pid = self.node_pid(port)
            if pid is None:
                continue
            # A paused node cannot act on SIGTERM until it is continued.
            _signal_checked(pid, signal.SIGCONT, self._node_checker(port))
            if _signal_checked(pid, signal.SIGTERM, self._node_checker(port)):
                pids[port] = pid
        left = _wait_gone(list(pids.values()), _SIGKILL_AFTER_S)
        for port, pid in pids.items():
            if pid in left:
                self._say(f"redis {HOST}:{port} (pid {pid}) ignored SIGTERM: SIGKILL")
                _signal_checked(pid, signal.SIGKILL, self._node_checker(port))
        still = _wait_gone(left, _PROCESS_EXIT_TIMEOUT_S)
        if still:
            raise StackError(f"redis processes {still} did not exit after SIGKILL")
        for port in ports:
            with contextlib.suppress(FileNotFoundError):
                (self.node_dir(port) / "redis.pid").unlink()

    def _stop_all_nodes(self) -> None:
        ports = sorted(set(self.redis_ports) | set(self._node_dirs_on_disk()))
        running = [p for p in ports if self.node_pid(p) is not None]
        with self._step(
            f"redis: stopped {len(running)} node(s)" + (f" {running}" if running else "")
        ):
            self._stop_nodes(ports)

    # ---------------------------------------------------------------- Redis Cluster

    def _up_redis(self) -> None:
        ports = self.redis_ports
        with self._step("redis: nodes up"):
            started = self._start_nodes(ports)
        if started:
            self._say(f"redis: started node(s) {started}")
        if len(started) < len(ports):
            self._say(f"redis: {len(ports) - len(started)} node(s) were already running")
        verdict, reason = self._assess_cluster()
        if verdict == "formed":
            try:
                with self._step("redis: cluster ok"):
                    self.wait_cluster_ok(timeout_s=self._convergence_timeout_s())
            except StackError as exc:
                self._say(f"redis: {exc}; recreating the cluster (its data is discarded)")
            else:
                return
            self._recreate_cluster()
        elif verdict == "fresh":
            self._create_cluster()
        else:
            self._say(f"redis: cluster is half-formed ({reason}); recreating it (data discarded)")
            self._recreate_cluster()
        with self._step("redis: cluster ok"):
            self.wait_cluster_ok(timeout_s=self._convergence_timeout_s())

    def _convergence_timeout_s(self) -> float:
        return max(20.0, 10 * self.config.cluster_node_timeout_ms / 1000)

    def _assess_cluster(self) -> tuple[str, str]:
        """("fresh"|"formed"|"broken", reason) for our running nodes."""
        ports = self.redis_ports
        views: dict[int, _NodeView] = {}
        for port in ports:
            try:
                views[port] = _node_view(port)
            except (OSError, _RedisReplyError) as exc:
                return "broken", f"node {port} does not answer CLUSTER INFO: {exc}"
        if all(
            _int(v.info, "cluster_known_nodes") == 1 and _int(v.info, "cluster_slots_assigned") == 0
            for v in views.values()
        ):
            return "fresh", "no node knows another or any slot"
        for port, view in views.items():
            known = [n for n in view.nodes if not (n.flags & {"handshake", "noaddr"})]
            known_ports = sorted(n.port for n in known)
            if known_ports != sorted(ports) or len(view.nodes) != NODE_COUNT:
                return "broken", f"node {port} knows nodes {known_ports}, expected {ports}"
            assigned = _int(view.info, "cluster_slots_assigned")
            if assigned != CLUSTER_SLOTS:
                return "broken", f"node {port} sees {assigned} of {CLUSTER_SLOTS} slots assigned"
        return "formed", "all nodes joined, all slots assigned"

    def _create_cluster(self) -> None:
        redis_cli = _find_binary("redis-cli")
        cmd = [
            redis_cli,
            "--cluster",
            "create",
            *(f"{HOST}:{p}" for p in self.redis_ports),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]
        with self._step("redis: cluster created (redis-cli --cluster create)"):
            proc = _run(
                cmd, timeout_s=_CLUSTER_CREATE_TIMEOUT_S, env=_clean_env("REDISCLI_"), cwd=self.root
            )
            if proc.returncode != 0 or "[ERR]" in proc.stdout:
                raise StackError(
                    f"redis-cli --cluster create failed (exit {proc.returncode}):\n"
                    f"{_output_tail(proc)}"
                )

    def _recreate_cluster(self) -> None:
        ports = self.redis_ports
        with self._step("redis: nodes stopped and wiped"):
            self._stop_nodes(ports)
            for port in ports:
                directory = self.node_dir(port)
                for name in ("nodes.conf", "dump.rdb", "appendonly.aof", "redis.pid"):
                    with contextlib.suppress(FileNotFoundError):
                        (directory / name).unlink()
                shutil.rmtree(directory / "appendonlydir", ignore_errors=True)
                for leftover in directory.glob("temp-*.rdb"):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        with self._step("redis: fresh nodes running"):
            self._start_nodes(ports)
        verdict, reason = self._assess_cluster()
        if verdict != "fresh":
            raise StackError(f"redis nodes are not fresh after a wipe: {reason}")
        self._create_cluster()

    def cluster_nodes(self) -> list[dict[str, object]]:
        """CLUSTER NODES, parsed, from the first of our nodes that answers: per node id, host,
        port, role ('primary'/'replica'), primary_id, slots [(start, end)], flags, link_state.
        """
        errors: list[str] = []
        for port in self.redis_ports:
            if self.node_pid(port) is None:
                continue
            try:
                text = _redis_text(port, "CLUSTER", "NODES")
            except (OSError, _RedisReplyError) as exc:
                errors.append(f"{port}: {exc}")
                continue
            return [n.as_dict() for n in _parse_cluster_nodes(text)]
        detail = "; ".join(errors) if errors else "no node is running"
        raise StackError(f"no Redis node of the stack answers CLUSTER NODES ({detail})")

    def wait_cluster_ok(self, timeout_s: float = 30.0) -> None:
        """Wait (bounded) until every live node reports cluster_state:ok with all 16384 slots
        covered, all live nodes agree on the 3 primaries and see each other as healthy, and
        every primary has a replica whose master_link_status is up. Else :class:`StackError`
        naming what was still wrong."""
        deadline = time.monotonic() + timeout_s
        problem: str | None = "not checked"
        for _ in range(math.ceil(timeout_s / _CLUSTER_POLL_INTERVAL_S) + 1):
            problem = self._cluster_problem()
            if problem is None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_CLUSTER_POLL_INTERVAL_S)
        raise StackError(f"the Redis Cluster is not ok after {timeout_s:.1f} s: {problem}")

    def _cluster_problem(self) -> str | None:
        """None when the cluster is healthy, else a short description of the first problem."""
        live = [p for p in self.redis_ports if self.node_pid(p) is not None]
        if not live:
            return "no Redis node of the stack is running"
        live_set = set(live)
        views: dict[int, _NodeView] = {}
        for port in live:
            try:
                views[port] = _node_view(port)
            except (OSError, _RedisReplyError) as exc:
                return f"node {port} does not answer: {exc or type(exc).__name__}"
        reference: list[tuple[int, tuple[tuple[int, int], ...]]] | None = None
        for port, view in views.items():
            state = view.info.get("cluster_state")
            if state != "ok":
                return f"node {port} reports cluster_state:{state}"
            for key in ("cluster_slots_assigned", "cluster_slots_ok"):
                if _int(view.info, key) != CLUSTER_SLOTS:
                    return f"node {port} reports {key}:{view.info.get(key)}"
            seen = {n.port: n for n in view.nodes}
            for other in live:
                node = seen.get(other)
                if node is None:
                    return f"node {port} does not know node {other}"
                if node.flags & _BAD_NODE_FLAGS:
                    return f"node {port} sees node {other} as {','.join(sorted(node.flags))}"
            primaries = sorted((n.port, n.slots) for n in view.nodes if n.slots)
            if reference is None:
                reference = primaries
            elif primaries != reference:
                return f"nodes {live[0]} and {port} disagree about which primary owns which slots"
        view = views[live[0]]
        owners = [n for n in view.nodes if n.slots]
        if len(owners) != PRIMARY_COUNT:
            return f"expected {PRIMARY_COUNT} primaries with slots, found {len(owners)}"
        for owner in owners:
            if owner.port not in live_set:
                return f"primary {owner.port} (owns slots) is not running"
            replicas = [
                n
                for n in view.nodes
                if n.role == "replica" and n.primary_id == owner.id and n.port in live_set
            ]
            if not replicas:
                return f"primary {owner.port} has no running replica"
            linked = False
            for replica in replicas:
                try:
                    repl = _parse_info(_redis_text(replica.port, "INFO", "replication"))
                except (OSError, _RedisReplyError) as exc:
                    return f"replica {replica.port} does not answer INFO: {exc}"
                if repl.get("master_link_status") == "up" and repl.get("master_port") == str(
                    owner.port
                ):
                    linked = True
                    break
            if not linked:
                return f"primary {owner.port} has no replica with master_link_status:up yet"
        return None

    # ---------------------------------------------------------------- Postgres

    def _pg_bin(self) -> Path:
        if self._pg_bin_cache is None:
            found = _find_pg_bin()
            if found is None:
                raise StackError(
                    "Postgres binaries not found (no /usr/lib/postgresql/*/bin/pg_ctl, no pg_ctl "
                    "on PATH); install postgresql or set CACHEGW_PG__DSN to use an external one"
                )
            self._pg_bin_cache = found
        return self._pg_bin_cache

    def _as_pg_user(self, cmd: Sequence[str]) -> list[str]:
        """Run as the postgres user when we are root (Postgres refuses to run as root)."""
        if self._is_root:
            return ["runuser", "-u", "postgres", "--", *cmd]
        return list(cmd)

    def _pg_env(self) -> dict[str, str]:
        env = _clean_env("PG")
        env.setdefault("LC_ALL", "C")
        return env

    def _is_our_postmaster(self, pid: int) -> bool:
        if not _pid_alive(pid):
            return False
        cmdline = _proc_cmdline(pid)
        if "postgres" not in cmdline and "postmaster" not in cmdline:
            return False
        return str(self.pg_data) in cmdline or _proc_cwd(pid) == self.pg_data

    def _postmaster_pid(self) -> int | None:
        pid = _read_pid(self.pg_data / "postmaster.pid")
        if pid is None or not self._is_our_postmaster(pid):
            return None
        return pid

    def _postmaster_port(self) -> int | None:
        try:
            lines = (self.pg_data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def _pg_ready(self) -> bool:
        """The external DSN accepts connections, or our own postmaster does on our port
        (another server that happens to listen there does not count)."""
        if self.config.external_pg_dsn is not None:
            return self._pg_isready(["-d", self.config.external_pg_dsn])
        if self._postmaster_pid() is None:
            return False
        return self._pg_isready(["-h", HOST, "-p", str(self.config.pg_port)])

    def _pg_isready(self, target: list[str]) -> bool:
        try:
            pg_isready = self._pg_bin() / "pg_isready"
        except StackError:
            return self._tcp_connectable(target)
        try:
            proc = _run(
                [str(pg_isready), *target, "-t", "2", "-q"], timeout_s=10, env=self._pg_env()
            )
        except StackError:
            return False
        return proc.returncode == 0

    def _tcp_connectable(self, target: list[str]) -> bool:
        """Fallback readiness without pg_isready: can a TCP connection be opened?"""
        if target[:1] == ["-d"]:
            try:
                parts = urlsplit(target[1])
                host, port = parts.hostname or HOST, parts.port or 5432
            except ValueError:
                return False
        else:
            host, port = HOST, self.config.pg_port
        try:
            with socket.create_connection((host, port), timeout=2):
                return True
        except OSError:
            return False

    def _wait_pg_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for _ in range(math.ceil(timeout_s / 0.2) + 1):
            if self._pg_ready():
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return False

    def _up_postgres(self) -> None:
        if self.config.external_pg_dsn is not None:
            with self._step(f"postgres: external {_mask_dsn(self.config.external_pg_dsn)} ready"):
                if not self._wait_pg_ready(_EXTERNAL_PG_WAIT_S):
                    raise StackError(
                        "the external Postgres (CACHEGW_PG__DSN "
                        f"{_mask_dsn(self.config.external_pg_dsn)}) does not accept connections "
                        f"after {_EXTERNAL_PG_WAIT_S:.0f} s"
                    )
            return
        self.start_postgres()

    def _prepare_pg_dirs(self) -> None:
        """Create root/pg; as root, hand it to the postgres user and make the path reachable."""
        self.root.mkdir(parents=True, exist_ok=True)
        pg_dir = self.pg_dir
        if pg_dir != self.root / "pg":
            pg_dir.parent.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            pg_dir.parent.mkdir(mode=0o755, exist_ok=True)
            local = self.root / "pg"
            if local.is_dir() and not local.is_symlink() and not any(local.iterdir()):
                local.rmdir()  # left by an attempt that found the path unreachable
            if not local.is_symlink():
                local.symlink_to(pg_dir)
        pg_dir.mkdir(exist_ok=True)
        if not self._is_root:
            return
        self._ensure_postgres_user()
        entry = pwd.getpwnam("postgres")
        uid, gid = entry.pw_uid, entry.pw_gid
        groups = set(os.getgrouplist("postgres", gid))
        # The given root is the stack's to open up; its ancestors are not: report them.
        for parent in reversed(
            pg_dir.parent.parents if pg_dir != self.root / "pg" else self.root.parents
        ):
            st = parent.stat()
            if not _can_traverse(st, uid, groups):
                raise StackError(
                    f"the postgres user cannot reach {self.root}: {parent} has mode "
                    f"{st.st_mode & 0o7777:04o}; choose a --dir under a directory others may "
                    f"enter, or allow it (chmod o+x {parent})"
                )
        for directory in (
            (pg_dir.parent, pg_dir) if pg_dir != self.root / "pg" else (self.root, pg_dir)
        ):
            st = directory.stat()
            if st.st_mode & 0o755 != 0o755:
                directory.chmod((st.st_mode | 0o755) & 0o7777)
        if self.pg_dir.stat().st_uid != uid or (
            self.pg_data.exists() and self.pg_data.stat().st_uid != uid
        ):
            for path in [self.pg_dir, *self.pg_dir.rglob("*")]:
                os.lchown(path, uid, gid)

    def _ensure_postgres_user(self) -> None:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            with self._step("postgres: created system user postgres"):
                proc = _run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", "postgres"])
                if proc.returncode != 0:
                    raise StackError(f"useradd postgres failed:\n{_output_tail(proc)}") from None

    def _initdb(self) -> None:
        if (self.pg_data / "PG_VERSION").is_file():
            return
        if self.pg_data.exists():
            # An interrupted initdb: the directory is the stack's own, start it over.
            shutil.rmtree(self.pg_data)
        with self._step(f"postgres: initdb {self.pg_data}"):
            proc = _run(
                self._as_pg_user(
                    [
                        str(self._pg_bin() / "initdb"),
                        "-D",
                        str(self.pg_data),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                        "--no-instructions",
                    ]
                ),
                cwd=self.pg_dir,
                env=self._pg_env(),
            )
            if proc.returncode != 0:
                raise StackError(f"initdb failed (exit {proc.returncode}):\n{_output_tail(proc)}")

    def start_postgres(self) -> None:
        """Start the private Postgres (initdb once) and create the database when missing.
        A postmaster of this data dir that already serves our port is left alone."""
        if self.config.external_pg_dsn is not None:
            raise StackError("this stack uses an external Postgres (external_pg_dsn): not started")
        pid = self._postmaster_pid()
        if pid is not None and self._postmaster_port() != self.config.pg_port:
            self._say(f"postgres runs on port {self._postmaster_port()}: restarting on the new one")
            self.stop_postgres()
            pid = None
        if pid is not None:
            with self._step(f"postgres: running (pid {pid})"):
                if not self._wait_pg_ready(_PG_READY_TIMEOUT_S):
                    raise StackError(
                        f"postgres (pid {pid}) does not accept connections on port "
                        f"{self.config.pg_port}; log {self.pg_dir / 'pg.log'}:\n"
                        f"{_tail(self.pg_dir / 'pg.log')}"
                    )
        else:
            self._prepare_pg_dirs()
            self._initdb()
            if not _port_bindable(self.config.pg_port):
                raise StackError(
                    f"port {self.config.pg_port} on {HOST} is in use by a process this stack did "
                    "not start; choose another --pg-port"
                )
            # A postmaster.pid whose PID is dead or now another program's would block start-up.
            with contextlib.suppress(FileNotFoundError):
                (self.pg_data / "postmaster.pid").unlink()
            self._pg_ctl_start()
        self._ensure_database()

    def _pg_ctl_start(self) -> None:
        socket_dir = str(self.pg_dir)
        if len(socket_dir) + len("/.s.PGSQL.65535") > _MAX_UNIX_SOCKET_PATH:
            socket_dir = ""  # too long for a Unix socket path: TCP only
        # Durability settings are left at their defaults (fsync, synchronous_commit on):
        # an acknowledged write must survive a crash of this Postgres too.
        options = " ".join(
            [
                "-p",
                str(self.config.pg_port),
                "-k",
                shlex.quote(socket_dir),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "max_connections=200",
            ]
        )
        log = self.pg_dir / "pg.log"
        with self._step(f"postgres: started on {HOST}:{self.config.pg_port}"):
            proc = _run(
                self._as_pg_user(
                    [
                        str(self._pg_bin() / "pg_ctl"),
                        "-D",
                        str(self.pg_data),
                        "-l",
                        str(log),
                        "-w",
                        "-t",
                        str(_PG_START_TIMEOUT_S),
                        "-o",
                        options,
                        "start",
                    ]
                ),
                timeout_s=_PG_START_TIMEOUT_S + 15,
                cwd=self.pg_dir,
                env=self._pg_env(),
            )
            if proc.returncode != 0:
                raise StackError(
                    f"pg_ctl start failed (exit {proc.returncode}):\n{_output_tail(proc)}\n"
                    f"log {log}:\n{_tail(log)}"
                )
            if not self._wait_pg_ready(_PG_READY_TIMEOUT_S):
                raise StackError(
                    f"postgres started but does not accept connections; log {log}:\n{_tail(log)}"
                )

    def _psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        return _run(
            [
                str(self._pg_bin() / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                HOST,
                "-p",
                str(self.config.pg_port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            timeout_s=30,
            env=self._pg_env(),
        )

    def _ensure_database(self) -> None:
        name = self.config.pg_database
        literal = "'" + name.replace("'", "''") + "'"
        ident = '"' + name.replace('"', '""') + '"'
        with self._step(f"postgres: database {name} present"):
            for _ in range(3):  # a concurrent creator may win the race: check again
                proc = self._psql(f"SELECT 1 FROM pg_database WHERE datname = {literal}")
                if proc.returncode != 0:
                    raise StackError(f"psql failed:\n{_output_tail(proc)}")
                if proc.stdout.strip() == "1":
                    return
                proc = self._psql(f"CREATE DATABASE {ident}")
                if proc.returncode == 0:
                    self._say(f"postgres: created database {name}")
                    return
                if "already exists" not in proc.stderr:
                    raise StackError(f"CREATE DATABASE {name} failed:\n{_output_tail(proc)}")
            raise StackError(f"database {name} could not be created")

    def stop_postgres(self) -> None:
        """Stop the private Postgres (``pg_ctl stop -m fast``, SIGKILL after a bounded wait)."""
        if self.config.external_pg_dsn is not None and not self.pg_data.exists():
            return
        pid = self._postmaster_pid()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                if (self.pg_data / "postmaster.pid").exists():
                    (self.pg_data / "postmaster.pid").unlink()  # stale: not a live postmaster
            return
        with self._step(f"postgres: stopped (pid {pid})"):
            proc = _run(
                self._as_pg_user(
                    [
                        str(self._pg_bin() / "pg_ctl"),
                        "-D",
                        str(self.pg_data),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(_PG_STOP_TIMEOUT_S),
                        "stop",
                    ]
                ),
                timeout_s=_PG_STOP_TIMEOUT_S + 15,
                cwd=self.pg_dir,
                env=self._pg_env(),
            )
            left = _wait_gone([pid], _SIGKILL_AFTER_S)
            if left:
                self._say(
                    f"postgres (pid {pid}) still runs after pg_ctl stop "
                    f"(exit {proc.returncode}): SIGKILL"
                )
                _signal_checked(pid, signal.SIGKILL, self._is_our_postmaster)
                if _wait_gone([pid], _PROCESS_EXIT_TIMEOUT_S):
                    raise StackError(f"postgres (pid {pid}) did not exit after SIGKILL")
                with contextlib.suppress(FileNotFoundError):
                    (self.pg_data / "postmaster.pid").unlink()

    # ---------------------------------------------------------------- purge

    def _purge(self) -> None:
        """Delete what the stack wrote under root, then root when it is left empty."""
        for port in self._node_dirs_on_disk():
            shutil.rmtree(self.node_dir(port))
        pg_dir = self.pg_dir
        for path in (self.root / "redis", pg_dir):
            if path.is_dir():
                if path == pg_dir:
                    shutil.rmtree(path)
                else:
                    with contextlib.suppress(OSError):
                        path.rmdir()
        if (self.root / "pg").is_symlink():
            (self.root / "pg").unlink()
            with contextlib.suppress(OSError):
                pg_dir.parent.rmdir()
        for name in ("env", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _can_traverse(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


# --------------------------------------------------------------------------------------------
# Command line


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not an integer") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devstack",
        description=(
            "A local 6-node Redis Cluster and a private Postgres for cachegw. Defaults come from "
            "CACHEGW_DEVSTACK_DIR, CACHEGW_DEVSTACK_REDIS_BASE_PORT, CACHEGW_DEVSTACK_PG_PORT and "
            "CACHEGW_DEVSTACK_NODE_TIMEOUT_MS; with CACHEGW_PG__DSN set, that Postgres is used "
            "and none is started."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{up,down,status}")
    for name, text in (
        ("up", "start (or repair) the stack and write DIR/env"),
        ("down", "stop the processes the stack started"),
        ("status", "show the stack; exit 1 when it is not healthy"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--dir", type=Path, default=None, help="data dir (default .devstack)")
        sub.add_argument("--redis-base-port", type=int, default=None, metavar="N")
        sub.add_argument("--pg-port", type=int, default=None, metavar="N")
        sub.add_argument("--node-timeout-ms", type=int, default=None, metavar="N")
        if name == "down":
            sub.add_argument("--purge", action="store_true", help="also delete the stack's data")
    return parser


def _config_from_args(args: argparse.Namespace) -> StackConfig:
    root = (
        args.dir
        if args.dir is not None
        else Path(os.environ.get("CACHEGW_DEVSTACK_DIR") or ".devstack")
    )
    base = args.redis_base_port
    if base is None:
        base = _env_int("CACHEGW_DEVSTACK_REDIS_BASE_PORT", 7000)
    pg_port = args.pg_port
    if pg_port is None:
        pg_port = _env_int("CACHEGW_DEVSTACK_PG_PORT", 55432)
    timeout_ms = args.node_timeout_ms
    if timeout_ms is None:
        timeout_ms = _env_int("CACHEGW_DEVSTACK_NODE_TIMEOUT_MS", 2000)
    external = os.environ.get("CACHEGW_PG__DSN") or None
    return StackConfig(
        root=root,
        redis_base_port=base,
        pg_port=pg_port,
        cluster_node_timeout_ms=timeout_ms,
        external_pg_dsn=external,
    )


def _print_status(report: dict[str, object]) -> None:
    print(f"devstack in {report['root']}")
    nodes = report["redis"]
    if isinstance(nodes, list):
        print(f"  {'port':>6} {'pid':>8} {'alive':<6} {'role':<8} cluster_state")
        for node in nodes:
            if isinstance(node, dict):
                print(
                    f"  {node['port']!s:>6} {node['pid'] or '-'!s:>8} "
                    f"{'yes' if node['alive'] else 'no':<6} {node['role'] or '-'!s:<8} "
                    f"{node['cluster_state'] or '-'}"
                )
    problem = report.get("cluster_problem")
    print(f"  cluster: {'ok' if problem is None else f'NOT ok: {problem}'}")
    pg = report["postgres"]
    if isinstance(pg, dict):
        where = "external" if pg.get("external") else f"pid {pg.get('pid') or '-'}"
        print(f"  postgres ({where}): {'ready' if pg['ready'] else 'NOT ready'}  {pg['dsn']}")
    print("healthy" if report["healthy"] else "NOT healthy")


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``devstack up|down|status [--dir DIR] [--redis-base-port N] [--pg-port N]
    [--node-timeout-ms N] [--purge]``. Returns the exit code: 0 fine, 1 ``status`` found the
    stack unhealthy, 2 an error (printed as one clear message, no traceback)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage and the message
        return _exit_code(exc.code)

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        stack = Stack(_config_from_args(args), echo=echo)
        if args.command == "up":
            stack.up()
            env_path = stack.env_path
            print(f"redis: {stack.env()['CACHEGW_REDIS__NODES']}")
            print(f"postgres: {_mask_dsn(stack.pg_dsn)}")
            load = f"set -a; . {shlex.quote(str(env_path))}; set +a"
            print(f"env: {env_path}  (load it with: {load})")
            return 0
        if args.command == "down":
            stack.down(purge=bool(args.purge))
            return 0
        report = stack.status()
        _print_status(report)
        return 0 if report["healthy"] else 1
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        print(f"devstack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
