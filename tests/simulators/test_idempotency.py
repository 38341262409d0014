"""The simulators' idempotency layer at the edge of a connection: a request
whose client went away before its body arrived was never made, so nothing is
answered or remembered for its key, and the whole request sent again (the
caller's retry with the same key) is served as the first."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from simulators.framework.idempotency import IdempotencyMiddleware
from simulators.framework.store import Store

KEY = "card-issue/abc/card"
BODY = json.dumps({"cardholder_id": "ch_1", "type": "virtual", "currency": "USD"}).encode()


def scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/issuer/v1/cards",
        "headers": [(b"idempotency-key", KEY.encode()), (b"content-type", b"application/json")],
    }


class Served:
    """The simulator behind the middleware: answers 201 with what it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b'{"id": "card_1"}'})


def arriving(*messages: Message) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


async def answer(app: Any, receive: Receive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(), receive, send)
    return sent


async def test_a_request_cut_off_before_its_body_is_not_served_nor_remembered() -> None:
    store = Store(":memory:")
    served = Served()
    app = IdempotencyMiddleware(served, store)
    # Half the body, then the client is gone (killed, or its connection dropped).
    cut_off = arriving(
        {"type": "http.request", "body": BODY[:10], "more_body": True},
        {"type": "http.disconnect"},
    )
    assert await answer(app, cut_off) == []
    assert served.bodies == []
    assert store.remembered("http", KEY) is None

    # The caller's retry, the same key and the whole body: served as the first.
    whole = arriving({"type": "http.request", "body": BODY, "more_body": False})
    sent = await answer(app, whole)
    assert sent[0]["status"] == 201
    assert served.bodies == [BODY]
    remembered = store.remembered("http", KEY)
    assert remembered is not None and remembered[1] == 201


async def test_a_request_cut_off_before_any_body_is_not_served_nor_remembered() -> None:
    store = Store(":memory:")
    served = Served()
    app = IdempotencyMiddleware(served, store)
    assert await answer(app, arriving({"type": "http.disconnect"})) == []
    assert served.bodies == []
    assert store.remembered("http", KEY) is None
