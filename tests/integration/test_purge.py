"""The purge of expired entries never deletes a write that revived one .

Shown with two connections on two real Postgres builds: the one installed here, and 16.2 (from
the ``pgserver`` wheel), an older minor whose EvalPlanQual recheck of a TID scan does nothing.
There the old purge statement (``DELETE ... WHERE ctid = ANY(...)``) deleted the new row of a PUT
that committed while the purge waited for its row lock.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from app.settings import PostgresSettings
from app.store import Store
from devstack import Stack
from devstack.stacks import postgres_only

BULK_ROWS = 50_000  # enough rows for the planner to choose a TID scan for the purge


@pytest.fixture(scope="module")
def postgres_16_2() -> Iterator[str]:
    """A private Postgres 16.2 (the pgserver wheel's build), migrated; its DSN."""
    root = Path(tempfile.mkdtemp(prefix="cachegw-pg162-"))
    root.chmod(0o755)  # the postgres user runs the binaries and owns the data
    spec = importlib.util.find_spec("pgserver")  # found, not imported (its import has side effects)
    assert spec is not None
    assert spec.submodule_search_locations
    package = Path(spec.submodule_search_locations[0])
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: keep that layout.
    build = root / "pgserver" / "pginstall"
    shutil.copytree(package / "pginstall", build)
    shutil.copytree(package.parent / "pgserver.libs", root / "pgserver.libs")
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    try:
        with postgres_only(root / "stack", pg_bin=build / "bin") as stack:
            yield stack.pg_dsn
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["installed", "16.2"])
def dsn(request: pytest.FixtureRequest, stack: Stack) -> str:
    if request.param == "installed":
        return stack.pg_dsn
    value: str = request.getfixturevalue("postgres_16_2")
    return value


async def wait_until_blocked_or_done(conn: asyncpg.Connection, task: asyncio.Task[int]) -> None:
    """Until the purge waits on a row lock (or has finished without waiting); bounded."""
    deadline = time.monotonic() + 10
    while not task.done() and time.monotonic() < deadline:
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%DELETE FROM entries%' AND pid <> pg_backend_pid()"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    assert task.done() or time.monotonic() < deadline, "the purge neither blocked nor finished"


async def test_a_put_reviving_an_expired_entry_during_a_purge_keeps_its_row(dsn: str) -> None:
    writer = await asyncpg.connect(dsn)
    store = Store(PostgresSettings(dsn=dsn))
    await store.start()
    try:
        await writer.execute("DELETE FROM entries WHERE namespace IN ('purge', 'purge-bulk')")
        await writer.execute(
            "INSERT INTO entries (namespace, key, value, content_type, version, cache_seq) "
            "SELECT 'purge-bulk', 'k' || g, 'x', 'text/plain', g, g "
            "FROM generate_series(1, $1::int) g",
            BULK_ROWS,
        )
        await writer.execute("ANALYZE entries")
        # The key, written with a 1 ms ttl: expired, not yet purged.
        await writer.fetch(
            "SELECT * FROM cachegw_put('purge','k','v1','text/plain',1,NULL,false,false)"
        )
        await asyncio.sleep(0.05)
        # A PUT revives it and holds its row lock until COMMIT; the purge runs meanwhile.
        transaction = writer.transaction()
        await transaction.start()
        await writer.fetch(
            "SELECT * FROM cachegw_put('purge','k','v2','text/plain',NULL,NULL,false,false)"
        )
        loop = asyncio.get_running_loop()
        purge = asyncio.create_task(store.purge_expired(limit=1000, deadline=loop.time() + 30))
        observer = await asyncpg.connect(dsn)
        try:
            await wait_until_blocked_or_done(observer, purge)
        finally:
            await observer.close()
        await transaction.commit()  # the client of this PUT is told 200: it must stay
        await purge
        value = await writer.fetchval(
            "SELECT value FROM entries WHERE namespace = 'purge' AND key = 'k'"
        )
        assert value == b"v2"
    finally:
        await writer.execute("DELETE FROM entries WHERE namespace IN ('purge', 'purge-bulk')")
        await writer.close()
        await store.aclose()
