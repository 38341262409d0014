"""The simulated card issuer's wire models: every request it accepts and every
answer it gives. Amounts are strict integers of minor units; a float is refused.

These are the issuer's own models. cardflow reads the issuer through
schemas/issuer.py, kept separate on purpose so a change on either side shows
up as a contract failure instead of passing silently.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from schemas.money import Currency, Rate

# One network message never carries more than this (ten billion dollars in
# cents); it keeps every converted amount, even into 6-decimal USDT, far inside
# the ledger's bigint.
MESSAGE_AMOUNT_MINOR_MAX = 10**12
NAME_CHARS_MAX = 100
REASON_CHARS_MAX = 200
EVIDENCE_TEXT_CHARS_MAX = 2_000
EVIDENCE_ITEMS_MAX = 20
ID_CHARS_MAX = 64

AmountMinor = Annotated[StrictInt, Field(gt=0, le=MESSAGE_AMOUNT_MINOR_MAX)]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
ResourceId = Annotated[str, Field(min_length=1, max_length=ID_CHARS_MAX)]


class Input(BaseModel):
    """A request body: unknown fields are refused, so a typo is a 422, not a no-op."""

    model_config = ConfigDict(extra="forbid")


# ----- cardholders -----------------------------------------------------------


class Address(Input):
    line1: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    line2: str | None = Field(default=None, max_length=NAME_CHARS_MAX)
    city: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    postal_code: str = Field(min_length=1, max_length=16)
    country: Country


class CardholderIn(Input):
    first_name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    last_name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    phone_number: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")
    address: Address


class CardholderUpdateIn(Input):
    """What may change about a cardholder once registered (their contact and
    billing details); the name is the verified person's and stays."""

    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)
    phone_number: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$")
    address: Address | None = None


class Cardholder(CardholderIn):
    id: str
    status: Literal["active"]
    created_at: str


# ----- cards -------------------------------------------------------------------

CardType = Literal["virtual", "physical"]
CardState = Literal["pending_fulfillment", "pending_activation", "open", "paused", "closed"]
ShippingStatus = Literal["pending", "submitted", "shipped", "delivered", "returned", "failure"]
ShippingService = Literal["standard", "express"]
ReissueReason = Literal["lost", "stolen", "damaged", "expired"]


class ShippingIn(Input):
    """Where a physical card goes; name and address default to the cardholder's."""

    name: str | None = Field(default=None, min_length=1, max_length=NAME_CHARS_MAX)
    address: Address | None = None
    service: ShippingService = "standard"


class Shipping(BaseModel):
    status: ShippingStatus
    name: str
    address: Address
    service: ShippingService
    carrier: str | None = None
    tracking_number: str | None = None
    eta: dt.date | None = None
    requested_delivery_date: dt.date | None = None
    updated_at: str


class CardIn(Input):
    cardholder_id: ResourceId
    type: CardType
    currency: Currency = Field(description="The card's spend (billing) currency")
    shipping: ShippingIn | None = Field(default=None, validate_default=True)

    @field_validator("shipping")
    @classmethod
    def _only_physical_cards_ship(
        cls, value: ShippingIn | None, info: ValidationInfo
    ) -> ShippingIn | None:
        if info.data.get("type") == "virtual" and value is not None:
            raise ValueError("only physical cards are shipped; leave shipping out")
        return value


class Card(BaseModel):
    """A card as the issuer shows it: last4 and a token, never the full number."""

    id: str
    cardholder_id: str
    type: CardType
    currency: Currency
    state: CardState
    state_reason: str | None = None
    last4: str = Field(pattern=r"^[0-9]{4}$")
    token: str
    exp_month: int = Field(ge=1, le=12)
    exp_year: int
    shipping: Shipping | None = None
    replaces: str | None = None
    replaced_by: str | None = None
    reissue_reason: ReissueReason | None = None
    created_at: str
    updated_at: str
    activated_at: str | None = None
    closed_at: str | None = None


class CardPage(BaseModel):
    data: list[Card]
    has_more: bool


class AuthorizationPage(BaseModel):
    data: list[Authorization]
    has_more: bool


class TransactionPage(BaseModel):
    data: list[Transaction]
    has_more: bool


