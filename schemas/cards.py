"""Card issuing and the card's own lifecycle."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.auth_rules import Approval
from schemas.authentication import AuthenticationPolicy, AuthenticationRecord
from schemas.card_controls import Controls, ScopedControls, TemporaryControl, WindowSpend
from schemas.customers import CustomerId, KycTier
from schemas.edge import Day, EdgeModel
from schemas.issuer import Address, CardState, ReissueReason, ShippingStatus
from schemas.issuer import Authorization as IssuerAuthorization
from schemas.issuer import Card as IssuerCard
from schemas.issuer import Reversal as IssuerReversal
from schemas.issuer import Transaction as IssuerTransaction
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)
CardKind = Literal["virtual", "physical"]


class CardIssuePolicy(BaseModel):
    issuance_fee_virtual_minor: int = Field(default=0, ge=0, le=AMOUNT_MINOR_MAX)
    issuance_fee_physical_minor: int = Field(default=500, ge=0, le=AMOUNT_MINOR_MAX)
    # A physical card not delivered within this is given up (card closed, fee refunded).
    delivery_wait_seconds: int = Field(default=30 * DAY_SECONDS, ge=1)
    activation_wait_seconds: int = Field(default=90 * DAY_SECONDS, ge=1)


class CardIssueInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    customer_id: CustomerId
    kind: CardKind
    currency: Currency = Currency.USD
    # Where the cardholder lives (and a physical card goes); every new card
    # needs one, a replacement ships where the card it replaces went.
    address: Address | None = None
    policy: CardIssuePolicy = Field(default_factory=CardIssuePolicy)
    # How the issued card decides authorizations and keeps holds.
    card_policy: CardPolicy = Field(default_factory=lambda: CardPolicy())
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows
    # Set when the card was already reissued for a lost or stolen one: issuing
    # then only follows its delivery and activation.
    reissue: CardReissue | None = None

    @model_validator(mode="after")
    def _address_for_a_new_card(self) -> CardIssueInput:
        if self.reissue is None and self.address is None:
            raise ValueError("address: a new card needs the cardholder's address")
        return self


class ShippingUpdate(BaseModel):
    """A card.shipping.updated webhook, as the gateway delivers it."""

    card_id: str
    status: ShippingStatus
    carrier: str | None = None
    tracking_number: str | None = None
    eta: date | None = None


class RescheduleDelivery(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    delivery_date: Day


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


class SpendingLimits(EdgeModel):
    """Set by update; enforced by authorizations. None means no limit."""

    model_config = ConfigDict(extra="forbid")

    per_transaction_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    per_day_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    per_month_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    blocked_mccs: list[str] = Field(default_factory=list, max_length=200)

    @field_validator("blocked_mccs")
    @classmethod
    def _mccs(cls, value: list[str]) -> list[str]:
        for mcc in value:
            if len(mcc) != 4 or not mcc.isdigit():
                raise ValueError(f"MCC {mcc!r} must be 4 digits")
        return sorted(set(value))


class CardPolicy(BaseModel):
    """How the card decides and keeps its holds; every duration in seconds."""

    model_config = ConfigDict(extra="forbid")

    # An approved authorization holds funds this long unless cleared or reversed.
    hold_expiry_seconds: int = Field(default=7 * DAY_SECONDS, ge=1)
    # A clearing above what was authorized (a tip) posts the excess up to this
    # share of the authorized amount; beyond it the excess waits for an operator.
    clearing_over_tolerance_bps: int = Field(default=2_000, ge=0, le=10_000)
    # Velocity: approvals per window, in count and in amount.
    velocity_window_seconds: int = Field(default=3_600, ge=1)
    velocity_count_max: int = Field(default=60, ge=1)
    velocity_amount_max_minor: int | None = Field(default=None, ge=1, le=AMOUNT_MINOR_MAX)
    # A bound on the state the card carries across continue-as-new.
    open_authorizations_max: int = Field(default=200, ge=1, le=1_000)
    # A closed card's process stays this long once it holds nothing, for the
    # issuer's late money (refunds, late presentments); money arriving after
    # that starts the card's process again.
    closed_linger_seconds: int = Field(default=180 * DAY_SECONDS, ge=1)
    # 3-D Secure: when the card challenges (schemas/authentication.py).
    authentication: AuthenticationPolicy = Field(default_factory=AuthenticationPolicy)


class Merchant(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    mcc: str = Field(pattern=r"^[0-9]{4}$")
    country: str = Field(pattern=r"^[A-Z]{2}$")


class AuthorizationRequest(BaseModel):
    """The issuer's real-time question, as the gateway hands it to the card:
    amounts are in the card's (billing) currency, which is what is held."""

    model_config = ConfigDict(extra="ignore")

    authorization_id: str = Field(min_length=1, max_length=100)
    kind: Literal["initial", "incremental"]
    card_id: str = Field(min_length=1, max_length=100)
    amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    currency: Currency
    merchant_amount_minor: int = Field(gt=0, le=AMOUNT_MINOR_MAX)
    merchant_currency: Currency
    merchant: Merchant
    partial_approval_capable: bool = False
    pending_amount_minor: int = Field(default=0, ge=0, le=AMOUNT_MINOR_MAX)
    # When the issuer asked (its request's created_at), set by the gateway. The
    # hold's expiry derives from it, never from the clock of the workflow task
    # that decides: a retried task must submit the very same hold.
    requested_at: datetime | None = None
    # The issuer's id of this request (its envelope's), set by the gateway: a
    # resend of the same request is answered as first decided, in any run.
    request_id: str | None = Field(default=None, max_length=200)
    # The 3-D Secure authentication this purchase follows, as the network carries it.
    authentication_id: str | None = Field(default=None, max_length=100)


