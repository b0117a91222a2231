"""The Postgres half of the stack: the private server's lifecycle (initdb, start, database,
readiness, stop), or the readiness of an external one.

The postmaster's PID comes from postmaster.pid and is trusted only while /proc shows
``postgres`` with the stack's data directory.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from app.config import mask_dsn
from devstack.config import HOST
from devstack.errors import StackError
from devstack.layout import Layout
from devstack.ports import port_bindable, port_use
from devstack.postgres_host import PostgresHost
from devstack.processes import (
    PROCESS_EXIT_TIMEOUT_S,
    SIGKILL_AFTER_S,
    output_tail,
    pid_alive,
    proc_cmdline,
    proc_cwd,
    read_pid,
    run,
    signal_checked,
    tail,
    wait_gone,
)

_PG_START_TIMEOUT_S = 30
_PG_STOP_TIMEOUT_S = 30
_PG_READY_TIMEOUT_S = 30.0
_EXTERNAL_PG_WAIT_S = 15.0
_MAX_UNIX_SOCKET_PATH = 100  # sockaddr_un.sun_path is 108 bytes including the NUL


class Postgres:
    """The private (or external) Postgres of a :class:`~devstack.stack.Stack`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.config = layout.config
        self.host = PostgresHost(layout)

    @property
    def pg_dir(self) -> Path:
        return self.host.pg_dir

    @property
    def pg_data(self) -> Path:
        return self.host.pg_data

    def _is_our_postmaster(self, pid: int) -> bool:
        if not pid_alive(pid):
            return False
        cmdline = proc_cmdline(pid)
        if "postgres" not in cmdline and "postmaster" not in cmdline:
            return False
        return str(self.pg_data) in cmdline or proc_cwd(pid) == self.pg_data

    def postmaster_pid(self) -> int | None:
        pid = read_pid(self.pg_data / "postmaster.pid")
        if pid is None or not self._is_our_postmaster(pid):
            return None
        return pid

    def _postmaster_port(self) -> int | None:
        try:
            lines = (self.pg_data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def ready(self) -> bool:
        """The external DSN accepts connections, or our own postmaster does on our port
        (another server that happens to listen there does not count)."""
        if self.config.external_pg_dsn is not None:
            return self._pg_isready(["-d", self.config.external_pg_dsn])
        if self.postmaster_pid() is None:
            return False
        return self._pg_isready(["-h", HOST, "-p", str(self.config.pg_port)])

    def _pg_isready(self, target: list[str]) -> bool:
        try:
            pg_isready = self.host.pg_bin() / "pg_isready"
        except StackError:
            return self._tcp_connectable(target)
        try:
            proc = run(
                [str(pg_isready), *target, "-t", "2", "-q"], timeout_s=10, env=self.host.pg_env()
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
            if self.ready():
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return False

    def up(self) -> None:
        if self.config.external_pg_dsn is not None:
            with self.layout.step(
                f"postgres: external {mask_dsn(self.config.external_pg_dsn)} ready"
            ):
                if not self._wait_pg_ready(_EXTERNAL_PG_WAIT_S):
                    raise StackError(
                        "the external Postgres (CACHEGW_PG__DSN "
                        f"{mask_dsn(self.config.external_pg_dsn)}) does not accept connections "
                        f"after {_EXTERNAL_PG_WAIT_S:.0f} s"
                    )
            return
        self.start()

    def _initdb(self) -> None:
        if (self.pg_data / "PG_VERSION").is_file():
            return
        if self.pg_data.exists():
            # An interrupted initdb: the directory is the stack's own, start it over.
            shutil.rmtree(self.pg_data)
        with self.layout.step(
            f"postgres: initdb {self.pg_data}", starting="postgres: initdb (a few seconds)"
        ):
            proc = run(
                self.host.as_pg_user(
                    [
                        str(self.host.pg_bin() / "initdb"),
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
                env=self.host.pg_env(),
            )
            if proc.returncode != 0:
                raise StackError(f"initdb failed (exit {proc.returncode}):\n{output_tail(proc)}")

    def start(self) -> None:
        """Start the private Postgres (initdb once) and create the database when missing.
        A postmaster of this data dir that already serves our port is left alone."""
        if self.config.external_pg_dsn is not None:
            raise StackError("this stack uses an external Postgres (external_pg_dsn): not started")
        pid = self.postmaster_pid()
        if pid is not None and self._postmaster_port() != self.config.pg_port:
            self.layout.say(
                f"postgres runs on port {self._postmaster_port()}: restarting on the new one"
            )
            self.stop()
            pid = None
        if pid is not None:
            with self.layout.step(f"postgres: running (pid {pid})"):
                if not self._wait_pg_ready(_PG_READY_TIMEOUT_S):
                    raise StackError(
                        f"postgres (pid {pid}) does not accept connections on port "
                        f"{self.config.pg_port}; log {self.pg_dir / 'pg.log'}:\n"
                        f"{tail(self.pg_dir / 'pg.log')}"
                    )
        else:
            self.host.prepare_dirs()
            self._initdb()
            if not port_bindable(self.config.pg_port):
                raise StackError(
                    f"{port_use(self.config.pg_port)}; this stack did not start it: retry, or "
                    "choose another --pg-port"
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
        if self._has_library("pg_stat_statements"):
            # Lets tests count queries as Postgres itself sees them (the extension is created
            # by the tests that need it, never by the gateway).
            options += " -c shared_preload_libraries=pg_stat_statements"
        log = self.pg_dir / "pg.log"
        with self.layout.step(
            f"postgres: started on {HOST}:{self.config.pg_port}", starting="postgres: starting"
        ):
            proc = run(
                self.host.as_pg_user(
                    [
                        str(self.host.pg_bin() / "pg_ctl"),
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
                env=self.host.pg_env(),
            )
            if proc.returncode != 0:
                raise StackError(
                    f"pg_ctl start failed (exit {proc.returncode}):\n{output_tail(proc)}\n"
                    f"log {log}:\n{tail(log)}"
                )
            if not self._wait_pg_ready(_PG_READY_TIMEOUT_S):
                raise StackError(
                    f"postgres started but does not accept connections; log {log}:\n{tail(log)}"
                )

    def _has_library(self, name: str) -> bool:
        """Whether this Postgres build ships the loadable module ``name``."""
        pg_config = self.host.pg_bin() / "pg_config"
        if not pg_config.is_file():
            return True  # no pg_config to ask: assume a full installation
        proc = run([str(pg_config), "--pkglibdir"], timeout_s=10)
        if proc.returncode != 0:
            return True
        return (Path(proc.stdout.strip()) / f"{name}.so").is_file()

    def _psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        return run(
            [
                str(self.host.pg_bin() / "psql"),
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
            env=self.host.pg_env(),
        )

    def _ensure_database(self) -> None:
        name = self.config.pg_database
        literal = "'" + name.replace("'", "''") + "'"
        ident = '"' + name.replace('"', '""') + '"'
        with self.layout.step(f"postgres: database {name} present"):
            for _ in range(3):  # a concurrent creator may win the race: check again
                proc = self._psql(f"SELECT 1 FROM pg_database WHERE datname = {literal}")
                if proc.returncode != 0:
                    raise StackError(f"psql failed:\n{output_tail(proc)}")
                if proc.stdout.strip() == "1":
                    return
                proc = self._psql(f"CREATE DATABASE {ident}")
                if proc.returncode == 0:
                    self.layout.say(f"postgres: created database {name}")
                    return
                if "already exists" not in proc.stderr:
                    raise StackError(f"CREATE DATABASE {name} failed:\n{output_tail(proc)}")
            raise StackError(f"database {name} could not be created")

    def stop(self) -> None:
        """Stop the private Postgres (``pg_ctl stop -m fast``, SIGKILL after a bounded wait)."""
        if self.config.external_pg_dsn is not None and not self.pg_data.exists():
            return
        pid = self.postmaster_pid()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                if (self.pg_data / "postmaster.pid").exists():
                    (self.pg_data / "postmaster.pid").unlink()  # stale: not a live postmaster
            return
        with self.layout.step(f"postgres: stopped (pid {pid})"):
            proc = run(
                self.host.as_pg_user(
                    [
                        str(self.host.pg_bin() / "pg_ctl"),
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
                env=self.host.pg_env(),
            )
            left = wait_gone([pid], SIGKILL_AFTER_S)
            if left:
                self.layout.say(
                    f"postgres (pid {pid}) still runs after pg_ctl stop "
                    f"(exit {proc.returncode}): SIGKILL"
                )
                signal_checked(pid, signal.SIGKILL, self._is_our_postmaster)
                if wait_gone([pid], PROCESS_EXIT_TIMEOUT_S):
                    raise StackError(f"postgres (pid {pid}) did not exit after SIGKILL")
                with contextlib.suppress(FileNotFoundError):
                    (self.pg_data / "postmaster.pid").unlink()
