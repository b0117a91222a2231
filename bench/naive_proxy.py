"""The naive proxy a team writes first: FastAPI over redis-py's ``RedisCluster``, cache-aside.

Kept deliberately plain, with redis-py's defaults, as the baseline the gateway is measured
against. GET reads Redis, and on a miss Postgres, then fills Redis; PUT writes Postgres, then
Redis; POST /v1/batch (gets only) loops over its keys, one Redis read after the other. Run:
``uvicorn bench.naive_proxy:create_app --factory`` with ``CACHEGW_REDIS__NODES`` and
``CACHEGW_PG__DSN`` set (the same variables as the gateway).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from redis.asyncio.cluster import ClusterNode, RedisCluster


def create_app() -> FastAPI:
    nodes = [n.rsplit(":", 1) for n in os.environ["CACHEGW_REDIS__NODES"].split(",")]
    dsn = os.environ["CACHEGW_PG__DSN"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = RedisCluster(startup_nodes=[ClusterNode(h, int(p)) for h, p in nodes])
        app.state.pg = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        await app.state.pg.execute(
            "CREATE TABLE IF NOT EXISTS naive_entries (key text PRIMARY KEY, value bytea NOT NULL)"
        )
        yield
        await app.state.redis.aclose()
        await app.state.pg.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/keys/{key}")
    async def get_key(key: str, request: Request) -> Response:
        redis: RedisCluster = request.app.state.redis
        value = await redis.get(f"naive:{key}")
        if value is None:
            value = await request.app.state.pg.fetchval(
                "SELECT value FROM naive_entries WHERE key = $1", key
            )
            if value is None:
                return Response(status_code=404)
            await redis.set(f"naive:{key}", value)
        return Response(value, media_type="application/octet-stream")

    @app.put("/v1/keys/{key}")
    async def put_key(key: str, request: Request) -> Response:
        value = await request.body()
        await request.app.state.pg.execute(
            "INSERT INTO naive_entries (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            key,
            value,
        )
        await request.app.state.redis.set(f"naive:{key}", value)
        return Response(status_code=200)

    @app.post("/v1/batch")
    async def batch(request: Request) -> Response:
        """The batch a team writes first: a loop of single-key reads, one after the other."""
        results = []
        for op in (await request.json())["ops"]:
            value = await request.app.state.redis.get(f"naive:{op['key']}")
            if value is None:
                results.append({"status": 404})
            else:
                results.append({"status": 200, "value": base64.b64encode(value).decode()})
        return Response(json.dumps({"results": results}), media_type="application/json")

    return app
