"""``cachegw``: the project's command (serve, migrate, keys, config)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dotenv import load_dotenv

from app import config, keys_cli
from app.settings import Settings

DEFAULT_ENV_FILE = Path(".devstack/env")


def _env_file(arg: str | None) -> None:
    """Load a dotenv file (python-dotenv's parser: ``export``, quotes, escapes, comments); a
    variable already in the environment wins."""
    path = Path(arg) if arg else DEFAULT_ENV_FILE
    if path.is_file():
        load_dotenv(path, override=False)
    elif arg:
        raise SystemExit(f"cachegw: env file {path} not found")


def _settings() -> Settings:
    """The settings, or an exit with one line per bad value (no traceback); typos warned of."""
    for warning in config.unknown_variables():
        print(f"cachegw: warning: {warning}", file=sys.stderr)
    try:
        return config.load()
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"cachegw: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    _env_file(args.env_file)
    server = _settings().server
    metrics_dir = _multiprocess_metrics(args.workers)
    try:
        uvicorn.run(
            "app.main:serving_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            log_level="info",
            log_config=None,  # the app logs JSON (app/logs.py), uvicorn's lines included
            access_log=False,
            timeout_graceful_shutdown=server.graceful_timeout_s,
            timeout_keep_alive=server.keep_alive_s,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _multiprocess_metrics(workers: int) -> Path | None:
    """With several workers, metrics are summed over them (prometheus multiprocess mode).

    The directory must be set before the workers import prometheus_client; they inherit it.
    Returns the directory made here (to remove afterwards), or None.
    """
    if workers <= 1:
        return None
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        for stale in Path(existing).glob("*.db"):  # left by processes of an earlier run
            stale.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="cachegw-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def migrate(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.config import Config

    _env_file(args.env_file)
    _settings()
    alembic = Config(str(_alembic_ini()))
    if args.direction == "up":
        command.upgrade(alembic, args.revision or "head")
    else:
        command.downgrade(alembic, args.revision or "base")
    return 0


def _alembic_ini() -> Path:
    """The migrations' alembic.ini: the checkout's (beside app/), else the working directory's
    (the image's /app); the wheel alone carries no migrations."""
    for candidate in (Path(__file__).resolve().parent.parent / "alembic.ini", Path("alembic.ini")):
        if candidate.is_file():
            return candidate
    raise SystemExit(
        "cachegw: no alembic.ini here: run cachegw migrate from the repository or the image's "
        "/app, where the migrations are"
    )


def keys(args: argparse.Namespace) -> int:
    _env_file(args.env_file)
    return keys_cli.run(args, _settings())


def config_command(args: argparse.Namespace) -> int:
    """check: usable or not, and the targets; show: every value in force and its source;
    reference: the Markdown reference (docs/configuration.md)."""
    if args.action == "reference":
        print(config.reference(), end="")
        return 0
    _env_file(args.env_file)
    settings = _settings()
    if args.action == "show":
        rows = config.show(settings)
        width = max(len(variable) for variable, _, _ in rows)
        for variable, value, source in rows:
            print(f"{variable:<{width}}  {value}  ({source})")
        return 0
    for name, target in config.targets(settings).items():
        print(f"{name}: {target}")
    print("cachegw: configuration OK")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cachegw")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Every subcommand names its handler (``set_defaults(handler=...)``); main only calls it."""
    parser = argparse.ArgumentParser(
        prog="cachegw",
        description="The cachegw cache gateway. Settings: CACHEGW_* variables "
        "(docs/configuration.md; `cachegw config show`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the gateway with uvicorn")
    p_serve.add_argument(
        "--host",
        default=os.environ.get("HOST", "127.0.0.1"),
        help="address to bind (HOST; default %(default)s)",
    )
    p_serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="port (PORT; default %(default)s)",
    )
    p_serve.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS", "1")),
        help="worker processes (WORKERS; default %(default)s); metrics are summed over them",
    )
    p_serve.add_argument(
        "--env-file", help=f"dotenv file to load (default {DEFAULT_ENV_FILE} if present)"
    )
    p_serve.set_defaults(handler=serve)

    p_migrate = sub.add_parser("migrate", help="apply (up) or revert (down) migrations")
    p_migrate.add_argument("direction", choices=["up", "down"], nargs="?", default="up")
    p_migrate.add_argument(
        "revision",
        nargs="?",
        default=None,
        help="target revision (default: head for up, base for down)",
    )
    p_migrate.add_argument(
        "--env-file", help=f"dotenv file (default {DEFAULT_ENV_FILE} if present)"
    )
    p_migrate.set_defaults(handler=migrate)

    keys_cli.add_parser(sub).set_defaults(handler=keys)

    p_config = sub.add_parser("config", help="check, show or document the configuration")
    p_config.add_argument(
        "action",
        choices=["check", "show", "reference"],
        help="check: usable, and its targets; show: every value and its source; reference: "
        "the Markdown reference",
    )
    p_config.add_argument("--env-file", help=f"dotenv file (default {DEFAULT_ENV_FILE} if present)")
    p_config.set_defaults(handler=config_command)

    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
