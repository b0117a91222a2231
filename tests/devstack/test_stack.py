"""The local stack (devstack) against real redis-server and Postgres processes.

One stack is brought up for the module (random free ports, a pytest tmp dir) and purged at the
end; the tests run in file order and each leaves the stack healthy (the last one takes it down
and up again).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack import (
    BUS_PORT_OFFSET,
    CLUSTER_SLOTS,
    Stack,
    StackConfig,
    StackError,
    find_free_base_port,
    find_free_port,
    main,
)

pytestmark = pytest.mark.integration

DATABASE = "cachegw_it"


def _alive(pid: int) -> bool:
    """A live (or stopped) process; a zombie waiting to be reaped counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def _ping(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_cli(port: int, *args: str) -> str:
    proc = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return proc.stdout.strip()


def _free_pg_port(redis_base: int) -> int:
    taken = {redis_base + i for i in range(6)} | {
        redis_base + i + BUS_PORT_OFFSET for i in range(6)
    }
    return find_free_port(avoid=frozenset(taken))


def _pids(stack: Stack) -> dict[int, int | None]:
    return {port: stack.node_pid(port) for port in stack.redis_ports}


def _postmaster_pid(stack: Stack) -> object:
    postgres = stack.status()["postgres"]
    assert isinstance(postgres, dict)
    return postgres["pid"]


def _primaries(stack: Stack) -> list[dict[str, object]]:
    return [n for n in stack.cluster_nodes() if n["role"] == "primary" and n["slots"]]


@pytest.fixture(scope="module")
def stack_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmp dir the postgres user can reach (when we are root, Postgres runs as postgres).

    pytest makes its tmp dirs 0700; this one and its ancestors under pytest's own base get o+x
    for the module and their modes back afterwards (the stack opens up only its own root).
    """
    root = tmp_path_factory.mktemp("devstack")
    base = tmp_path_factory.getbasetemp().parent
    opened: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        for parent in [*reversed(root.parents), root]:
            if parent != base and base not in parent.parents:
                continue
            mode = parent.stat().st_mode & 0o7777
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
                opened.append((parent, mode))
    try:
        yield root
    finally:
        for parent, mode in reversed(opened):
            parent.chmod(mode)


@pytest.fixture(scope="module")
def stack(stack_root: Path) -> Iterator[Stack]:
    base = find_free_base_port()
    config = StackConfig(
        root=stack_root / "stack",
        redis_base_port=base,
        pg_port=_free_pg_port(base),
        cluster_node_timeout_ms=1000,
        pg_database=DATABASE,
    )
    devstack = Stack(config)
    try:
        devstack.up()
        yield devstack
    finally:
        devstack.down(purge=True)
    assert not (stack_root / "stack").exists()


def test_up_forms_three_shards_with_one_replica_each(stack: Stack) -> None:
    nodes = stack.cluster_nodes()
    assert sorted(int(str(n["port"])) for n in nodes) == stack.redis_ports
    primaries = [n for n in nodes if n["role"] == "primary"]
    replicas = [n for n in nodes if n["role"] == "replica"]
    assert len(primaries) == 3
    assert len(replicas) == 3

    ranges: list[tuple[int, int]] = []
    for primary in primaries:
        slots = primary["slots"]
        assert isinstance(slots, list)
        ranges.extend(slots)
    ranges.sort()
    covered = 0
    previous_end = -1
    for start, end in ranges:
        assert start == previous_end + 1, f"gap or overlap at slot {start}"
        covered += end - start + 1
        previous_end = end
    assert covered == CLUSTER_SLOTS

    assert sorted(str(r["primary_id"]) for r in replicas) == sorted(str(p["id"]) for p in primaries)

    report = stack.status()
    assert report["healthy"] is True
    assert report["cluster_problem"] is None
    redis_nodes = report["redis"]
    assert isinstance(redis_nodes, list)
    assert all(n["alive"] and n["cluster_state"] == "ok" for n in redis_nodes)
    assert sorted(str(n["role"]) for n in redis_nodes) == ["primary"] * 3 + ["replica"] * 3


async def test_postgres_is_ready_with_the_database(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.env()["CACHEGW_PG__DSN"], timeout=10)
    try:
        assert await conn.fetchval("SELECT current_database()") == DATABASE
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()


def test_up_again_is_harmless_and_fast(stack: Stack) -> None:
    nodes_before, postmaster_before = _pids(stack), _postmaster_pid(stack)
    assert None not in nodes_before.values()

    started = time.monotonic()
    stack.up()
    elapsed_s = time.monotonic() - started

    assert _pids(stack) == nodes_before
    assert _postmaster_pid(stack) == postmaster_before
    assert elapsed_s < 3.0, f"a second up took {elapsed_s:.2f} s"


def test_env_file_points_at_the_stack(stack: Stack) -> None:
    path = stack.write_env_file()
    assert path == stack.root / "env"
    lines = path.read_text().splitlines()
    parsed = dict(line.split("=", 1) for line in lines)
    assert parsed == stack.env()
    assert parsed["CACHEGW_REDIS__NODES"] == ",".join(f"127.0.0.1:{p}" for p in stack.redis_ports)
    assert parsed["CACHEGW_PG__DSN"] == (
        f"postgresql://postgres@127.0.0.1:{stack.config.pg_port}/{DATABASE}"
    )


def test_killed_primary_fails_over_and_rejoins_after_start_node(stack: Stack) -> None:
    victim = _primaries(stack)[0]
    port = int(str(victim["port"]))
    replica_port = next(
        int(str(n["port"])) for n in stack.cluster_nodes() if n["primary_id"] == victim["id"]
    )
    old_pid = stack.node_pid(port)
    assert old_pid is not None

    stack.kill_node(port)
    assert stack.node_pid(port) is None
    assert not _alive(old_pid)

    deadline = time.monotonic() + 20
    promoted = False
    while not promoted and time.monotonic() < deadline:
        promoted = any(int(str(p["port"])) == replica_port for p in _primaries(stack))
        if not promoted:
            time.sleep(0.2)
    assert promoted, f"replica {replica_port} was not promoted after {port} was killed"

    stack.start_node(port)
    assert stack.node_pid(port) not in (None, old_pid)
    stack.wait_cluster_ok(timeout_s=30)
    rejoined = next(n for n in stack.cluster_nodes() if n["port"] == port)
    assert rejoined["id"] == victim["id"]  # the same node, back from its nodes.conf
    assert rejoined["role"] == "replica"


def test_paused_node_is_silent_until_resumed(stack: Stack) -> None:
    port = next(int(str(n["port"])) for n in stack.cluster_nodes() if n["role"] == "replica")
    pid = stack.node_pid(port)
    stack.pause_node(port)
    try:
        assert not _ping(port, timeout_s=0.3)
        assert stack.node_pid(port) == pid  # paused, not gone
    finally:
        stack.resume_node(port)
    assert _ping(port)
    stack.wait_cluster_ok(timeout_s=30)


def test_up_repairs_a_node_that_left_the_cluster(stack: Stack) -> None:
    port = next(int(str(n["port"])) for n in stack.cluster_nodes() if n["role"] == "replica")
    assert _redis_cli(port, "CLUSTER", "RESET", "HARD") == "OK"
    with pytest.raises(StackError, match="not ok"):
        stack.wait_cluster_ok(timeout_s=0.5)

    stack.up()

    assert stack.status()["healthy"] is True
    nodes = stack.cluster_nodes()
    assert sorted(int(str(n["port"])) for n in nodes) == stack.redis_ports
    assert len(_primaries(stack)) == 3


def test_up_forms_a_cluster_from_nodes_that_were_never_joined(
    stack: Stack, stack_root: Path
) -> None:
    """The state left by an interrupted first ``up``: nodes run, ``--cluster create`` never ran.

    This stack uses the module stack's Postgres as an external one, so it starts none of its own
    and must not stop that one on ``down``.
    """
    base = find_free_base_port()
    other = Stack(
        StackConfig(
            root=stack_root / "other",
            redis_base_port=base,
            cluster_node_timeout_ms=1000,
            external_pg_dsn=stack.pg_dsn,
        )
    )
    try:
        for port in other.redis_ports:
            other.start_node(port)
        assert all(_ping(port) for port in other.redis_ports)
        with pytest.raises(StackError):
            other.wait_cluster_ok(timeout_s=0.3)

        other.up()

        assert other.status()["healthy"] is True
        assert len(_primaries(other)) == 3
        assert other.env()["CACHEGW_PG__DSN"] == stack.pg_dsn
        assert not (other.root / "pg").exists()
    finally:
        other.down(purge=True)
    assert all(other.node_pid(port) is None for port in other.redis_ports)
    assert not (stack_root / "other").exists()
    assert stack.status()["healthy"] is True  # the module stack, its Postgres included


def test_cli_status_and_errors(
    stack: Stack,
    stack_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("CACHEGW_PG__DSN", raising=False)
    args = [
        "--dir",
        str(stack.root),
        "--redis-base-port",
        str(stack.config.redis_base_port),
        "--pg-port",
        str(stack.config.pg_port),
    ]
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "healthy" in out
    assert "NOT" not in out

    bad = stack_root / "bad"
    assert main(["up", "--dir", str(bad), "--redis-base-port", "65000"]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err
    assert "Traceback" not in err
    assert not bad.exists()


def test_down_stops_exactly_our_processes_and_keeps_data(stack: Stack) -> None:
    system_redis = _ping(6379)
    system_pg = _accepts_tcp(5432)
    node_pids = _pids(stack)
    postmaster = _postmaster_pid(stack)
    assert isinstance(postmaster, int)
    ours = [pid for pid in node_pids.values() if pid is not None] + [postmaster]
    assert len(ours) == 7
    ids_before = {n["port"]: n["id"] for n in stack.cluster_nodes()}

    # A process that is not ours, behind a stale pidfile, must survive down and up.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        stack.down()

        assert not [pid for pid in ours if _alive(pid)]
        assert all(stack.node_pid(port) is None for port in stack.redis_ports)
        assert not _accepts_tcp(stack.config.pg_port)
        for port in stack.redis_ports:
            node_dir = stack.root / "redis" / str(port)
            assert (node_dir / "nodes.conf").is_file()
            assert not (node_dir / "redis.pid").exists()
        assert (stack.root / "pg" / "data" / "PG_VERSION").is_file()
        assert not (stack.root / "pg" / "data" / "postmaster.pid").exists()
        assert _ping(6379) == system_redis
        assert _accepts_tcp(5432) == system_pg

        stale = stack.root / "redis" / str(stack.redis_ports[0]) / "redis.pid"
        stale.write_text(f"{bystander.pid}\n")
        assert stack.node_pid(stack.redis_ports[0]) is None
        stack.down()
        assert bystander.poll() is None

        stack.up()  # back from the data dir: the same nodes, no new cluster
        assert bystander.poll() is None
        assert stack.status()["healthy"] is True
        assert {n["port"]: n["id"] for n in stack.cluster_nodes()} == ids_before
    finally:
        bystander.kill()
        bystander.wait(timeout=10)