class DeclineReason(StrEnum):
    CARD_PAUSED = "card_paused"
    CARD_CLOSED = "card_closed"
    CURRENCY_MISMATCH = "currency_mismatch"
    BLOCKED_MCC = "blocked_mcc"
    OVER_TRANSACTION_LIMIT = "over_transaction_limit"
    OVER_DAILY_LIMIT = "over_daily_limit"
    OVER_MONTHLY_LIMIT = "over_monthly_limit"
    VELOCITY_COUNT = "velocity_count"
    VELOCITY_AMOUNT = "velocity_amount"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    UNKNOWN_AUTHORIZATION = "unknown_authorization"
    TOO_MANY_OPEN_AUTHORIZATIONS = "too_many_open_authorizations"
    # Asked after the issuer ended it (its stand-in decline, applied first).
    AUTHORIZATION_FINISHED = "authorization_finished"
    # The customer's KYC tier's limits (schemas/card_tiers.py): per purchase,
    # and the month's spend over all their cards.
    OVER_TIER_TRANSACTION_LIMIT = "over_tier_transaction_limit"
    OVER_TIER_MONTHLY_LIMIT = "over_tier_monthly_limit"
    # The card's controls (schemas/card_controls.py), from whichever scope.
    FROZEN_BY_SCHEDULE = "card_frozen_by_schedule"
    MERCHANT_LOCKED = "merchant_locked"
    SINGLE_USE_CARD_USED = "single_use_card_used"
    MCC_NOT_ALLOWED = "mcc_not_allowed"
    COUNTRY_NOT_ALLOWED = "country_not_allowed"
    OVER_WEEKLY_LIMIT = "over_weekly_limit"
    OVER_YEARLY_LIMIT = "over_yearly_limit"
    OVER_LIFETIME_LIMIT = "over_lifetime_limit"
    OVER_COUNT_LIMIT = "over_count_limit"
    OVER_MCC_GROUP_LIMIT = "over_mcc_group_limit"
    # The 3-D Secure authentication it carries failed, timed out or was declined.
    AUTHENTICATION_FAILED = "authentication_failed"
    # An active authorization rule (schemas/auth_rules.py); the answer names it.
    DECLINED_BY_RULE = "declined_by_rule"


