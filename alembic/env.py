"""Alembic environment: async engine, URL and TLS from the gateway's settings (a bad setting is
one line naming its variable, as for ``cachegw serve``)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from app.config import ConfigError, load
from app.schema import metadata
from app.store import asyncpg_ssl

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

connect_args: dict[str, object] = {}
if not config.get_main_option("sqlalchemy.url"):
    try:
        pg = load().pg
    except ConfigError as exc:
        raise SystemExit("\n".join(f"cachegw: {problem}" for problem in exc.problems)) from None
    config.set_main_option("sqlalchemy.url", pg.sqlalchemy_url.replace("%", "%%"))
    connect_args = {"ssl": asyncpg_ssl(pg), "timeout": pg.connect_timeout_s}

target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
        connect_args=connect_args,
    )
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


def run_migrations_online() -> None:
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