class CardStateIn(Input):
    """The state asked for: paused (pause), open (resume) or closed (close)."""

    state: Literal["open", "paused", "closed"]
    reason: str | None = Field(default=None, max_length=REASON_CHARS_MAX)


class ReissueIn(Input):
    reason: ReissueReason = "damaged"
    shipping: ShippingIn | None = None


class RescheduleIn(Input):
    delivery_date: dt.date


class ShippingAdvanceIn(Input):
    """The next shipping status; left out, the next step of a normal delivery."""

    status: Literal["submitted", "shipped", "delivered", "returned", "failure"] | None = None
    carrier: str | None = Field(default=None, min_length=1, max_length=NAME_CHARS_MAX)


# ----- authorizations and transactions ------------------------------------------

DecisionOutcome = Literal["approve", "decline"]
DecidedBy = Literal["cardflow", "stand_in", "issuer"]
AuthorizationStatus = Literal["pending", "declined", "cleared", "reversed", "expired"]
RequestKind = Literal["initial", "incremental"]


class Merchant(Input):
    name: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    mcc: str = Field(pattern=r"^[0-9]{4}$", description="ISO 18245 merchant category code")
    country: Country


class AuthorizeIn(Input):
    card_id: ResourceId
    amount_minor: AmountMinor = Field(description="In the merchant's currency")
    currency: Currency = Field(description="The merchant's currency")
    merchant: Merchant
    partial_approval_capable: bool = False
    authentication_id: ResourceId | None = Field(
        default=None, description="The 3-D Secure authentication this purchase follows"
    )


class IncrementIn(Input):
    amount_minor: AmountMinor = Field(description="The increase, in the card's currency")


class AdviceIn(Input):
    pending_amount_minor: AmountMinor = Field(description="The new held amount")
    reason: str = Field(default="merchant advice", min_length=1, max_length=REASON_CHARS_MAX)


class ClearIn(Input):
    amount_minor: AmountMinor | None = Field(
        default=None, description="In the card's currency; left out, all that is pending"
    )
    final: bool = Field(default=False, description="Release whatever stays pending")


class ReverseIn(Input):
    amount_minor: AmountMinor | None = Field(
        default=None, description="Left out, all that is pending"
    )


class MerchantTransactionIn(Input):
    """A refund or a force post: money that moves without an authorization."""

    card_id: ResourceId
    amount_minor: AmountMinor = Field(description="In the merchant's currency")
    currency: Currency = Field(description="The merchant's currency")
    merchant: Merchant
    refunded_transaction_id: ResourceId | None = Field(
        default=None, description="Refunds only: the purchase being refunded, when known"
    )


class GatewayAnswer(BaseModel):
    """cardflow's answer to a real-time authorization request."""

    decision: DecisionOutcome
    approved_amount_minor: StrictInt | None = Field(default=None, ge=0)
    reason: str = Field(max_length=REASON_CHARS_MAX)


class AuthorizationRequestData(BaseModel):
    """What the issuer asks cardflow's gateway in real time."""

    authorization_id: str
    kind: RequestKind
    card_id: str
    cardholder_id: str
    amount_minor: int = Field(description="Asked for now, in the card's currency")
    currency: Currency
    merchant_amount_minor: int
    merchant_currency: Currency
    conversion_rate: Rate
    merchant: Merchant
    partial_approval_capable: bool
    pending_amount_minor: int = Field(description="Held before this request")
    # The 3-D Secure authentication the purchase follows, as the network carries it.
    authentication_id: str | None = None


class Decision(BaseModel):
    kind: RequestKind
    requested_amount_minor: int
    approved_amount_minor: int
    outcome: DecisionOutcome
    decided_by: DecidedBy
    reason: str
    latency_ms: int | None = None
    decided_at: str


class AuthorizationEntry(BaseModel):
    """One change to an authorization's amounts, with what it left pending."""

    kind: Literal["authorization", "increment", "advice", "clearing", "reversal", "expiry"]
    amount_minor: int
    pending_amount_minor: int
    reference: str | None = None
    at: str


