"""What the gateway takes in, before any route sees a request.

A request costs the gateway nothing it has not earned:

- its arrival is stamped when its first byte is read (by the server's
  protocol, see starters/gateway/server.py), so the issuer's real-time budget
  and `cardflow_authorization_seconds` count the time a request waited
  before its handler ran;
- a `/v1` request's API key is checked before one byte of its body is read:
  a request without a valid key is answered 401 and its connection closed,
  whatever body it announces;
- every body has a cap by route (`/v1`: `CARDFLOW_API_BODY_BYTES_MAX`,
  webhooks 256 KiB, the issuer's real-time requests 64 KiB, anything else
  64 KiB): a Content-Length over it is a 413 before the body is read, a body
  streamed past it is cut off there with a 413;
- a body must arrive within `CARDFLOW_GATEWAY_BODY_TIMEOUT_SECONDS` of its
  headers, else 408 (the headers' own deadline is the server's).

Refusals of webhooks and real-time requests count in the rejections metric
(`too_large`, `too_slow`) under their provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import asyncpg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.providers import ISSUER
from starters.gateway.api import ApiError
from starters.gateway.auth import (
    KEY_STORE_RETRY_AFTER_SECONDS,
    UNAUTHENTICATED_DETAIL,
    api_guard,
)
from starters.gateway.realtime import REALTIME_AUTHORIZATION_PATH, REALTIME_BODY_BYTES_MAX
from starters.gateway.server import ARRIVED_AT
from starters.gateway.webhooks import WEBHOOK_BODY_BYTES_MAX

log = logging.getLogger("cardflow.gateway.intake")

API_PREFIX = "/v1/"
WEBHOOK_PREFIX = "/webhooks/"
OTHER_BODY_BYTES_MAX = 64 * 1024


class BodyRefused(ApiError):
    """A body over its cap or too slow: the route's body read raises it, and
    the app's error handler answers it (and the connection closes)."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(status_code, code, detail, headers={"connection": "close"})


def _provider(path: str) -> str | None:
    """The provider whose signed requests arrive on `path`, if any."""
    if path == REALTIME_AUTHORIZATION_PATH:
        return ISSUER
    if path.startswith(WEBHOOK_PREFIX):
        return path[len(WEBHOOK_PREFIX) :].split("/", 1)[0] or None
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


class Intake:
    """The ASGI middleware that applies the module's rules (outermost but
    for Starlette's own error handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def body_bytes_max(self, scope: Scope) -> int:
        path: str = scope["path"]
        if path.startswith(API_PREFIX):
            return int(scope["app"].state.settings.api_body_bytes_max)
        if path == REALTIME_AUTHORIZATION_PATH:
            return REALTIME_BODY_BYTES_MAX
        if path.startswith(WEBHOOK_PREFIX):
            return WEBHOOK_BODY_BYTES_MAX
        return OTHER_BODY_BYTES_MAX

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state.setdefault(ARRIVED_AT, time.monotonic())
        path: str = scope["path"]
        if path.startswith(API_PREFIX):
            refusal = await self._key_refusal(scope)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        limit = self.body_bytes_max(scope)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "bad_content_length", "Content-Length is not a number")
                return
            if int(length) > limit:
                self._count(scope, "too_large")
                await _answer(
                    send, 413, "body_too_large", f"the request body is over {limit} bytes"
                )
                return
        timeout = float(scope["app"].state.settings.gateway_body_timeout_seconds)
        await self.app(scope, _LimitedReceive(self, scope, receive, limit, timeout), send)

    async def _key_refusal(
        self, scope: Scope
    ) -> tuple[int, str | None, str, dict[str, str]] | None:
        """401 (or 503) for a `/v1` request without a valid key, the very
        answer of the route's own check; None to go on. The route checks the
        key again with its scope (a known key is cached)."""
        authorization = _header(scope, b"authorization") or b""
        scheme, _, presented = authorization.decode("latin-1").partition(" ")
        key = presented.strip() if scheme.lower() == "bearer" and presented.strip() else None
        try:
            principal = await api_guard(scope["app"]).verifier.verify(key)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return (
                503,
                None,
                "API keys cannot be checked right now; try again",
                {"retry-after": str(KEY_STORE_RETRY_AFTER_SECONDS)},
            )
        if principal is not None:
            return None
        challenge = 'Bearer realm="cardflow"'
        if key is not None:
            challenge += ', error="invalid_token"'
        return 401, None, UNAUTHENTICATED_DETAIL, {"www-authenticate": challenge}

    def _count(self, scope: Scope, reason: str) -> None:
        provider = _provider(scope["path"])
        if provider is None:
            return
        app_state: Any = scope["app"].state
        known = provider if provider in app_state.webhook_secrets else "unknown"
        metrics = getattr(app_state, "metrics", None)
        if metrics is not None:
            metrics.rejected(known, reason)


class _LimitedReceive:
    """`receive`, refusing a body past `limit` bytes or `timeout` seconds."""

    def __init__(
        self, intake: Intake, scope: Scope, receive: Receive, limit: int, timeout: float
    ) -> None:
        self._intake = intake
        self._scope = scope
        self._receive = receive
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._timeout = timeout
        self._received = 0
        self._body_done = False

    async def __call__(self) -> Message:
        if self._body_done:
            # After the body only a disconnect can come: no deadline for it.
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            self._intake._count(self._scope, "too_slow")
            raise BodyRefused(
                408, "body_too_slow", f"the request body did not arrive within {self._timeout:g} s"
            ) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self._intake._count(self._scope, "too_large")
                raise BodyRefused(
                    413, "body_too_large", f"the request body is over {self._limit} bytes"
                )
            self._body_done = not message.get("more_body", False)
        return message


async def _answer(
    send: Send, status: int, code: str | None, detail: str, headers: dict[str, str] | None = None
) -> None:
    """A JSON refusal sent before the body is read; the connection closes."""
    refusal = {"detail": detail} if code is None else {"detail": detail, "code": code}
    body = json.dumps(refusal).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw += [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
