"""A Redis Cluster and a Postgres in the fault lab: each in a network namespace of its own.

Six ``redis-server`` processes (three primaries, three replicas), each started inside its lab
member's namespace (``ip netns exec``), listening on that member's address, port 6379; the
cluster made with ``redis-cli --cluster create`` over the lab's bridge. The gateway, on this
machine, reaches them through the bridge, so a rule of the lab (``NetLab.cut``, ``lose``) between
a node and the bridge's address cuts the gateway off, and one between two members splits the
cluster.

With ``postgres``, a seventh member runs a Postgres of its own (port 5432 on its address, trust
for the lab's /24 only, the project's migrations applied); its data lives in a directory the
``postgres`` user can reach (recorded in ``root/lab-postgres.json`` before it is made).

A node named in ``proxied`` sits behind a delay proxy of its own (``devstack/faultproxy.py``,
port 6390 in the node's namespace) from the start and announces it, so the gateway and the other
nodes reach it only through the proxy; ``delay`` sets the proxy's latency.

Each node's directory (config, pidfile, nodes.conf, log) is under ``root``; ``down`` stops the
nodes by the PIDs of their pidfiles, each checked against ``/proc`` (a ``redis-server`` whose
working directory is that node's), then removes the lab. A crashed run leaves its pidfiles and the
lab's record, so ``down`` from a new process cleans up after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devstack.errors import StackError
from devstack.netlab import Member, NetLab
from devstack.postgres_host import find_pg_bin
from devstack.processes import find_binary, run

ROOT = Path(__file__).resolve().parents[1]
PORT = 6379
PROXY_PORT = 6390
BUS_PORT = PORT + 10000
PG_PORT = 5432
NODES = 6
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class LabNode:
    member: Member
    directory: Path
    proxied: bool = False

    @property
    def address(self) -> str:
        return self.member.address

    @property
    def port(self) -> int:
        """The port the node announces: where clients and the other nodes reach it."""
        return PROXY_PORT if self.proxied else PORT

    @property
    def endpoint(self) -> str:
        return f"{self.member.address}:{self.port}"

    @property
    def direct(self) -> str:
        """The node's own listener, past any proxy."""
        return f"{self.member.address}:{PORT}"

    @property
    def control(self) -> Path:
        return self.directory / "fault.json"


