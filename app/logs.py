"""Structured logs: one JSON object per line (structlog), with the request id on every line;
on a terminal (``log_format`` auto), structlog's console renderer instead, for people to read.

Both structlog loggers and the standard library's (``logging.getLogger(__name__)``, used across
the gateway) go through the same processors. Nothing logs a value, a key or a secret: messages
name tiers, nodes and error types.
"""

from __future__ import annotations

import logging
import random
import re
import sys
from contextvars import ContextVar
from typing import Any, Literal

import structlog

REQUEST_ID: ContextVar[str | None] = ContextVar("cachegw_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(offered: bytes | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh random one."""
    if offered is not None:
        text = offered.decode("latin-1")
        if _VALID_REQUEST_ID.match(text):
            return text
    return f"{random.getrandbits(64):016x}"  # unique enough for correlation; not a secret


def _add_request_id(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def configure(
    level: str,
    *,
    access_log: bool = False,
    log_format: Literal["auto", "json", "console"] = "json",
) -> None:
    """Route every log record through structlog's JSON renderer, or its console renderer when
    ``log_format`` is console, or auto and stderr (where the lines go) is a terminal
    (idempotent).

    uvicorn writes an access line only while its ``uvicorn.access`` logger has a handler
    (checked per connection): without ``access_log`` it gets none, not even the root's.
    """
    console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_id,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    handler.set_name("cachegw-json")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "cachegw-json"] + [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = name != "uvicorn.access" or access_log
