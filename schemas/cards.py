"""Card issuing and the card's own lifecycle."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.customers import CustomerId
from schemas.issuer import Address, CardState, ShippingStatus
from schemas.money import Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)
CardKind = Literal["virtual", "physical"]


class CardIssuePolicy(BaseModel):
    issuance_fee_virtual_minor: int = Field(default=0, ge=0)
    issuance_fee_physical_minor: int = Field(default=500, ge=0)
    # A physical card not delivered within this is given up (card closed, fee refunded).
    delivery_wait_seconds: int = Field(default=30 * 24 * 3600, ge=1)
    activation_wait_seconds: int = Field(default=90 * 24 * 3600, ge=1)


class CardIssueInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    customer_id: CustomerId
    kind: CardKind
    currency: Currency = Currency.USD
    address: Address
    policy: CardIssuePolicy = Field(default_factory=CardIssuePolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class ShippingUpdate(BaseModel):
    """A card.shipping.updated webhook, as the gateway delivers it."""

    card_id: str
    status: ShippingStatus
    carrier: str | None = None
    tracking_number: str | None = None
    eta: date | None = None


class RescheduleDelivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_date: date


class CardIssueResult(BaseModel):
    request_id: str
    card_id: str | None
    state: str
    fee_minor: int
    reason: str = ""


class CardIssueStatus(BaseModel):
    request_id: str
    stage: str
    card_id: str | None
    shipping: ShippingUpdate | None


class SpendingLimits(BaseModel):
    """Set by update; enforced by authorizations. None means no limit."""

    model_config = ConfigDict(extra="forbid")

    per_transaction_minor: int | None = Field(default=None, ge=0)
    per_day_minor: int | None = Field(default=None, ge=0)
    per_month_minor: int | None = Field(default=None, ge=0)
    blocked_mccs: list[str] = Field(default_factory=list, max_length=200)

    @field_validator("blocked_mccs")
    @classmethod
    def _mccs(cls, value: list[str]) -> list[str]:
        for mcc in value:
            if len(mcc) != 4 or not mcc.isdigit():
                raise ValueError(f"MCC {mcc!r} must be 4 digits")
        return sorted(set(value))


class CardInput(BaseModel):
    """The card entity's state, carried across continue-as-new."""

    card_id: str
    customer_id: str
    state: CardState
    limits: SpendingLimits = Field(default_factory=SpendingLimits)
    replaced_by: str | None = None
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows
    # Continue as new past this many history events, carrying the state.
    history_events_max: int = Field(default=5_000, ge=50)
    changes: int = 0


class CardStateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="customer request", min_length=1, max_length=200)
