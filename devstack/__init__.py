"""A local stack for development and tests: a 6-node Redis Cluster and a private Postgres.

Everything lives under one data directory (``StackConfig.root``)::

    root/redis/<port>/redis.conf, nodes.conf, redis.pid, redis.log   one dir per Redis node
    root/pg/data, root/pg/pg.log                                      the private Postgres
    root/env                                                          KEY=value lines for cachegw

The stack only ever signals processes it started itself: a PID is taken from a pidfile and
is used only when ``/proc/<pid>`` shows the expected program (``redis-server`` with the
node's port and working directory, or ``postgres`` with the stack's data directory). A stale
pidfile whose PID now belongs to another program is ignored, never signalled.

The package is synchronous (subprocess, socket, time); every wait is bounded in iterations and
in time. Command line: ``python -m devstack up|down|status`` (see :func:`main`), from the
repository root: the package is a development tool, outside the cachegw wheel and image.

Modules: ``config`` (StackConfig and the stack's shape), ``ports``, ``processes`` (/proc
checks, pidfd signalling, bounded waits), ``cluster_view`` (talking to a node with
redis-py, parsing what it says), ``layout`` (paths, env file, step reporting, the lock), the parts
``redis_nodes``, ``redis_cluster``, ``postgres_host`` and ``postgres``, ``stack`` (the parts
composed) and ``cli``. What tests and benchmarks share: ``stacks`` (a stack of their own, migrated),
``serving`` (a gateway in its own process), ``cluster_ops`` (slot owners, moving slots) and
``rawhttp`` (a lean HTTP/1.1 client for load).
"""

from __future__ import annotations

# BUS_PORT_OFFSET, HOST and PRIMARY_COUNT are not in __all__ (not part of ``import *``), but the
# tests import them from here; ``X as X`` marks them re-exported for mypy --strict.
from devstack.cli import main
from devstack.config import BUS_PORT_OFFSET as BUS_PORT_OFFSET
from devstack.config import CLUSTER_SLOTS, NODE_COUNT, StackConfig
from devstack.config import HOST as HOST
from devstack.config import PRIMARY_COUNT as PRIMARY_COUNT
from devstack.errors import StackError
from devstack.ports import find_free_base_port, find_free_port
from devstack.stack import Stack

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
