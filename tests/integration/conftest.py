"""The real local stack for integration tests: its own Redis Cluster and Postgres on free ports.

One stack per test session (about 4 s to bring up), migrated to head. Tests that break it (kill
or pause nodes, move slots) use ``healthy_stack``, which puts every node back and waits until the
cluster is ok again before the next test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Receive, Scope, Send

from app.gateway import Gateway
from app.main import create_app
from app.settings import Settings
from devstack import Stack
from devstack.stacks import full_stack
from tests.integration.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


# The API key every test client sends unless a test says otherwise (made with the stack).
TEST_KEY: list[str] = [""]


def cli(stack: Stack, *args: str) -> str:
    """``cachegw <args>`` against the stack; its standard output."""
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, env={**os.environ, **stack.env()},
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc.stdout


def create_key(stack: Stack, namespace: str, scopes: str, *extra: str) -> str:
    """A new API key, made with the project's own command."""
    output = cli(stack, "keys", "create", "--namespace", namespace, "--scopes", scopes, *extra)
    return output.strip().splitlines()[-1]


def auth_headers(key: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or TEST_KEY[0]}"}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="cachegw-it-"))
    root.chmod(0o755)  # Postgres runs as the postgres user when the tests run as root
    try:
        with full_stack(root / "stack") as stack:
            TEST_KEY[0] = create_key(stack, "default", "read,write,admin")
            yield stack
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def healthy_stack(stack: Stack) -> Iterator[Stack]:
    """The stack, restored after the test: every node running and the cluster ok."""
    yield stack
    for port in stack.redis_ports:
        if stack.node_pid(port) is not None:
            stack.resume_node(port)
    stack.up()
    stack.wait_cluster_ok(timeout_s=60)


def settings_for(stack: Stack, **overrides: Any) -> Settings:
    env = stack.env()
    values: dict[str, Any] = {
        "redis": {"nodes": env["CACHEGW_REDIS__NODES"]},
        "pg": {"dsn": env["CACHEGW_PG__DSN"]},
    }
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    return Settings(**values)


@asynccontextmanager
async def gateway_client(
    settings: Settings, *, api_key: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """An in-process gateway (lifespan run) and an HTTP client for it, sending an API key."""
    app = create_app(settings)
    state: dict[str, Any] = {}  # what the lifespan yields, as a server keeps it

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = state
        await app(scope, receive, send)

    async with LifespanManager(served, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=served)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=auth_headers(api_key)
        ) as client:
            yield client, state["gateway"]


ClientFactory = Callable[..., Any]


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway_client(settings_for(stack)) as (http, _):
        yield http


@pytest.fixture
async def gw(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    async with gateway_client(settings_for(stack)) as pair:
        yield pair


@pytest.fixture
async def pg_proxy(stack: Stack) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the stack's Postgres (point a gateway at ``proxy.dsn(...)``)."""
    parts = urlsplit(stack.pg_dsn)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
