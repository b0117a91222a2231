"""HTTP metrics of the routes FastAPI serves, through prometheus-fastapi-instrumentator.

The key operations never reach FastAPI; ``dispatch.py`` records the same series for them.
``/metrics`` itself is served here.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator, metrics

from app import telemetry


def _record(info: metrics.Info) -> None:
    status = info.response.status_code if info.response else 500  # no answer: it failed
    telemetry.record_http(info.modified_handler, info.method, status, info.modified_duration)


def install(app: FastAPI) -> None:
    Instrumentator(excluded_handlers=["/metrics"]).add(_record).instrument(app).expose(
        app, include_in_schema=False
    )
