"""A request id on every answer, as real providers give one (Stripe's `Request-Id`,
Sumsub's `correlationId`): what a client keeps of a failed call instead of its body."""

from __future__ import annotations

import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_BYTES = 12


def new_request_id() -> str:
    return f"req_{secrets.token_hex(REQUEST_ID_BYTES)}"


class RequestIdMiddleware:
    """Adds `X-Request-Id` to every HTTP response, faults and replays included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
