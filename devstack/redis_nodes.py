"""The Redis half of the stack, node by node: config, start, stop, kill, pause, resume.

A node's PID comes from its pidfile and is trusted only while /proc shows ``redis-server``
with the node's port and working directory.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devstack.cluster_view import NODE_ERRORS, node_client, ping
from devstack.config import BUS_PORT_OFFSET, HOST
from devstack.errors import StackError
from devstack.layout import Layout
from devstack.ports import port_bindable, port_use
from devstack.processes import (
    POLL_INTERVAL_S,
    PROCESS_EXIT_TIMEOUT_S,
    SIGKILL_AFTER_S,
    find_binary,
    output_tail,
    pid_alive,
    proc_cmdline,
    proc_cwd,
    proc_state,
    processes_in,
    read_pid,
    run,
    signal_checked,
    tail,
    wait_gone,
)

_NODE_START_TIMEOUT_S = 10.0


class RedisNodes:
    """The six redis-server processes of a :class:`~devstack.stack.Stack`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.config = layout.config

    def _redis_conf(self, port: int) -> str:
        directory = self.layout.node_dir(port)
        return "\n".join(
            [
                "# Written by devstack; rewritten on every start.",
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
        directory = self.layout.node_dir(port)
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
        cmdline = proc_cmdline(pid)
        return (
            pid_alive(pid)
            and "redis-server" in cmdline
            and re.search(rf":{port}(?!\d)", cmdline) is not None
            and proc_cwd(pid) == self.layout.node_dir(port)
        )

    def _node_checker(self, port: int) -> Callable[[int], bool]:
        def check(pid: int) -> bool:
            return self._is_our_node(pid, port)

        return check

    def node_pid(self, port: int) -> int | None:
        """The PID of this stack's node on ``port`` when it runs (validated), else None."""
        pid = read_pid(self.layout.node_dir(port) / "redis.pid")
        if pid is None or not self._is_our_node(pid, port):
            return None
        return pid

    def _signal_node(self, port: int, sig: signal.Signals) -> int | None:
        pid = self.node_pid(port)
        if pid is None:
            return None
        if not signal_checked(pid, sig, self._node_checker(port)):
            return None
        return pid

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on ``port`` (when it runs) and its forks (a child sending a sync or
        writing a snapshot holds the listening port too), and wait until they are gone."""
        self.check_port(port)
        pid = self._signal_node(port, signal.SIGKILL)
        if pid is None:
            return
        directory = self.layout.node_dir(port)
        forks = [p for p in processes_in(directory, "redis") if p != pid]
        for fork in forks:  # left to init when their parent died: found by their directory
            signal_checked(fork, signal.SIGKILL, lambda p: proc_cwd(p) == directory)
        if wait_gone([pid, *forks], PROCESS_EXIT_TIMEOUT_S):
            raise StackError(f"redis node {port} (pid {pid}) is still alive after SIGKILL")
        with contextlib.suppress(FileNotFoundError):
            (self.layout.node_dir(port) / "redis.pid").unlink()

    def pause_node(self, port: int) -> None:
        """SIGSTOP the node on ``port``: it stays alive but answers nothing."""
        self.check_port(port)
        if self._signal_node(port, signal.SIGSTOP) is None:
            raise StackError(f"redis node {port} is not running")

    def resume_node(self, port: int) -> None:
        """SIGCONT the node on ``port`` (after :meth:`pause_node`)."""
        self.check_port(port)
        if self._signal_node(port, signal.SIGCONT) is None:
            raise StackError(f"redis node {port} is not running")

    def snapshot_node(self, port: int) -> Path:
        """Make the node write its data to ``dump.rdb`` now (``SAVE``); a node started again
        loads it, so a later :meth:`kill_node` and :meth:`start_node` bring the node back with
        the data of this moment, as ``save`` persistence does after a crash."""
        self.check_port(port)
        try:
            with node_client(port, timeout_s=30) as client:
                saved = bool(client.save())
        except NODE_ERRORS as exc:
            raise StackError(f"redis node {port}: SAVE failed: {exc}") from exc
        if not saved:
            raise StackError(f"redis node {port}: SAVE failed")
        return self.layout.node_dir(port) / "dump.rdb"

    def forget_snapshot(self, port: int) -> None:
        """Delete the node's ``dump.rdb`` (a replica writes one at every full sync): the node
        starts empty the next time."""
        self.check_port(port)
        with contextlib.suppress(FileNotFoundError):
            (self.layout.node_dir(port) / "dump.rdb").unlink()

    def start_node(self, port: int) -> None:
        """Start the node on ``port`` from its config and nodes.conf (a node that belonged to
        the cluster rejoins it) and wait until it answers PING. A running node is left alone
        (resumed if paused)."""
        self.check_port(port)
        self.start_nodes([port])

    def check_port(self, port: int) -> None:
        if port not in self.layout.redis_ports:
            raise StackError(
                f"{port} is not one of this stack's Redis ports {self.layout.redis_ports}"
            )

    def start_nodes(self, ports: Sequence[int]) -> list[int]:
        """Start the given nodes that are not running; resume paused ones; wait for PING.
        Returns the ports that were actually started."""
        redis_server = find_binary("redis-server")
        started: list[int] = []
        for port in ports:
            conf = self._write_node_conf(port)
            pid = self.node_pid(port)
            if pid is not None:
                if proc_state(pid) in {"T", "t"}:
                    signal_checked(pid, signal.SIGCONT, self._node_checker(port))
                    self.layout.say(f"redis {HOST}:{port} was paused: resumed (pid {pid})")
                continue
            for busy in (port, port + BUS_PORT_OFFSET):
                if not _bindable_soon(busy):
                    raise StackError(
                        f"{port_use(busy)} (needed by the Redis node {port}); this stack did not "
                        "start it: stop it, or choose another --redis-base-port"
                    )
            with contextlib.suppress(FileNotFoundError):
                (self.layout.node_dir(port) / "redis.pid").unlink()
            proc = run([redis_server, str(conf)], timeout_s=30, cwd=self.layout.node_dir(port))
            if proc.returncode != 0:
                raise StackError(
                    f"redis-server for port {port} failed (exit {proc.returncode}):\n"
                    f"{output_tail(proc)}\n{tail(self.layout.node_dir(port) / 'redis.log')}"
                )
            started.append(port)
        for port in ports:
            self._wait_node_answers(port)
        return started

    def _wait_node_answers(self, port: int) -> None:
        deadline = time.monotonic() + _NODE_START_TIMEOUT_S
        for _ in range(math.ceil(_NODE_START_TIMEOUT_S / POLL_INTERVAL_S) + 1):
            if ping(port, timeout_s=0.5) and self.node_pid(port) is not None:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        log = self.layout.node_dir(port) / "redis.log"
        raise StackError(
            f"redis node {port} did not answer PING within {_NODE_START_TIMEOUT_S:.0f} s; "
            f"log {log}:\n{tail(log)}"
        )

    def node_dirs_on_disk(self) -> list[int]:
        """Ports of every node dir under root/redis (also from an earlier base port)."""
        base = self.layout.root / "redis"
        if not base.is_dir():
            return []
        return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())

    def stop_nodes(self, ports: Sequence[int]) -> None:
        """SIGTERM our running nodes on ``ports``, wait (bounded), SIGKILL leftovers."""
        pids: dict[int, int] = {}
        for port in ports:
            pid = self.node_pid(port)
            if pid is None:
                continue
            # A paused node cannot act on SIGTERM until it is continued.
            signal_checked(pid, signal.SIGCONT, self._node_checker(port))
            if signal_checked(pid, signal.SIGTERM, self._node_checker(port)):
                pids[port] = pid
        left = wait_gone(list(pids.values()), SIGKILL_AFTER_S)
        for port, pid in pids.items():
            if pid in left:
                self.layout.say(f"redis {HOST}:{port} (pid {pid}) ignored SIGTERM: SIGKILL")
                signal_checked(pid, signal.SIGKILL, self._node_checker(port))
        still = wait_gone(left, PROCESS_EXIT_TIMEOUT_S)
        if still:
            raise StackError(f"redis processes {still} did not exit after SIGKILL")
        for port in ports:
            with contextlib.suppress(FileNotFoundError):
                (self.layout.node_dir(port) / "redis.pid").unlink()

    def stop_all_nodes(self) -> None:
        ports = sorted(set(self.layout.redis_ports) | set(self.node_dirs_on_disk()))
        running = [p for p in ports if self.node_pid(p) is not None]
        with self.layout.step(
            f"redis: stopped {len(running)} node(s)" + (f" {running}" if running else "")
        ):
            self.stop_nodes(ports)


def _bindable_soon(port: int, *, timeout_s: float = 5.0) -> bool:
    """Whether ``port`` can be bound now or within ``timeout_s`` (a node just killed may take a
    moment to release it: its sockets, a fork still exiting)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(math.ceil(timeout_s / POLL_INTERVAL_S) + 1):
        if port_bindable(port):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return False


def _redis_quote(path: Path) -> str:
    """A path as a double-quoted redis.conf argument (spaces and quotes survive)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
