"""Requests over the header or target limits are refused before anything reads them."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import error_response
from app.errors import HeadersTooLargeError, RequestError, TargetTooLongError


class SizeLimitMiddleware:
    """431 when the headers together, 414 when the path and query, exceed their limits."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int, max_target_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_target_bytes = max_target_bytes

    def refusal(self, scope: Scope) -> RequestError | None:
        header_bytes = 0
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
        if header_bytes > self.max_header_bytes:
            return HeadersTooLargeError(
                f"the headers are {header_bytes} bytes; the limit is {self.max_header_bytes}"
            )
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if target > self.max_target_bytes:
            return TargetTooLongError(
                f"the path and query are {target} bytes; the limit is {self.max_target_bytes}"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (refused := self.refusal(scope)) is not None:
            response = error_response(refused, instance=scope["path"][:200])
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