class Authorization(BaseModel):
    id: str
    card_id: str
    cardholder_id: str
    status: AuthorizationStatus
    merchant: Merchant
    merchant_amount_minor: int
    merchant_currency: Currency
    conversion_rate: Rate
    currency: Currency
    requested_amount_minor: int
    amount_minor: int = Field(description="Approved in total: first answer, increments, advice")
    pending_amount_minor: int
    cleared_amount_minor: int = 0
    reversed_amount_minor: int = 0
    released_amount_minor: int = 0
    partial_approval_capable: bool
    decided_by: DecidedBy
    decision_reason: str
    decisions: list[Decision]
    history: list[AuthorizationEntry]
    created_at: str
    updated_at: str
    expires_at: str
    authentication_id: str | None = None


# ----- 3-D Secure -------------------------------------------------------------------

AuthenticationDecision = Literal["frictionless", "challenge", "decline"]
AuthenticationStatus = Literal[
    "pending_challenge", "authenticated", "failed", "timed_out", "declined"
]
ChallengeOutcome = Literal["authenticated", "failed", "timed_out"]


class AuthenticateIn(Input):
    """A merchant's checkout asks the issuer to authenticate the cardholder."""

    card_id: ResourceId
    amount_minor: AmountMinor = Field(description="In the merchant's currency")
    currency: Currency = Field(description="The merchant's currency")
    merchant: Merchant


class AuthenticationRequestData(BaseModel):
    """What the issuer asks cardflow's gateway in real time for 3-D Secure."""

    authentication_id: str
    card_id: str
    cardholder_id: str
    amount_minor: int = Field(description="In the card's currency")
    currency: Currency
    merchant_amount_minor: int
    merchant_currency: Currency
    conversion_rate: Rate
    merchant: Merchant
    challenge_expires_at: str = Field(description="Until when a challenge's outcome is taken")


class AuthenticationGatewayAnswer(BaseModel):
    """cardflow's answer to a real-time 3-D Secure request."""

    decision: AuthenticationDecision
    reason: str = Field(max_length=REASON_CHARS_MAX)


class ChallengeResponseIn(Input):
    """The program reports how the cardholder answered the challenge."""

    outcome: ChallengeOutcome


class Authentication(BaseModel):
    id: str
    card_id: str
    cardholder_id: str
    status: AuthenticationStatus
    merchant: Merchant
    merchant_amount_minor: int
    merchant_currency: Currency
    conversion_rate: Rate
    currency: Currency
    amount_minor: int
    decision: AuthenticationDecision | None
    decided_by: DecidedBy
    decision_reason: str
    latency_ms: int | None = None
    challenge_expires_at: str | None = None
    created_at: str
    updated_at: str
    completed_at: str | None = None


TransactionType = Literal["clearing", "force_post", "refund", "chargeback"]


class Transaction(BaseModel):
    id: str
    type: TransactionType
    direction: Literal["debit", "credit"]
    status: Literal["settled"]
    card_id: str
    authorization_id: str | None = None
    dispute_id: str | None = None
    refunded_transaction_id: str | None = None
    amount_minor: int
    currency: Currency
    merchant_amount_minor: int | None = None
    merchant_currency: Currency | None = None
    conversion_rate: Rate | None = None
    merchant: Merchant | None = None
    authorization_status: AuthorizationStatus | None = None
    authorization_pending_amount_minor: int | None = None
    released_amount_minor: int = 0
    created_at: str
    # The UTC day whose settlement report lists it: the day it happened
    # (None), or a later one when the issuer settles it late.
    settlement_date: dt.date | None = None


class Reversal(BaseModel):
    id: str
    authorization_id: str
    card_id: str
    amount_minor: int
    currency: Currency
    authorization_status: AuthorizationStatus
    authorization_pending_amount_minor: int
    created_at: str


class Fee(BaseModel):
    id: str
    type: Literal["currency_conversion", "card_production"]
    card_id: str
    authorization_id: str | None = None
    transaction_id: str | None = None
    amount_minor: int
    currency: Currency
    created_at: str


# ----- program funding and reports ------------------------------------------------


class FundingDepositIn(Input):
    amount_minor: AmountMinor
    currency: Currency
    reference: str = Field(min_length=1, max_length=140)


class FundingDeposit(FundingDepositIn):
    id: str
    created_at: str


class FundingBalance(BaseModel):
    currency: Currency
    deposited_minor: int
    settled_debits_minor: int
    settled_credits_minor: int
    fees_minor: int
    balance_minor: int = Field(description="deposited - debits + credits - fees")
    pending_authorizations_minor: int
    available_minor: int = Field(description="balance - pending authorizations")


