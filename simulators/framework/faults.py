"""Faults injected per endpoint, through the admin API or directly from tests.

A fault matches a method and a path prefix and fires for its next `times`
requests (or every request). Kinds:
  latency       sleep `seconds`, then answer normally
  error         answer `status` (a 5xx) with a JSON error
  rate_limit    answer 429 with Retry-After: `seconds`
  timeout       sleep `seconds` (longer than the client waits), then answer
  drop          start the response and close the connection mid-body; with
                `after_bytes`, serve the real response and close the
                connection once that many bytes of its body are sent (a
                large download cut halfway)
  answer_lost   serve the request in full (it takes effect), then answer
                nothing for `seconds` (longer than the client waits) and
                drop the connection: the caller cannot know it was made
  crash         kill the simulator process (as SIGKILL would) right after
                the request's `after_writes`-th write to its store: what a
                call had not committed when it died is gone on restart
  reject        answer 422 with a validation error that echoes the request body
                as its `input`, as FastAPI and many real providers do (what a
                client must never copy into its logs)
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from simulators.framework.store import crash_after_writes

FaultKind = Literal[
    "latency", "error", "rate_limit", "timeout", "drop", "reject", "answer_lost", "crash"
]


class Fault(BaseModel):
    kind: FaultKind
    path_prefix: str = Field(default="/", description="Matches request paths starting with it")
    method: str = Field(default="*", description="HTTP method, or * for any")
    times: int | None = Field(default=None, ge=1, description="Fire this many times; None: always")
    seconds: float = Field(default=0.0, ge=0, le=120)
    status: int = Field(default=503, ge=500, le=599)
    after_bytes: int | None = Field(
        default=None, ge=0, description="drop: cut the real body after this many bytes"
    )
    after_writes: int = Field(
        default=0, ge=0, le=1000, description="crash: die after this many writes of the request"
    )


class FaultRegistry:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        """The first matching fault, consuming one of its `times`."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.method not in ("*", method) or not path.startswith(fault.path_prefix):
                    continue
                if fault.times is not None:
                    remaining = fault.times - 1
                    if remaining == 0:
                        del self._faults[index]
                    else:
                        self._faults[index] = fault.model_copy(update={"times": remaining})
                return fault
        return None


class FaultMiddleware:
    """Applies faults before the simulator sees the request; admin routes are exempt."""

    def __init__(self, app: ASGIApp, registry: FaultRegistry) -> None:
        self.app = app
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_admin"):
            await self.app(scope, receive, send)
            return
        fault = self.registry.take(scope["method"], path)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.kind in ("latency", "timeout"):
            await asyncio.sleep(fault.seconds)
            await self.app(scope, receive, send)
        elif fault.kind == "crash":
            crash_after_writes(fault.after_writes)
            await self.app(scope, receive, send)
        elif fault.kind == "answer_lost":
            await self.app(scope, receive, _discarded)
            await asyncio.sleep(fault.seconds)
            raise ConnectionAbortedError("injected lost answer")
        elif fault.kind == "error":
            await _json(
                send, fault.status, {"error": {"type": "api_error", "message": "injected failure"}}
            )
        elif fault.kind == "reject":
            await _json(send, 422, {"detail": [_echoing_error(await _body(receive))]})
        elif fault.kind == "rate_limit":
            await _json(
                send,
                429,
                {"error": {"type": "rate_limit_error", "message": "too many requests"}},
                [(b"retry-after", str(max(1, round(fault.seconds))).encode())],
            )
        elif fault.after_bytes is not None:
            # A body no longer than the cut is served whole.
            await self.app(scope, receive, _cut_after(send, fault.after_bytes))
        else:  # drop: promise a body, send part of it, then fail the connection.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"1000"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
            raise ConnectionAbortedError("injected dropped connection")


def _cut_after(send: Send, body_bytes: int) -> Send:
    """`send` that passes the response on until `body_bytes` of its body are
    sent, then fails the connection."""
    sent = 0

    async def cutting(message: Message) -> None:
        nonlocal sent
        if message["type"] != "http.response.body":
            await send(message)
            return
        body = message.get("body", b"")
        if sent + len(body) <= body_bytes:
            sent += len(body)
            await send(message)
            return
        kept = body[: body_bytes - sent]
        await send({"type": "http.response.body", "body": kept, "more_body": True})
        raise ConnectionAbortedError("injected dropped connection")

    return cutting


async def _discarded(message: Message) -> None:
    """A response nobody receives."""


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _echoing_error(body: bytes) -> dict[str, Any]:
    """One validation error shaped like FastAPI's, the request body as its input."""
    echoed: Any
    try:
        echoed = json.loads(body) if body else None
    except ValueError:
        echoed = body.decode(errors="replace")
    return {
        "type": "value_error",
        "loc": ["body"],
        "msg": "Value error, injected rejection",
        "input": echoed,
    }


async def _json(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
