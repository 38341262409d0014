"""Customer events: what happened to a customer's money and cards, as the
transaction feed, the `/v1/events` stream and webhook deliveries show it.

Each event is written once, with an id, where the state it reports is
written (activities/migrations/0021_customer_events.sql says by whom); a
position (`seq`) orders them without gaps. An event's `data` is the public
record of what happened: amounts in minor units with their currency, the
merchant, the reason of a decline; never a card number.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from schemas.cards import DeclineReason
from schemas.edge import TEXT_CHARS_MAX, EdgeModel
from schemas.money import Currency
from schemas.task_queues import TaskQueues

_QUEUES = TaskQueues()


class EventType(StrEnum):
    AUTHORIZATION_APPROVED = "authorization.approved"
    AUTHORIZATION_DECLINED = "authorization.declined"
    AUTHORIZATION_UPDATED = "authorization.updated"
    AUTHORIZATION_REVERSED = "authorization.reversed"
    HOLD_EXPIRED = "hold.expired"
    TRANSACTION_CLEARED = "transaction.cleared"
    TRANSACTION_REFUNDED = "transaction.refunded"
    TRANSACTION_FORCE_POSTED = "transaction.force_posted"
    TOPUP_CREDITED = "topup.credited"
    DEBT_COLLECTED = "debt.collected"
    FX_CONVERTED = "fx.converted"
    CASHBACK_EARNED = "cashback.earned"
    CASHBACK_CLAWED_BACK = "cashback.clawed_back"
    FEE_CHARGED = "fee.charged"
    FEE_REFUNDED = "fee.refunded"
    DISPUTE_CREDITED = "dispute.credited"
    DISPUTE_DEBITED = "dispute.debited"
    DISPUTE_UPDATED = "dispute.updated"
    ADJUSTMENT_CREDITED = "adjustment.credited"
    ADJUSTMENT_DEBITED = "adjustment.debited"
    CARD_ISSUED = "card.issued"
    CARD_STATE_CHANGED = "card.state_changed"
    CARD_SHIPPING_UPDATED = "card.shipping_updated"
    STATEMENT_READY = "statement.ready"
    WITHDRAWAL_PAID = "withdrawal.paid"
    WITHDRAWAL_RETURNED = "withdrawal.returned"


class FeedKind(StrEnum):
    """An entry of the customer's transaction feed."""

    AUTHORIZATION = "authorization"
    DECLINE = "decline"
    REVERSAL = "reversal"
    CLEARING = "clearing"
    REFUND = "refund"
    FORCE_POST = "force_post"
    TOPUP = "topup"
    FX = "fx"
    CASHBACK = "cashback"
    FEE = "fee"
    DISPUTE = "dispute"
    DEBT = "debt"
    ADJUSTMENT = "adjustment"
    WITHDRAWAL = "withdrawal"


# What a customer is told when a purchase is declined, by the card's reason.
DECLINE_SENTENCES: dict[str, str] = {
    DeclineReason.CARD_PAUSED: "Your card is frozen. Unfreeze it to pay with it again.",
    DeclineReason.CARD_CLOSED: "This card is closed.",
    DeclineReason.CURRENCY_MISMATCH: "This card cannot pay in that currency.",
    DeclineReason.BLOCKED_MCC: "Purchases of this kind are blocked on this card.",
    DeclineReason.OVER_TRANSACTION_LIMIT: "The amount is over this card's limit per purchase.",
    DeclineReason.OVER_DAILY_LIMIT: "This purchase would pass the card's daily spending limit.",
    DeclineReason.OVER_MONTHLY_LIMIT: "This purchase would pass the card's monthly spending limit.",
    DeclineReason.VELOCITY_COUNT: "Too many purchases in a short time. Try again a little later.",
    DeclineReason.VELOCITY_AMOUNT: "Too much spent in a short time. Try again a little later.",
    DeclineReason.INSUFFICIENT_FUNDS: "Not enough money in your wallet. Top up and try again.",
    DeclineReason.UNKNOWN_AUTHORIZATION: "The merchant changed a payment this card never made.",
    DeclineReason.TOO_MANY_OPEN_AUTHORIZATIONS: (
        "Too many payments are still pending on this card. Try again once some have settled."
    ),
    DeclineReason.AUTHORIZATION_FINISHED: "The payment had already ended when the card was asked.",
    DeclineReason.FROZEN_BY_SCHEDULE: "This card is frozen at this time of day by its settings.",
    DeclineReason.MERCHANT_LOCKED: "This card pays only the merchant it is locked to.",
    DeclineReason.SINGLE_USE_CARD_USED: "This single-use card has already been used.",
    DeclineReason.MCC_NOT_ALLOWED: "Purchases of this kind are not allowed on this card.",
    DeclineReason.COUNTRY_NOT_ALLOWED: "Purchases in this country are not allowed on this card.",
    DeclineReason.OVER_WEEKLY_LIMIT: "This purchase would pass the card's weekly spending limit.",
    DeclineReason.OVER_YEARLY_LIMIT: "This purchase would pass the card's yearly spending limit.",
    DeclineReason.OVER_LIFETIME_LIMIT: "This purchase would pass the card's lifetime limit.",
    DeclineReason.OVER_COUNT_LIMIT: "The card has reached its number of purchases for now.",
    DeclineReason.OVER_MCC_GROUP_LIMIT: (
        "This purchase would pass the card's limit for purchases of this kind."
    ),
    DeclineReason.DECLINED_BY_RULE: "This payment was declined by the card program's rules.",
    DeclineReason.OVER_TIER_TRANSACTION_LIMIT: (
        "The amount is over what your verification level allows per purchase."
        " Complete further verification to raise it."
    ),
    DeclineReason.OVER_TIER_MONTHLY_LIMIT: (
        "This purchase would pass what your verification level allows your cards"
        " to spend this month. Complete further verification to raise it."
    ),
}
UNKNOWN_DECLINE_SENTENCE = "The card issuer declined this payment."