class ProgramFunding(BaseModel):
    balances: list[FundingBalance]
    as_of: str


# ----- the program's prefunded balance ---------------------------------------------

ProgramBalanceTransactionType = Literal[
    "opening", "funding", "clearing", "force_post", "refund", "dispute", "fee"
]
ProgramFundingStatus = Literal["pending", "credited"]
FUNDING_REFERENCE_CHARS_MAX = 140


class ProgramBalance(BaseModel):
    """What the program has prefunded at the issuer in one currency and not
    yet spent; it may be below zero (settlement is never refused)."""

    currency: Currency
    available_minor: int


class ProgramBalanceList(BaseModel):
    data: list[ProgramBalance]


class ProgramBalanceTransaction(BaseModel):
    """One movement of the program's balance, and what caused it."""

    id: str
    type: ProgramBalanceTransactionType
    amount_minor: int = Field(description="Signed: what it added to the balance")
    currency: Currency
    source_id: str | None = Field(
        description="The transaction, fee or funding behind it; None for the opening balance"
    )
    created_at: str


class ProgramBalanceTransactionPage(BaseModel):
    data: list[ProgramBalanceTransaction]
    has_more: bool


class FundingTransferIn(Input):
    """The program sends money to its issuer (a bank wire)."""

    amount_minor: AmountMinor
    currency: Currency
    reference: str = Field(min_length=1, max_length=FUNDING_REFERENCE_CHARS_MAX)


class FundingTransfer(FundingTransferIn):
    """A program funding: pending while the wire is on its way, then credited
    to the program's balance."""

    id: str
    status: ProgramFundingStatus
    created_at: str
    credit_due_at: str = Field(description="When the issuer credits it at the latest")
    credited_at: str | None = None


class FundingTransferPage(BaseModel):
    data: list[FundingTransfer]
    has_more: bool


SettlementRecordType = Literal["clearing", "force_post", "refund", "chargeback", "reversal", "fee"]


class SettlementRecord(BaseModel):
    record_type: SettlementRecordType
    id: str
    created_at: str
    card_id: str
    authorization_id: str | None
    transaction_id: str | None
    amount_minor: int
    currency: Currency
    direction: Literal["debit", "credit", "none"]


class SettlementTotal(BaseModel):
    currency: Currency
    debits_minor: int
    credits_minor: int
    net_minor: int = Field(description="credits - debits: what the program gained that day")
    records: int


class SettlementReport(BaseModel):
    settlement_date: dt.date
    records: list[SettlementRecord]
    totals: list[SettlementTotal]


# ----- disputes ----------------------------------------------------------------------

DisputeReason = Literal[
    "fraudulent", "not_received", "duplicate", "not_as_described", "canceled", "other"
]
DisputeStatus = Literal["open", "representment", "pre_arbitration", "won", "lost", "withdrawn"]
DisputeOutcome = Literal["won", "lost", "representment", "pre_arbitration"]


class EvidenceIn(Input):
    type: Literal["receipt", "correspondence", "cardholder_statement", "shipping_proof", "other"]
    description: str = Field(min_length=1, max_length=EVIDENCE_TEXT_CHARS_MAX)


class Evidence(EvidenceIn):
    submitted_at: str


class DisputeIn(Input):
    transaction_id: ResourceId
    reason: DisputeReason
    amount_minor: AmountMinor | None = Field(
        default=None, description="Left out, the whole transaction"
    )
    evidence: list[EvidenceIn] = Field(default_factory=list, max_length=EVIDENCE_ITEMS_MAX)


class EvidenceAddIn(Input):
    evidence: list[EvidenceIn] = Field(min_length=1, max_length=EVIDENCE_ITEMS_MAX)


class DisputeDecisionIn(Input):
    outcome: DisputeOutcome
    note: str | None = Field(default=None, max_length=REASON_CHARS_MAX)


class DisputeEntry(BaseModel):
    status: DisputeStatus
    note: str | None = None
    at: str


class Dispute(BaseModel):
    id: str
    transaction_id: str
    card_id: str
    authorization_id: str | None
    reason: DisputeReason
    amount_minor: int
    currency: Currency
    status: DisputeStatus
    evidence: list[Evidence]
    history: list[DisputeEntry]
    chargeback_transaction_id: str | None = None
    created_at: str
    updated_at: str
    closed_at: str | None = None
