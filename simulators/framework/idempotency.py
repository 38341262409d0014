"""Stripe-style idempotency for every mutating simulator call.

A POST/PUT/PATCH/DELETE with an `Idempotency-Key` header is answered once;
a repeat with the same body gets the stored answer (with header
`Idempotent-Replayed: true`), a repeat with another body gets 409 (except on
UNKEYED_PATH_PREFIXES). A request
whose client disconnected before its body arrived is neither served nor
remembered.
"""

from __future__ import annotations

import hashlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simulators.framework.store import Store

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# Paths that take no Idempotency-Key: the admin API, and the Telegram Bot
# API, which ignores the header (a repeated sendMessage sends again).
UNKEYED_PATH_PREFIXES = ("/_admin", "/telegram/")


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        key = headers.get(b"idempotency-key", b"").decode()
        if not key or scope.get("path", "").startswith(UNKEYED_PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The client went away before its request arrived whole: it
                # was never made. Nothing is served or remembered for the key,
                # so the caller's retry is answered as the first request.
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        fingerprint = hashlib.sha256(
            scope["method"].encode() + b" " + scope["path"].encode() + b"\n" + body
        ).hexdigest()
        remembered = self.store.remembered("http", key)
        if remembered is not None:
            stored_fingerprint, status, response = remembered
            if stored_fingerprint != fingerprint:
                await _send(
                    send,
                    409,
                    json.dumps(
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": f"Idempotency-Key {key} was used with another request",
                            }
                        }
                    ),
                    replayed=False,
                )
            else:
                await _send(send, status, response, replayed=True)
            return

        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, replay_body, capture)
        # Server errors are not final: the caller should be able to retry.
        if status < 500:
            self.store.remember("http", key, fingerprint, status, b"".join(chunks).decode())


async def _send(send: Send, status: int, body: str, *, replayed: bool) -> None:
    payload = body.encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if replayed:
        headers.append((b"idempotent-replayed", b"true"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
