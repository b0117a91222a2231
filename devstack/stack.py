"""The whole stack: its layout, the Redis Cluster and Postgres composed, with ``up``, ``down``,
``status`` and purge."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from app.config import mask_dsn
from devstack.cluster_view import NODE_ERRORS, cluster_info, node_client, replication
from devstack.config import StackConfig
from devstack.layout import Layout
from devstack.postgres import Postgres
from devstack.redis_cluster import RedisCluster


class Stack:
    """The local Redis Cluster and Postgres described by a :class:`StackConfig`.

    Three parts, each its own object: ``layout`` (paths, ports, env file, step reporting, the
    lock), ``redis`` (the cluster and, as ``redis.nodes``, its processes) and ``postgres``. The
    methods below the lifecycle ones only hand a call to the part that does it.

    ``echo`` receives one line per step (with its duration); the CLI prints them, library use
    is silent by default. Public methods are safe to repeat; ``up`` and ``down`` take a file
    lock in the data directory so two of them never interleave.
    """

    def __init__(self, config: StackConfig, *, echo: Callable[[str], None] | None = None) -> None:
        self.layout = Layout(config, echo=echo)
        self.redis = RedisCluster(self.layout)
        self.postgres = Postgres(self.layout)
        self.config = config
        self.root = self.layout.root

    def up(self) -> None:
        """Bring the whole stack up, or leave it be where it already is.

        Running nodes are left alone, stopped (or paused) ones are started (resumed) and rejoin
        from nodes.conf. A fresh set of nodes becomes a cluster (``redis-cli --cluster
        create``); a half-formed or broken one is recreated (its Redis data is discarded).
        Then waits until the cluster is ok, makes sure Postgres runs with the database, and
        writes ``root/env``. Raises :class:`StackError` when something cannot be done.
        """
        started = time.monotonic()
        with self.layout.locked():
            self.redis.up()
            self.postgres.up()
            with self.layout.step(f"env written to {self.env_path}"):
                self.write_env_file()
        self.layout.say(f"stack up ({time.monotonic() - started:.2f} s)")

    def down(self, *, purge: bool = False) -> None:
        """Stop exactly the processes this stack started (by PID from its pidfiles).

        Each gets SIGTERM (Postgres: ``pg_ctl stop -m fast``), a bounded wait, then SIGKILL.
        The data directory stays (pidfiles aside) unless ``purge``: then the stack's own files
        under ``root`` are deleted, and ``root`` itself when nothing else is left in it.
        """
        if not self.root.exists():
            self.layout.say(f"nothing to stop: {self.root} does not exist")
            return
        started = time.monotonic()
        with self.layout.locked():
            self.redis.nodes.stop_all_nodes()
            if self.config.external_pg_dsn is None or self.pg_data.exists():
                self.stop_postgres()
            if purge:
                with self.layout.step(f"purged {self.root}"):
                    self._purge()
        self.layout.say(f"stack down ({time.monotonic() - started:.2f} s)")

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
                    with node_client(port) as client:
                        repl = replication(client)
                        info = cluster_info(client)
                except NODE_ERRORS:
                    pass
                else:
                    entry["alive"] = True
                    role = repl.get("role")
                    entry["role"] = {"master": "primary", "slave": "replica"}.get(role or "", role)
                    entry["cluster_state"] = info.get("cluster_state")
            nodes.append(entry)
        problem = self.redis.problem()
        pg_ready = self.postgres.ready()
        postgres: dict[str, object] = {
            "ready": pg_ready,
            "dsn": mask_dsn(self.pg_dsn),
            "external": self.config.external_pg_dsn is not None,
            "pid": None
            if self.config.external_pg_dsn is not None
            else self.postgres.postmaster_pid(),
        }
        return {
            "root": str(self.root),
            "redis": nodes,
            "cluster_ok": problem is None,
            "cluster_problem": problem,
            "postgres": postgres,
            "healthy": problem is None and pg_ready and all(bool(n["alive"]) for n in nodes),
        }

    def _purge(self) -> None:
        """Delete what the stack wrote under root, then root when it is left empty."""
        for port in self.redis.nodes.node_dirs_on_disk():
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

    # The layout.

    @property
    def redis_ports(self) -> list[int]:
        return self.layout.redis_ports

    @property
    def env_path(self) -> Path:
        return self.layout.env_path

    @property
    def pg_dsn(self) -> str:
        return self.layout.pg_dsn

    def env(self) -> dict[str, str]:
        return self.layout.env()

    def write_env_file(self) -> Path:
        return self.layout.write_env_file()

    def node_dir(self, port: int) -> Path:
        return self.layout.node_dir(port)

    # Redis: see RedisNodes and RedisCluster.

    def node_pid(self, port: int) -> int | None:
        return self.redis.nodes.node_pid(port)

    def start_node(self, port: int) -> None:
        self.redis.nodes.start_node(port)

    def kill_node(self, port: int) -> None:
        self.redis.nodes.kill_node(port)

    def pause_node(self, port: int) -> None:
        self.redis.nodes.pause_node(port)

    def resume_node(self, port: int) -> None:
        self.redis.nodes.resume_node(port)

    def snapshot_node(self, port: int) -> Path:
        return self.redis.nodes.snapshot_node(port)

    def forget_snapshot(self, port: int) -> None:
        self.redis.nodes.forget_snapshot(port)

    def cluster_nodes(self) -> list[dict[str, object]]:
        return self.redis.cluster_nodes()

    def wait_cluster_ok(self, timeout_s: float = 30.0) -> None:
        self.redis.wait_cluster_ok(timeout_s)

    # Postgres: see Postgres.

    @property
    def pg_dir(self) -> Path:
        return self.postgres.pg_dir

    @property
    def pg_data(self) -> Path:
        return self.postgres.pg_data

    def start_postgres(self) -> None:
        self.postgres.start()

    def stop_postgres(self) -> None:
        self.postgres.stop()
