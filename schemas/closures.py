"""Account closure `closure/{customer_id}`: every card frozen then closed
(once their open authorizations clear, are reversed or expire), recorded
debt settled from the balance, the rest paid out through a withdrawal,
the wallets closed at zero, the customer marked closed and told."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.customers import CustomerId
from schemas.edge import EdgeModel
from schemas.money import Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS, HOUR_SECONDS
from schemas.withdrawals import Destination

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)


class ClosurePolicy(BaseModel):
    """Every wait of a closure, so tests run the same code in seconds."""

    model_config = ConfigDict(extra="forbid")

    # A card with open authorizations is tried again this often...
    card_retry_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    # ...for at most this long (holds expire within days); then an operator.
    cards_wait_seconds: int = Field(default=10 * DAY_SECONDS, ge=1)
    # The payout's withdrawal watches for a bank return this long, and asks
    # the bank after this long without its word.
    return_watch_seconds: int = Field(default=14 * DAY_SECONDS, ge=0)
    outcome_poll_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    operator_wait_seconds: int = Field(default=30 * DAY_SECONDS, ge=1)


class ClosureRequest(EdgeModel):
    """Close a customer's account and pay its balance to `destination`."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    destination: Destination
    reason: str = Field(default="customer request", min_length=1, max_length=200)


class ClosureInput(ClosureRequest):
    requested_at: AwareDatetime
    policy: ClosurePolicy = Field(default_factory=ClosurePolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


AccountStatus = Literal["open", "closing", "closed"]


class AccountStatusChange(BaseModel):
    customer_id: str
    status: AccountStatus


class CustomerHoldings(BaseModel):
    """What a customer has: cards, and per currency the wallet's balance and debt."""

    cards: list[str]
    wallets: dict[Currency, int]
    debts: dict[Currency, int]


class CardChange(BaseModel):
    """Freeze or close a card, once (the update's id)."""

    card_id: str
    action: Literal["freeze", "close"]
    update_id: str
    reason: str


class CardChangeOutcome(BaseModel):
    done: bool
    detail: str


class ClosureDecision(EdgeModel):
    """An operator's word on a closure that cannot go on by itself: try again
    (the cards, or the payout to another destination), or leave it open."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retry", "abandon"]
    destination: Destination | None = None
    reason: str = Field(min_length=3, max_length=500)
    operator: str = Field(min_length=1, max_length=100)


ClosureOutcome = Literal["closed", "abandoned", "cancelled"]


class ClosureStatus(BaseModel):
    customer_id: str
    stage: str
    outcome: ClosureOutcome | None
    reason: str | None
    cards_closed: list[str]
    cards_open: list[str]
    settled_debt: dict[Currency, int]
    payouts: dict[Currency, str]
    waiting_for_operator: str | None


class ClosureResult(BaseModel):
    customer_id: str
    outcome: ClosureOutcome
    reason: str
    cards_closed: list[str]
    settled_debt: dict[Currency, int]
    paid_out: dict[Currency, int]
    payouts: dict[Currency, str]
