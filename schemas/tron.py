"""What cardflow reads from the Tron (USDT-TRC20) custody API.

Amounts are micro-USDT (6 decimal places), integers end to end.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from schemas.money import AMOUNT_MINOR_MAX, Currency

DepositStatus = Literal["confirming", "finalized", "dropped"]


class DepositAddress(BaseModel):
    """A customer's one deposit address (Tron base58, 34 characters, "T...")."""

    address: str
    customer_id: str
    created_at: str


class Deposit(BaseModel):
    """A USDT transfer to a deposit address and how deep it is in the chain."""

    tx_hash: str
    address: str
    customer_id: str
    from_address: str
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    block_number: int
    confirmations: int = Field(ge=0)
    finality_confirmations: int = Field(ge=1)
    status: DepositStatus
    detected_at: str
    finalized_at: str | None = None
    dropped_at: str | None = None


class DepositPage(BaseModel):
    """One page of an address's deposits, oldest first."""

    data: list[Deposit]
    has_more: bool


class ChainHead(BaseModel):
    """The chain after mining: its latest block and how many were just mined."""

    head_block_number: int
    blocks_mined: int
