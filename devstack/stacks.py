"""Stacks of their own for tests and benchmarks: on free ports, migrated, taken down and purged."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from devstack import BUS_PORT_OFFSET, Stack, StackConfig, find_free_base_port, find_free_port

ROOT = Path(__file__).resolve().parents[1]


def migrate(stack: Stack) -> None:
    """``cachegw migrate up`` against the stack's Postgres."""
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate", "up"], cwd=ROOT,
        env={**os.environ, **stack.env()}, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@contextlib.contextmanager
def full_stack(
    root: Path, *, node_timeout_ms: int = 2000, echo: Callable[[str], None] | None = None
) -> Iterator[Stack]:
    """The six Redis nodes and Postgres under ``root``, migrated."""
    base = find_free_base_port()
    taken = {base + i for i in range(6)} | {base + i + BUS_PORT_OFFSET for i in range(6)}
    config = StackConfig(
        root=root, redis_base_port=base, pg_port=find_free_port(avoid=frozenset(taken)),
        cluster_node_timeout_ms=node_timeout_ms,
    )  # fmt: skip
    stack = Stack(config, echo=echo)
    try:
        stack.up()
        migrate(stack)
        yield stack
    finally:
        stack.down(purge=True)


@contextlib.contextmanager
def postgres_only(
    root: Path, *, pg_bin: Path | None = None, echo: Callable[[str], None] | None = None
) -> Iterator[Stack]:
    """Only the stack's Postgres (``pg_bin``: another build of it), migrated."""
    config = StackConfig(root=root, pg_port=find_free_port(), pg_bin=pg_bin)
    stack = Stack(config, echo=echo)
    try:
        stack.start_postgres()
        migrate(stack)
        yield stack
    finally:
        stack.down(purge=True)
