"""An upstream app that takes cardflow's events (a mobile backend, a
partner): it checks each delivery with Standard Webhooks as a real receiver
does, and lists what arrived.

    PUT  /upstream/v1/receivers/{name}              {"secret": "whsec_..."}: the
                                                    secret cardflow gave its endpoint
    POST /upstream/hooks/{name}                     a delivery from cardflow
    GET  /upstream/v1/receivers/{name}/deliveries   what arrived, oldest first

A delivery whose signature does not verify with the receiver's secret (or
whose timestamp is outside the library's tolerance: a replay) is answered
401 and listed as refused; an event id that arrived before is answered 200
and listed as a duplicate. Faults set through the admin API on
/upstream/hooks/ make the app answer errors or slowly: an app that is down.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from standardwebhooks import Webhook, WebhookVerificationError

from simulators.framework.context import SimulatorContext
from simulators.framework.store import now_iso

NAME = "upstream"

RECEIVERS = "upstream.receiver"
DELIVERIES = "upstream.delivery"
SEEN = "upstream.seen"
# A delivery body larger than this is refused (cardflow's events are small).
DELIVERY_BYTES_MAX = 256 * 1024
ReceiverName = Annotated[str, Path(pattern=r"^[a-z0-9_-]{1,40}$")]


class ReceiverIn(BaseModel):
    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{8,200}$")


class Delivery(BaseModel):
    event_id: str | None
    type: str | None
    seq: int | None
    customer_id: str | None
    outcome: Literal["accepted", "duplicate", "refused"]
    reason: str | None = None
    received_at: str


class DeliveryPage(BaseModel):
    data: list[Delivery]


def create(context: SimulatorContext) -> FastAPI:
    app = context.app(title="Upstream app (simulated)")
    store = context.store

    @app.put("/v1/receivers/{name}")
    async def set_receiver(name: ReceiverName, body: ReceiverIn) -> dict[str, str]:
        store.put(RECEIVERS, name, {"secret": body.secret})
        return {"name": name}

    def record(name: str, delivery: Delivery) -> None:
        number = store.next_number(f"{DELIVERIES}/{name}")
        store.put(DELIVERIES, f"{name}/{number:012d}", delivery.model_dump())

    @app.post("/hooks/{name}")
    async def receive(name: ReceiverName, request: Request) -> JSONResponse:
        receiver = store.get(RECEIVERS, name)
        if receiver is None:
            raise HTTPException(status_code=404, detail=f"no receiver {name}")
        body = await request.body()
        if len(body) > DELIVERY_BYTES_MAX:
            raise HTTPException(status_code=413, detail="delivery too large")
        event_id = request.headers.get("webhook-id")
        try:
            event = Webhook(receiver["secret"]).verify(body, dict(request.headers))
        except WebhookVerificationError as error:
            record(
                name,
                Delivery(
                    event_id=event_id,
                    type=None,
                    seq=None,
                    customer_id=None,
                    outcome="refused",
                    reason=str(error),
                    received_at=now_iso(),
                ),
            )
            return JSONResponse({"error": str(error)}, status_code=401)
        seen = store.get(SEEN, f"{name}/{event_id}")
        record(
            name,
            Delivery(
                event_id=event_id,
                type=event.get("type"),
                seq=event.get("seq"),
                customer_id=event.get("customer_id"),
                outcome="duplicate" if seen else "accepted",
                received_at=now_iso(),
            ),
        )
        if not seen:
            store.put(SEEN, f"{name}/{event_id}", {"body": json.loads(body)})
        return JSONResponse({"ok": True})

    @app.get("/v1/receivers/{name}/deliveries")
    async def deliveries(name: ReceiverName) -> DeliveryPage:
        prefix = f"{name}/"
        rows = store.execute(
            "SELECT body FROM documents WHERE kind = ? AND id LIKE ? ORDER BY id",
            DELIVERIES,
            prefix + "%",
        )
        return DeliveryPage(data=[Delivery.model_validate(json.loads(row[0])) for row in rows])

    return app
