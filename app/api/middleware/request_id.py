"""Every HTTP answer carries a request id, and so does every log line of the request."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs


class RequestIdMiddleware:
    """The caller's ``X-Request-ID`` if it is sane (the last one sent), else a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value
        request_id = logs.new_request_id(offered)
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        token = logs.REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.REQUEST_ID.reset(token)
