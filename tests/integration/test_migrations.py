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


def test_migrations_connect_with_the_gateways_tls_setting(stack: Stack) -> None:
    """``cachegw migrate`` connects as the gateway does: ssl_mode=require against this stack's
    Postgres (which has no TLS) is refused, as the gateway's own pool would be (the migrations
    used to ignore the setting and connect in the clear); a bad setting is one line."""
    env = {**os.environ, "CACHEGW_PG__DSN": stack.pg_dsn, "CACHEGW_PG__SSL_MODE": "require"}
    command = [sys.executable, "-m", "app.cli", "migrate", "up"]
    refused = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0
    assert "SSL" in refused.stderr or "ssl" in refused.stderr, refused.stderr[-2000:]
    env["CACHEGW_PG__SSL_MODE"] = "disable"
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    bad = subprocess.run(
        command, cwd=ROOT, env={**env, "CACHEGW_PG__SSL_MODE": "sometimes"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith("cachegw: CACHEGW_PG__SSL_MODE=sometimes: Input should be")
    ), bad.stderr