def decline_sentence(reason: str) -> str:
    return DECLINE_SENTENCES.get(reason, UNKNOWN_DECLINE_SENTENCE)


class CustomerEvent(BaseModel):
    """One event, as `/v1/events` lists it and a webhook delivers it."""

    id: str
    seq: int = Field(description="Its position: /v1/events?after= this resumes behind it")
    type: str
    customer_id: str
    card_id: str | None = None
    authorization_id: str | None = None
    process_id: str | None = Field(default=None, description="The workflow behind it")
    occurred_at: datetime
    data: dict[str, Any]


class EventPage(BaseModel):
    data: list[CustomerEvent]
    next_cursor: str | None = Field(description="Pass as `after` for the events behind these")


class FeedMerchant(BaseModel):
    name: str | None = None
    mcc: str | None = None
    amount_minor: int | None = Field(default=None, description="In the merchant's currency")
    currency: Currency | None = None


class FeedEntry(BaseModel):
    """One line of the customer's transaction feed."""

    id: str = Field(description="The event's id")
    kind: FeedKind
    status: Literal["pending", "cleared", "reversed", "expired", "declined", "posted"] = Field(
        description="A hold's state now (pending until cleared, reversed or expired)"
    )
    occurred_at: datetime
    amount_minor: int = Field(
        description="In the wallet's currency, money in positive: what was posted; for a hold, "
        "minus the amount held; for a decline, minus the amount asked; for a reversal, released"
    )
    currency: Currency
    posted_minor: int = Field(
        description="What it moved the wallet's posted balance by (0 for holds and declines)"
    )
    pending_minor: int = Field(
        default=0, description="Of a hold: what it still holds now, as a positive amount"
    )
    unposted_minor: int = Field(
        default=0,
        description="Of a clearing: what the merchant took beyond what the wallet was charged, "
        "waiting for an operator (charged, then an adjustment, or written off)",
    )
    hold_expires_at: datetime | None = None
    card_id: str | None = None
    authorization_id: str | None = None
    transaction_id: str | None = None
    merchant: FeedMerchant | None = None
    reason_code: str | None = Field(default=None, description="Of a decline: the card's reason")
    reason: str | None = Field(default=None, description="Of a decline: why, in a sentence")
    process_id: str | None = Field(default=None, description="The workflow behind it")


class FeedPage(BaseModel):
    data: list[FeedEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for the older entries")


WEBHOOK_EVENT_TYPES_MAX = len(EventType)


# The longest endpoint URL taken (most clients and servers stop near here).
ENDPOINT_URL_CHARS_MAX = 2_000


class WebhookEndpointCreate(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl = Field(
        max_length=ENDPOINT_URL_CHARS_MAX,
        description="Where events are POSTed (http or https), signed with Standard Webhooks",
    )
    event_types: list[EventType] = Field(
        min_length=1, max_length=WEBHOOK_EVENT_TYPES_MAX, description="The events it wants"
    )


class SecretRotation(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=24 * 3600,
        ge=0,
        le=7 * 24 * 3600,
        description="How long the previous secret keeps signing beside the new one",
    )


class WebhookEndpointView(BaseModel):
    id: str
    url: str
    event_types: list[str]
    status: Literal["enabled", "disabled", "deleted"]
    disabled_reason: str | None = None
    created_at: datetime
    delivery_process_id: str = Field(description="The workflow that delivers its events")


class WebhookEndpointCreated(WebhookEndpointView):
    secret: str = Field(description="Shown once: verifies its deliveries (whsec_...)")


class WebhookEndpointPage(BaseModel):
    data: list[WebhookEndpointView]


# Events asked to be delivered again that may wait at once.
REDELIVERIES_WAITING_MAX = 1_000


class DeliveryPolicy(BaseModel):
    """How an endpoint's events are delivered: how often it looks for new
    ones, and how a failing delivery is retried before the endpoint is
    disabled."""

    model_config = ConfigDict(frozen=True)

    idle_poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    retry_initial_seconds: float = Field(default=5.0, gt=0, le=3600)
    retry_max_interval_seconds: float = Field(default=3600.0, gt=0, le=86400)
    give_up_after_seconds: float = Field(default=3 * 86400.0, gt=0, le=30 * 86400)
    history_events_max: int = Field(default=2_000, ge=100, le=40_000)


class EventDeliveryInput(BaseModel):
    """The delivery process of one endpoint, `events/{endpoint_id}`."""

    model_config = ConfigDict(extra="forbid", str_max_length=TEXT_CHARS_MAX)

    endpoint_id: str = Field(pattern=r"^we_[a-z0-9]{1,40}$")
    after_seq: int = Field(default=0, ge=0, description="Delivered up to this position")
    delivered: int = Field(default=0, ge=0)
    redeliveries: list[str] = Field(default_factory=list, max_length=REDELIVERIES_WAITING_MAX)
    policy: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


class EventDeliveryStatus(BaseModel):
    endpoint_id: str
    stage: str
    after_seq: int
    delivered: int
    redeliveries_waiting: int
    last_failure: str | None = None
