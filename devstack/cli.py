"""The command line: ``python -m devstack up|down|status``."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from app.config import mask_dsn
from devstack.config import StackConfig
from devstack.errors import StackError
from devstack.stack import Stack


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
        prog="python -m devstack",
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
        pg_port = _env_int("CACHEGW_DEVSTACK_PG_PORT", 15432)
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
            print(f"postgres: {mask_dsn(stack.pg_dsn)}")
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
