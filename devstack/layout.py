"""What every part of the stack shares: its layout under root, the env file, step reporting
and the lock that keeps two ``up``/``down`` runs from interleaving."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

from devstack.config import HOST, NODE_COUNT, StackConfig
from devstack.errors import StackError

_LOCK_TIMEOUT_S = 300.0


class Layout:
    """Where a :class:`~devstack.stack.Stack` keeps its files, the ports it uses, and how it
    reports its steps; handed to each of its parts."""

    def __init__(self, config: StackConfig, *, echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.root = config.root.expanduser().absolute().resolve()
        self._echo = echo

    @property
    def redis_ports(self) -> list[int]:
        """The six client ports, ``redis_base_port`` .. ``redis_base_port + 5``."""
        return [self.config.redis_base_port + i for i in range(NODE_COUNT)]

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

    def say(self, message: str) -> None:
        if self._echo is not None:
            self._echo(message)

    @contextlib.contextmanager
    def step(self, message: str, *, starting: str | None = None) -> Iterator[None]:
        """Say ``message`` with its duration once done; a slow step also says ``starting``
        first, so a wait is never silent."""
        if starting is not None:
            self.say(f"{starting} ...")
        started = time.monotonic()
        yield
        self.say(f"{message} ({time.monotonic() - started:.2f} s)")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
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


def _dotenv_value(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./\-\[\]]*", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
