"""No secret and no stored value reaches the logs, the spans or any answer's body.

The gateway runs as its own process with a Redis ACL user and password (created on every node for
the test), a Postgres DSN carrying a password, DEBUG logs and every span written to stdout. After
a round of reads, writes and failures, its whole output and every body it answered are searched
for the secrets and the value.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack import Stack
from devstack.cluster_ops import redis_cli
from tests.integration.conftest import TEST_KEY
from tests.integration.harness import gateway_process

USER = "cachegw-secrets-test"


@pytest.fixture
def redis_password(stack: Stack) -> Iterator[str]:
    """A Redis ACL user on every node (ACLs are per node), removed afterwards."""
    password = "redis-pw-" + secrets.token_hex(8)
    ports = [p for p in stack.redis_ports if stack.node_pid(p) is not None]
    try:
        for port in ports:
            redis_cli(port, "ACL", "SETUSER", USER, "reset", "on", f">{password}", "~*", "+@all")
        yield password
    finally:
        for port in ports:
            redis_cli(port, "ACL", "DELUSER", USER)


def test_no_secret_or_value_in_logs_spans_or_bodies(
    stack: Stack, redis_password: str, tmp_path: Path
) -> None:
    pg_password = "pg-pw-" + secrets.token_hex(8)
    dsn = stack.env()["CACHEGW_PG__DSN"].replace("://postgres@", f"://postgres:{pg_password}@")
    assert pg_password in dsn
    value = b"value-" + secrets.token_hex(8).encode()
    wrong_token = "cg_abcdefgh_" + secrets.token_hex(16)
    token = TEST_KEY[0]
    env = {
        "CACHEGW_REDIS__USERNAME": USER,
        "CACHEGW_REDIS__PASSWORD": redis_password,
        "CACHEGW_PG__DSN": dsn,
        "CACHEGW_LOG_LEVEL": "DEBUG",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    with (
        gateway_process(stack, tmp_path, **env) as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        key = "/v1/keys/secrets-" + secrets.token_hex(4)
        calls = [
            client.put(key, content=value),
            client.get(key),
            client.get(key, headers={"Cache-Control": "no-cache"}),
            client.put(key, content=value + b"-cas", headers={"If-Match": '"999999999999"'}),
            client.put(key, content=value, headers={"If-Match": "not-an-etag"}),
            client.put(key, content=value, params={"ttl": "-1"}),
            client.put(key, content=value * 200_000),
            client.get(key, params={"explain": "true"}),
            client.get(key, headers={"Authorization": f"Bearer {wrong_token}"}),
            client.get(key, headers={"Authorization": f"Basic {wrong_token}"}),
            client.get("/v1/admin"),
            client.get("/v1/admin/topology"),
            client.get("/v1/admin/breakers"),
            client.get("/metrics"),
            client.get("/readyz"),
            client.delete(key),
        ]
        statuses = [r.status_code for r in calls]
        bodies = [r.content for r in calls] + [repr(dict(r.headers)).encode() for r in calls]
        # The gateway reached Redis as the ACL user, so the password was really used.
        ports = [p for p in stack.redis_ports if stack.node_pid(p) is not None]
        users = "".join(redis_cli(p, "CLIENT", "LIST") for p in ports)
    assert statuses[:3] == [201, 200, 200], statuses
    assert statuses[3:8] == [412, 400, 422, 413, 200], statuses
    assert statuses[8:10] == [401, 401], statuses
    assert f"user={USER}" in users, users[:2000]
    output = next(tmp_path.glob("gateway-*.log")).read_bytes()
    assert b'"name": "PUT /v1/keys/{key}"' in output, "no span was written"
    assert b"GET /v1/keys/{key}" in output
    for secret in (redis_password, pg_password, token, token.split("_", 2)[2], wrong_token):
        assert secret.encode() not in output, secret
        for body in bodies:
            assert secret.encode() not in body, (secret, body[:300])
    assert value not in output
    reads = {1, 2}  # the two GETs answer the value itself, as they should
    for i, response in enumerate(calls):
        if i not in reads:
            assert value not in response.content, (statuses[i], response.content[:300])
        assert value not in repr(dict(response.headers)).encode()
