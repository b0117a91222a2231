"""Migrations go up and down on an empty database, and match the models alembic compares."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from devstack import Stack
from tests.integration.conftest import ROOT


def run_alembic(dsn: str, *args: str) -> str:
    env = {**os.environ, "CACHEGW_PG__DSN": dsn}
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


async def tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "UNION SELECT proname FROM pg_proc WHERE proname LIKE 'cachegw_%' "
            "UNION SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
        )
        return {row[0] for row in rows}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade_and_no_drift(stack: Stack) -> None:
    database = f"migrations_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.pg_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    parts = urlsplit(stack.pg_dsn)
    dsn = urlunsplit(parts._replace(path=f"/{database}"))
    try:
        run_alembic(dsn, "upgrade", "head")
        expected = {
            "entries", "cache_outbox", "alembic_version", "entry_version_seq",
            "cachegw_put", "cachegw_delete", "cachegw_invalidate", "cachegw_touch",
        }  # fmt: skip
        assert expected <= await tables(dsn)
        assert "No new upgrade operations detected" in run_alembic(dsn, "check")
        run_alembic(dsn, "downgrade", "base")
        assert await tables(dsn) <= {"alembic_version"}
        run_alembic(dsn, "upgrade", "head")
        assert expected <= await tables(dsn)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
