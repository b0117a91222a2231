"""API keys: who is calling, whether the key's scopes allow the operation, and its rate."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app import telemetry
from app.api.deps import PRINCIPAL, gateway_in
from app.api.problems import error_response
from app.errors import AccessError, AuthUnavailableError

ANY_SCOPE = "any"  # a batch: each op checks its own scope


def required_scope(scope: Scope, *, protect_metrics: bool) -> str | None:
    """The scope a request needs: None for the open endpoints (health, docs, schema);
    ``ANY_SCOPE`` for a batch, whose ops each need their own (``app/api/batch.py``)."""
    path: str = scope["path"]
    if path == "/v1/batch":
        return ANY_SCOPE
    if path.startswith("/v1/keys/"):
        return "read" if scope["method"] in ("GET", "HEAD") else "write"
    if path.startswith("/v1/admin"):
        return "admin"
    if path == "/metrics" and protect_metrics:
        return "admin"
    return None


class AuthenticationMiddleware:
    """Sets ``scope[PRINCIPAL]``, or answers 401, 403, 429 or 503 (keys unreadable)."""

    def __init__(self, app: ASGIApp, *, protect_metrics: bool) -> None:
        self.app = app
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope, protect_metrics=self.protect_metrics)
        if needed is not None:
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
            auth = gateway_in(scope).auth
            try:
                principal = auth.verified(authorization) or await auth.authenticate(authorization)
                if needed != ANY_SCOPE:
                    principal.require(needed)
                if not auth.admit(principal):
                    await auth.admit_shared(principal)
            except (AccessError, AuthUnavailableError) as exc:
                telemetry.AUTH_REFUSALS.labels(reason=type(exc).__name__).inc()
                await error_response(exc, instance=scope["path"])(scope, receive, send)
                return
            scope[PRINCIPAL] = principal
        await self.app(scope, receive, send)