# Every reason a card's own answer carries; an issuer record with another
# reason (a stand-in) is not the card's decision.
APPROVED = "approved"
PARTIALLY_APPROVED = "partially_approved"
CARD_REASONS: frozenset[str] = frozenset(
    {APPROVED, PARTIALLY_APPROVED, *(reason.value for reason in DeclineReason)}
)


class AuthorizationAnswer(BaseModel):
    """The card's decision; `reason` is "approved", "partially_approved", a
    DeclineReason value, or the issuer's own decision the card followed."""

    decision: Literal["approve", "decline"]
    approved_amount_minor: int = Field(ge=0)
    reason: str
    # The active rule that declined it (reason `declined_by_rule`), the
    # shadow rules that would have, the rules' source ("program v3",
    # "customer v1", "card") and the customer's KYC tier the card knew.
    rule_id: str | None = None
    shadow_rules: list[str] = Field(default_factory=list)
    rules_version: str | None = None
    segment: KycTier | None = None


class HeldPart(BaseModel):
    """One ledger hold of an authorization (the first, an increment, a rest)."""

    key: str
    amount_minor: int = Field(gt=0)
    decision: int


class DecisionRecord(BaseModel):
    index: int
    kind: str
    requested_minor: int
    approved_minor: int
    reason: str
    # "cardflow" when the card decided; else whoever the issuer says decided.
    decided_by: str = "cardflow"
    # Set once the issuer's own record of this decision was compared with ours.
    reconciled: bool = False
    # The issuer's id of the request this answered, when the card was asked.
    request_id: str | None = None
    # The 3-D Secure authentication the request carried.
    authentication_id: str | None = None
    # The rules' part in it (see AuthorizationAnswer).
    rule_id: str | None = None
    shadow_rules: list[str] = Field(default_factory=list)
    rules_version: str | None = None
    segment: KycTier | None = None


class AuthorizationRecord(BaseModel):
    """An authorization the card holds funds for, until cleared, reversed or expired."""

    authorization_id: str
    merchant: Merchant
    merchant_amount_minor: int
    merchant_currency: Currency
    authorized_minor: int = 0
    cleared_minor: int = 0
    held: list[HeldPart] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    created_at: datetime
    expires_at: datetime
    # Counters that name this authorization's ledger keys and decisions.
    keys_used: int = 0
    next_decision: int = 0
    # Cleared above what was held, posted within the tolerance.
    over_minor: int = 0
    # How much of the issuer's record was already taken in (its decisions plus
    # its history entries), so an older snapshot arriving late is ignored, and
    # the issuer's history entries (advice) applied so far.
    issuer_version: int = 0
    issuer_history_applied: int = 0

    @property
    def held_minor(self) -> int:
        return sum(part.amount_minor for part in self.held)


class Spend(BaseModel):
    at: datetime
    amount_minor: int


class CardException(BaseModel):
    """Money the issuer moved that the card could not mirror on its own."""

    id: str
    # ledger_conflict: the ledger refused one of the event's postings outright
    # (its key already used with another payload); the card carries on and an
    # operator looks at what the event should have moved.
    kind: Literal["over_tolerance", "uncovered", "ledger_conflict"]
    amount_minor: int
    authorization_id: str | None = None
    transaction_id: str | None = None
    detail: str
    resolution: str | None = None
    # Charges of it the wallet could not pay so far: the next charge is a new
    # ledger request (its key names the attempt), never the refusal replayed.
    charges_refused: int = 0


class ExceptionDecision(EdgeModel):
    """An operator's decision on an exception: charge the wallet, write the
    amount off to suspense for investigation, or (a ledger conflict only,
    once it was put right by hand) dismiss it, moving nothing."""

    model_config = ConfigDict(extra="forbid")

    exception_id: str = Field(min_length=1, max_length=200)
    action: Literal["charge", "write_off", "dismiss"]
    reason: str = Field(min_length=1, max_length=200)


