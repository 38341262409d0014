"""What cardflow reads from the bank's inbound-transfer API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from schemas.money import AMOUNT_MINOR_MAX, Currency


class InboundTransfer(BaseModel):
    id: str
    reference: str
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    sender_name: str
    status: str
    received_at: str