class LabCluster:
    """The lab's Redis Cluster: ``up`` makes lab and cluster, ``down`` removes both."""

    def __init__(
        self,
        root: Path,
        *,
        node_timeout_ms: int = 2000,
        postgres: bool = False,
        proxied: Sequence[int] = (),
    ) -> None:
        self.root = root
        self.proxied = set(proxied)
        self.lab = NetLab(root)
        self.node_timeout_ms = node_timeout_ms
        self.with_postgres = postgres
        self.nodes: list[LabNode] = []
        self.pg_member: Member | None = None
        self._proxies: list[subprocess.Popen[bytes]] = []  # reaped by down()
        self.pg_record = root / "lab-postgres.json"

    # -- lifecycle ---------------------------------------------------------------------------

    def up(self) -> list[LabNode]:
        members = self.lab.up(NODES + 1 if self.with_postgres else NODES)
        try:
            if self.with_postgres:
                self.pg_member = members.pop()
                self._start_postgres(self.pg_member)
            self.nodes = [
                LabNode(m, self.root / f"node-{i}", i in self.proxied)
                for i, m in enumerate(members)
            ]
            for node in self.nodes:
                if node.proxied:
                    self._start_proxy(node)
                self._start(node)
            for node in self.nodes:
                self._wait_answers(node)
            proc = run(
                [find_binary("redis-cli"), "--cluster", "create",
                 *(node.direct for node in self.nodes),
                 "--cluster-replicas", "1", "--cluster-yes"],
                timeout_s=60,
            )  # fmt: skip
            if proc.returncode != 0:
                raise StackError(f"cluster create failed: {proc.stdout[-2000:]}{proc.stderr}")
            self.wait_healthy()
        except BaseException:
            self.down()
            raise
        return list(self.nodes)

    def down(self) -> None:
        """Stop every node this lab started (by pidfile, checked), then remove the lab."""
        for directory in sorted(self.root.glob("node-*")):
            self._stop_pid(directory)
            stop_proxy(directory / "fault.json")
        for proxy in self._proxies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.wait(timeout=STOP_TIMEOUT_S)
        self._proxies = []
        self._remove_postgres()
        self.lab.down()
        for directory in sorted(self.root.glob("node-*")):
            shutil.rmtree(directory, ignore_errors=True)
        self.nodes = []

    def _conf(self, node: LabNode) -> str:
        return "\n".join(
            [
                f"bind {node.address}",
                f"port {PORT}",
                "protected-mode no",
                "daemonize yes",
                f'pidfile "{node.directory / "redis.pid"}"',
                f'logfile "{node.directory / "redis.log"}"',
                f'dir "{node.directory}"',
                'save ""',
                "appendonly no",
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {self.node_timeout_ms}",
                "cluster-require-full-coverage no",
                "cluster-allow-reads-when-down yes",
                *(
                    [f"cluster-announce-port {PROXY_PORT}", f"cluster-announce-bus-port {BUS_PORT}"]
                    if node.proxied
                    else []
                ),
                "",
            ]
        )

    def _start(self, node: LabNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        conf = node.directory / "redis.conf"
        conf.write_text(self._conf(node))
        argv = self.lab.exec_argv(node.member, [find_binary("redis-server"), str(conf)])
        proc = run(argv, timeout_s=30, cwd=node.directory)
        if proc.returncode != 0:
            raise StackError(f"redis-server in {node.member.namespace} failed: {proc.stderr}")

    def _start_proxy(self, node: LabNode) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        node.control.unlink(missing_ok=True)
        Path(f"{node.control}.pid").unlink(missing_ok=True)
        argv = self.lab.exec_argv(
            node.member,
            [sys.executable, "-m", "devstack.faultproxy", f"{node.address}:{PROXY_PORT}",
             node.direct, str(node.control)],
        )  # fmt: skip
        with (node.directory / "proxy.log").open("ab") as log:
            proxy = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        self._proxies.append(proxy)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while checked_proxy_pid(node.control) is None:
            if time.monotonic() > deadline:
                raise StackError(f"the delay proxy of {node.direct} did not start")
            time.sleep(0.05)

    def delay(self, node: LabNode, low_ms: int, high_ms: int | None = None) -> None:
        """Hold each chunk to and from ``node`` ``low_ms``..``high_ms`` (0: no delay)."""
        if not node.proxied:
            raise StackError(f"{node.direct} has no delay proxy (LabCluster(proxied=...))")
        tmp = node.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"delay_ms": [low_ms, low_ms if high_ms is None else high_ms]}))
        tmp.replace(node.control)

    def start(self, node: LabNode) -> None:
        """Start a stopped node again, from its config and nodes.conf."""
        self._start(node)
        self._wait_answers(node)

    def _wait_answers(self, node: LabNode) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.cli(node, "PING", check=False) != "PONG":
            if time.monotonic() > deadline:
                raise StackError(f"{node.endpoint} does not answer: {_tail(node)}")
            time.sleep(0.1)

    def pid(self, node: LabNode) -> int | None:
        return _checked_pid(node.directory)

    def kill(self, node: LabNode) -> None:
        pid = self.pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    def _stop_pid(self, directory: Path) -> None:
        pid = _checked_pid(directory)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    # -- state -------------------------------------------------------------------------------

    def cli(self, node: LabNode, *args: str, check: bool = True) -> str:
        """One command to ``node`` with redis-cli, from this machine (through the bridge, past
        any proxy)."""
        proc = run(
            [find_binary("redis-cli"), "-h", node.address, "-p", str(PORT), *args], timeout_s=10
        )
        if check and proc.returncode != 0:
            raise StackError(f"redis-cli {args} to {node.direct}: {proc.stderr}")
        return proc.stdout.strip()

    def info(self, node: LabNode, section: str) -> dict[str, str]:
        text = (
            self.cli(node, "CLUSTER", "INFO")
            if section == "cluster"
            else self.cli(node, "INFO", section)
        )
        pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def role(self, node: LabNode) -> str:
        return self.info(node, "replication").get("role", "?")

    def replica_of(self, primary: LabNode) -> LabNode:
        """The node whose replication section names ``primary`` as its primary."""
        for node in self.nodes:
            if node is primary:
                continue
            with contextlib.suppress(StackError):
                info = self.info(node, "replication")
                if info.get("role") == "slave" and info.get("master_host") == primary.address:
                    return node
        raise StackError(f"no replica of {primary.endpoint}")

    def slots_of(self, node: LabNode) -> list[tuple[int, int]]:
        """The slot ranges ``node`` says it owns (its own line of CLUSTER NODES)."""
        for line in self.cli(node, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) >= 8 and "myself" in fields[2].split(","):
                ranges = []
                for part in fields[8:]:
                    if not part.startswith("["):  # a slot being migrated, not owned
                        low, _, high = part.partition("-")
                        ranges.append((int(low), int(high or low)))
                return ranges
        return []

    def primaries(self) -> list[LabNode]:
        return [node for node in self.nodes if self.role(node) == "master"]

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Every node says cluster_state:ok, three primaries, every replica in sync."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(StackError):
                states = {self.info(n, "cluster").get("cluster_state") for n in self.nodes}
                replicas = [self.info(n, "replication") for n in self.nodes]
                linked = all(
                    r.get("master_link_status") == "up" for r in replicas if r["role"] == "slave"
                )
                if states == {"ok"} and len(self.primaries()) == NODES // 2 and linked:
                    return
            if time.monotonic() > deadline:
                raise StackError("the lab cluster did not become healthy")
            time.sleep(0.2)

    def env(self) -> dict[str, str]:
        """The gateway's Redis settings for this cluster (and its Postgres, if it has one)."""
        env = {"CACHEGW_REDIS__NODES": ",".join(node.endpoint for node in self.nodes)}
        if self.pg_member is not None:
            env["CACHEGW_PG__DSN"] = self.dsn
        return env

    # -- Postgres ----------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        assert self.pg_member is not None
        return f"postgresql://postgres@{self.pg_member.address}:{PG_PORT}/cachegw"

    def _pg_dir(self) -> Path | None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            return Path(json.loads(self.pg_record.read_text())["dir"])
        return None

    def _start_postgres(self, member: Member) -> None:
        pg_bin = find_pg_bin()
        if pg_bin is None:
            raise StackError("Postgres binaries not found (Debian package postgresql)")
        # The postgres user must reach its data: a directory of its own under /tmp (the lab's
        # root may be private), recorded before it is made.
        directory = Path(tempfile.mkdtemp(prefix="cachegw-labpg-"))
        self.pg_record.write_text(json.dumps({"dir": str(directory)}))
        directory.chmod(0o755)
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        as_pg = ["runuser", "-u", "postgres", "--"]
        data = directory / "data"
        proc = run(
            [*as_pg, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-instructions"],
            timeout_s=120, cwd=directory,
        )  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"initdb failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.lab.record['subnet']} trust\n")
        options = f"-p {PG_PORT} -k '' -c listen_addresses={member.address} -c max_connections=200"
        proc = run(
            self.lab.exec_argv(
                member,
                [*as_pg, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(directory / "pg.log"),
                 "-w", "-t", "30", "-o", options, "start"],
            ),
            timeout_s=60, cwd=directory,
        )  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"pg_ctl start failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")
        psql = [str(pg_bin / "psql"), "-h", member.address, "-p", str(PG_PORT), "-U", "postgres"]
        proc = run([*psql, "-c", "CREATE DATABASE cachegw"], timeout_s=30)
        if proc.returncode != 0:
            raise StackError(f"createdb failed: {proc.stderr}")
        proc = run(
            [sys.executable, "-m", "app.cli", "migrate", "up"], timeout_s=120, cwd=ROOT,
            env={**os.environ, "CACHEGW_PG__DSN": self.dsn},
        )  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"migrations failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}")

    def _remove_postgres(self) -> None:
        directory = self._pg_dir()
        if directory is None:
            return
        pg_bin = find_pg_bin()
        if (directory / "data" / "postmaster.pid").exists() and pg_bin is not None:
            run(
                ["runuser", "-u", "postgres", "--", str(pg_bin / "pg_ctl"), "-D",
                 str(directory / "data"), "-m", "immediate", "-w", "-t", "20", "stop"],
                timeout_s=40,
            )  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)
        self.pg_record.unlink(missing_ok=True)


@contextlib.contextmanager
def lab_cluster(
    root: Path, *, node_timeout_ms: int = 2000, postgres: bool = False, proxied: Sequence[int] = ()
) -> Iterator[LabCluster]:
    cluster = LabCluster(root, node_timeout_ms=node_timeout_ms, postgres=postgres, proxied=proxied)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


def _checked_pid(directory: Path) -> int | None:
    """The PID in ``directory``'s pidfile if that process is a redis-server working there."""
    try:
        pid = int((directory / "redis.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    if b"redis-server" not in cmdline or Path(cwd) != directory.resolve():
        return None
    return pid


def checked_proxy_pid(control: Path) -> int | None:
    """The PID in ``control``'s pidfile if that process is this control file's delay proxy."""
    try:
        pid = int(Path(f"{control}.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    if b"devstack.faultproxy" not in cmdline or str(control).encode() not in cmdline:
        return None
    return pid


def stop_proxy(control: Path) -> None:
    pid = checked_proxy_pid(control)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
    Path(f"{control}.pid").unlink(missing_ok=True)


def _wait_gone(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _tail(node: LabNode) -> str:
    with contextlib.suppress(FileNotFoundError):
        return (node.directory / "redis.log").read_text()[-2000:]
    return "(no log)"