class CardNetworkEvent(BaseModel):
    """An issuer webhook about this card's money, as the gateway delivers it."""

    event_id: str
    type: str
    authorization: IssuerAuthorization | None = None
    transaction: IssuerTransaction | None = None
    reversal: IssuerReversal | None = None


class CardInput(BaseModel):
    """The card entity's state, carried across continue-as-new."""

    card_id: str
    customer_id: str
    state: CardState
    currency: Currency = Currency.USD
    limits: SpendingLimits = Field(default_factory=SpendingLimits)
    policy: CardPolicy = Field(default_factory=CardPolicy)
    replaced_by: str | None = None
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows
    # Continue as new past this many history events, carrying the state.
    history_events_max: int = Field(default=5_000, ge=50)
    changes: int = 0
    authorizations: dict[str, AuthorizationRecord] = Field(default_factory=dict)
    # Approvals inside the velocity window, and the day's and month's totals
    # (UTC) the spending limits are checked against.
    recent: list[Spend] = Field(default_factory=list)
    spent_day: str = ""
    spent_day_minor: int = 0
    spent_month: str = ""
    spent_month_minor: int = 0
    exceptions: list[CardException] = Field(default_factory=list)
    # Issuer events already applied (bounded: a fast path only; a repeat of a
    # transaction or reversal after these is stopped by its durable claim).
    seen_events: list[str] = Field(default_factory=list)
    # Authorizations finished (cleared, reversed, expired): a late snapshot of
    # one never reopens it. Bounded, newest last.
    finished_authorizations: list[str] = Field(default_factory=list)
    # Issuer money events this card claimed so far (names each claim).
    events_claimed: int = 0
    # When the card closed (or, in a run started for late money, that run's start).
    closed_at: datetime | None = None
    # Controls as data (schemas/card_controls.py): the card's own, the
    # program's and the customer's as last sent (by scope, newest version),
    # and temporary ones its timers undo.
    controls: Controls = Field(default_factory=Controls)
    scoped_controls: dict[str, ScopedControls] = Field(default_factory=dict)
    temporary_controls: list[TemporaryControl] = Field(default_factory=list)
    # Approvals per window (and MCC group) the window limits are checked against.
    control_spend: dict[str, WindowSpend] = Field(default_factory=dict)
    # The merchant a `first` lock locked the card to (its first approval's).
    locked_merchant: str | None = None
    # Purchases (initial authorizations) approved over the card's life, and
    # whether one has cleared (a single-use card closes after it).
    purchases_approved: int = 0
    cleared_once: bool = False
    # 3-D Secure outcomes, newest last (bounded by the policy's remembered_max).
    authentications: list[AuthenticationRecord] = Field(default_factory=list)
    # For authorization rules: the card's approvals velocity rules look back
    # over, when the card started (its age), and the customer's KYC tier as
    # the card's last hold found it (their segment).
    rule_approvals: list[Approval] = Field(default_factory=list)
    opened_at: datetime | None = None
    customer_tier: KycTier | None = None


class CardReissue(BaseModel):
    """A replacement the issuer made for a lost or stolen card (it closed the
    old one), handed by the old card's entity to the replacement's issuing."""

    # The card it replaces.
    replaces: str
    # The replacement as the issuer answered the reissue.
    card: IssuerCard
    # The replacement's entity, carrying the old card's limits and policy;
    # started once the card is activated.
    entity: CardInput


class CardStateChange(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="customer request", min_length=1, max_length=200)


class DeliveryRescheduleRequest(BaseModel):
    """Ask the issuer to deliver a physical card that has not shipped on a later day."""

    key: str
    card_id: str
    delivery_date: date


class CardActivationRequest(BaseModel):
    """Open a delivered physical card at the issuer."""

    key: str
    card_id: str


class CardReissueRequest(BaseModel):
    """Ask the issuer for a replacement card; it closes the old one."""

    key: str
    card_id: str
    reason: ReissueReason
