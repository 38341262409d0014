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

import asyncpg
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.providers import ISSUER
from starters.gateway.auth import UNAUTHENTICATED_DETAIL, api_guard, key_store_unavailable
from starters.gateway.errors import ApiError, GatewayCode
from starters.gateway.realtime import REALTIME_AUTHORIZATION_PATH, REALTIME_BODY_BYTES_MAX
from starters.gateway.server import ARRIVED_AT
from starters.gateway.state import metrics_of, secrets_of, settings_of
from starters.gateway.webhooks import WEBHOOK_BODY_BYTES_MAX

log = logging.getLogger("cardflow.gateway.intake")

API_PREFIX = "/v1/"
WEBHOOK_PREFIX = "/webhooks/"
OTHER_BODY_BYTES_MAX = 64 * 1024


class BodyRefused(ApiError):
    """A body over its cap or too slow: the route's body read raises it, and
    the app's error handler answers it (and the connection closes)."""

    def __init__(self, code: GatewayCode, detail: str) -> None:
        super().__init__(code, detail, headers={"connection": "close"})


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
            return settings_of(scope["app"]).api_body_bytes_max
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
                await _answer(send, refusal)
                return
        limit = self.body_bytes_max(scope)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                refused = ApiError(GatewayCode.BAD_CONTENT_LENGTH, "Content-Length is not a number")
                await _answer(send, refused)
                return
            if int(length) > limit:
                self._count(scope, "too_large")
                refused = ApiError(
                    GatewayCode.BODY_TOO_LARGE, f"the request body is over {limit} bytes"
                )
                await _answer(send, refused)
                return
        timeout = float(settings_of(scope["app"]).gateway_body_timeout_seconds)
        await self.app(scope, _LimitedReceive(self, scope, receive, limit, timeout), send)

    async def _key_refusal(self, scope: Scope) -> ApiError | None:
        """401 (or 503) for a `/v1` request without a valid key, the very
        answer of the route's own check; None to go on. The route checks the
        key again with its scope (a known key is cached)."""
        authorization = _header(scope, b"authorization") or b""
        scheme, _, presented = authorization.decode("latin-1").partition(" ")
        key = presented.strip() if scheme.lower() == "bearer" and presented.strip() else None
        try:
            principal = await api_guard(scope["app"]).verifier.verify(key)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return key_store_unavailable()
        if principal is not None:
            return None
        challenge = 'Bearer realm="cardflow"'
        if key is not None:
            challenge += ', error="invalid_token"'
        return ApiError(
            GatewayCode.UNAUTHENTICATED,
            UNAUTHENTICATED_DETAIL,
            headers={"www-authenticate": challenge},
        )

    def _count(self, scope: Scope, reason: str) -> None:
        provider = _provider(scope["path"])
        if provider is None:
            return
        known = provider if provider in secrets_of(scope["app"]) else "unknown"
        metrics = metrics_of(scope["app"])
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
                GatewayCode.BODY_TOO_SLOW,
                f"the request body did not arrive within {self._timeout:g} s",
            ) from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self._intake._count(self._scope, "too_large")
                raise BodyRefused(
                    GatewayCode.BODY_TOO_LARGE, f"the request body is over {self._limit} bytes"
                )
            self._body_done = not message.get("more_body", False)
        return message


async def _answer(send: Send, refusal: ApiError) -> None:
    """A JSON refusal sent before the body is read; the connection closes."""
    body = json.dumps(refusal.body()).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    raw += [
        (name.lower().encode(), value.encode()) for name, value in (refusal.headers or {}).items()
    ]
    await send({"type": "http.response.start", "status": refusal.status_code, "headers": raw})
    await send({"type": "http.response.body", "body": body})
