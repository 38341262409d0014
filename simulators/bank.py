"""Bank inbound transfers: an incoming transfer with a reference, then a webhook.

    POST /bank/v1/simulate/inbound_transfers   an incoming credit arrives
    GET  /bank/v1/inbound_transfers/{id}       read it back

Webhook: `inbound_transfer.received` with the transfer.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from schemas.money import Currency
from simulators.framework.context import SimulatorContext
from simulators.framework.store import now_iso

NAME = "bank"


class InboundTransferIn(BaseModel):
    reference: str = Field(min_length=1, max_length=140, description="Payer's reference")
    amount_minor: int = Field(gt=0, le=10**15)
    currency: Currency
    sender_name: str = Field(default="Unknown sender", max_length=140)
    sender_iban: str | None = Field(default=None, max_length=34)


class InboundTransfer(InboundTransferIn):
    id: str
    status: Literal["received"]
    received_at: str


def create(context: SimulatorContext) -> FastAPI:
    app = FastAPI(title="Bank inbound transfers (simulated)")

    @app.post("/v1/simulate/inbound_transfers", status_code=201)
    async def simulate_inbound(body: InboundTransferIn) -> InboundTransfer:
        transfer = InboundTransfer(
            **body.model_dump(),
            id=f"ibt_{context.store.next_number('bank.inbound'):06d}",
            status="received",
            received_at=now_iso(),
        )
        context.store.put("bank.inbound", transfer.id, transfer.model_dump(mode="json"))
        context.outbox.emit(NAME, "inbound_transfer.received", transfer.model_dump(mode="json"))
        return transfer

    @app.get("/v1/inbound_transfers/{transfer_id}")
    async def get_inbound(transfer_id: str) -> InboundTransfer:
        found = context.store.get("bank.inbound", transfer_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no inbound transfer {transfer_id}")
        return InboundTransfer(**found)

    return app
