"""What the lifespan hands to every request: the gateway, as typed ASGI state.

The lifespan (``app/main.py``) yields ``{"gateway": ...}``; the server copies it into every
request's ``scope["state"]`` (starlette's ``docs/lifespan.md``), so nothing here is a global and
the edge middleware, the key operations and the FastAPI routes all read the same object.
"""

from __future__ import annotations

from typing import TypedDict

from fastapi import Request
from starlette.types import Scope

from app.gateway import Gateway

PRINCIPAL = "cachegw.principal"  # set by the authentication middleware, read by the handlers


class State(TypedDict):
    gateway: Gateway


def gateway_in(scope: Scope) -> Gateway:
    gateway: Gateway = scope["state"]["gateway"]
    return gateway


def gateway_of(request: Request) -> Gateway:
    return gateway_in(request.scope)
