"""What cardflow reads from (and sends to) the card issuer's API.

These are cardflow's own view of the issuer, independent of the simulator's
models: when the two drift apart, the client's contract tests fail. Amounts
are strict integers of minor units, so a float from the issuer is a contract
error rather than a silently rounded amount; rates are Decimal.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt

from schemas.edge import ADDRESS_LINE_CHARS_MAX, POSTAL_CODE_CHARS_MAX, EdgeModel, Name
from schemas.money import AMOUNT_MINOR_MAX, Currency, Rate

AmountMinor = Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]
# A change to a held amount may be negative (an advice lowering it).
SignedAmountMinor = Annotated[StrictInt, Field(ge=-AMOUNT_MINOR_MAX, le=AMOUNT_MINOR_MAX)]
# Sums over a program's life (funding, a day's settlement): not an amount
# that moves, so not bounded like one.
TotalMinor = Annotated[StrictInt, Field(ge=0)]
SignedTotalMinor = StrictInt


class CardType(StrEnum):
    VIRTUAL = "virtual"
    PHYSICAL = "physical"


class CardState(StrEnum):
    PENDING_FULFILLMENT = "pending_fulfillment"
    PENDING_ACTIVATION = "pending_activation"
    OPEN = "open"
    PAUSED = "paused"
    CLOSED = "closed"


class ShippingStatus(StrEnum):
    PENDING = "pending"
    SUBMITTED = "submitted"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    RETURNED = "returned"
    FAILURE = "failure"


class ShippingService(StrEnum):
    STANDARD = "standard"
    EXPRESS = "express"


class ReissueReason(StrEnum):
    LOST = "lost"
    STOLEN = "stolen"
    DAMAGED = "damaged"
    EXPIRED = "expired"


class AuthorizationStatus(StrEnum):
    PENDING = "pending"
    DECLINED = "declined"
    CLEARED = "cleared"
    REVERSED = "reversed"
    EXPIRED = "expired"


class DecidedBy(StrEnum):
    CARDFLOW = "cardflow"
    STAND_IN = "stand_in"
    ISSUER = "issuer"


class DecisionOutcome(StrEnum):
    APPROVE = "approve"
    DECLINE = "decline"


class TransactionType(StrEnum):
    CLEARING = "clearing"
    FORCE_POST = "force_post"
    REFUND = "refund"
    CHARGEBACK = "chargeback"


class Direction(StrEnum):
    """Which way money moves for the program: out (debit) or in (credit)."""

    DEBIT = "debit"
    CREDIT = "credit"
    NONE = "none"


class DisputeReason(StrEnum):
    FRAUDULENT = "fraudulent"
    NOT_RECEIVED = "not_received"
    DUPLICATE = "duplicate"
    NOT_AS_DESCRIBED = "not_as_described"
    CANCELED = "canceled"
    OTHER = "other"


class DisputeStatus(StrEnum):
    OPEN = "open"
    REPRESENTMENT = "representment"
    PRE_ARBITRATION = "pre_arbitration"
    WON = "won"
    LOST = "lost"
    WITHDRAWN = "withdrawn"


class DisputeOutcome(StrEnum):
    """What the network may decide on a dispute (sandbox)."""

    WON = "won"
    LOST = "lost"
    REPRESENTMENT = "representment"
    PRE_ARBITRATION = "pre_arbitration"


class EvidenceType(StrEnum):
    RECEIPT = "receipt"
    CORRESPONDENCE = "correspondence"
    CARDHOLDER_STATEMENT = "cardholder_statement"
    SHIPPING_PROOF = "shipping_proof"
    OTHER = "other"


class ProgramBalanceTransactionType(StrEnum):
    """What moved the program's prefunded balance."""

    OPENING = "opening"
    FUNDING = "funding"
    CLEARING = "clearing"
    FORCE_POST = "force_post"
    REFUND = "refund"
    DISPUTE = "dispute"
    FEE = "fee"


class ProgramFundingStatus(StrEnum):
    PENDING = "pending"
    CREDITED = "credited"


class SettlementRecordType(StrEnum):
    CLEARING = "clearing"
    FORCE_POST = "force_post"
    REFUND = "refund"
    CHARGEBACK = "chargeback"
    REVERSAL = "reversal"
    FEE = "fee"


# ----- sent to the issuer and read back ------------------------------------------------


AddressLine = Annotated[str, Field(min_length=1, max_length=ADDRESS_LINE_CHARS_MAX)]


class Address(EdgeModel):
    line1: AddressLine
    line2: AddressLine | None = None
    city: AddressLine
    postal_code: str = Field(min_length=1, max_length=POSTAL_CODE_CHARS_MAX)
    country: str = Field(pattern=r"^[A-Z]{2}$", max_length=2)


class ShippingRequest(EdgeModel):
    """Where a physical card goes; left out, the cardholder's name and address."""

    name: Name | None = None
    address: Address | None = None
    service: ShippingService = ShippingService.STANDARD


class Merchant(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    mcc: str = Field(pattern=r"^[0-9]{4}$", max_length=4)
    country: str = Field(pattern=r"^[A-Z]{2}$", max_length=2)


class DisputeEvidence(BaseModel):
    type: EvidenceType
    description: str
    submitted_at: str | None = None


# ----- read from the issuer ----------------------------------------------------------------


class Cardholder(BaseModel):
    id: str
    first_name: str
    last_name: str
    email: str
    phone_number: str | None = None
    address: Address
    status: str
    created_at: str


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


class Card(BaseModel):
    """A card as cardflow may hold it: last4 and a token, never the number."""

    id: str
    cardholder_id: str
    type: CardType
    currency: Currency
    state: CardState
    state_reason: str | None = None
    last4: str = Field(pattern=r"^[0-9]{4}$")
    token: str
    exp_month: int
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


class AuthorizationDecision(BaseModel):
    kind: str
    requested_amount_minor: AmountMinor
    approved_amount_minor: AmountMinor
    outcome: DecisionOutcome
    decided_by: DecidedBy
    reason: str
    latency_ms: int | None = None
    decided_at: str


class AuthorizationEntry(BaseModel):
    kind: str
    amount_minor: SignedAmountMinor
    pending_amount_minor: AmountMinor
    reference: str | None = None
    at: str


class Authorization(BaseModel):
    id: str
    card_id: str
    cardholder_id: str
    status: AuthorizationStatus
    merchant: Merchant
    merchant_amount_minor: AmountMinor
    merchant_currency: Currency
    conversion_rate: Rate
    currency: Currency
    requested_amount_minor: AmountMinor
    amount_minor: AmountMinor
    pending_amount_minor: AmountMinor
    cleared_amount_minor: AmountMinor
    reversed_amount_minor: AmountMinor
    released_amount_minor: AmountMinor
    partial_approval_capable: bool
    decided_by: DecidedBy
    decision_reason: str
    decisions: list[AuthorizationDecision]
    history: list[AuthorizationEntry]
    created_at: str
    updated_at: str
    expires_at: str


class Transaction(BaseModel):
    id: str
    type: TransactionType
    direction: Direction
    status: str
    card_id: str
    authorization_id: str | None = None
    dispute_id: str | None = None
    refunded_transaction_id: str | None = None
    amount_minor: AmountMinor
    currency: Currency
    merchant_amount_minor: AmountMinor | None = None
    merchant_currency: Currency | None = None
    conversion_rate: Rate | None = None
    merchant: Merchant | None = None
    authorization_status: AuthorizationStatus | None = None
    authorization_pending_amount_minor: AmountMinor | None = None
    released_amount_minor: AmountMinor = 0
    created_at: str


class Reversal(BaseModel):
    id: str
    authorization_id: str
    card_id: str
    amount_minor: AmountMinor
    currency: Currency
    authorization_status: AuthorizationStatus
    authorization_pending_amount_minor: AmountMinor
    created_at: str


class FundingDeposit(BaseModel):
    id: str
    amount_minor: AmountMinor
    currency: Currency
    reference: str
    created_at: str


class FundingBalance(BaseModel):
    currency: Currency
    deposited_minor: TotalMinor
    settled_debits_minor: TotalMinor
    settled_credits_minor: TotalMinor
    fees_minor: TotalMinor
    balance_minor: SignedTotalMinor
    pending_authorizations_minor: TotalMinor
    available_minor: SignedTotalMinor


class RevealToken(BaseModel):
    """A single-use, short-lived token with which the holder's device fetches
    the card's number from the issuer: the number never passes through us."""

    token: str = Field(min_length=1, max_length=100)
    url: str = Field(min_length=1, max_length=500)
    card_id: str
    expires_at: dt.datetime


class FundingSummary(BaseModel):
    """The issuer's account of the program's funding deposits, settled spend
    and fees, per currency (its balance counted from deposits alone)."""

    balances: list[FundingBalance]
    as_of: str

    def balance(self, currency: Currency) -> FundingBalance:
        """The balance in one currency (every currency is listed)."""
        for balance in self.balances:
            if balance.currency == currency:
                return balance
        raise KeyError(currency)


class SettlementRecord(BaseModel):
    record_type: SettlementRecordType
    id: str
    created_at: str
    card_id: str
    authorization_id: str | None = None
    transaction_id: str | None = None
    amount_minor: AmountMinor
    currency: Currency
    direction: Direction


class SettlementTotal(BaseModel):
    currency: Currency
    debits_minor: TotalMinor
    credits_minor: TotalMinor
    net_minor: SignedTotalMinor
    records: int


class SettlementReport(BaseModel):
    settlement_date: dt.date
    records: list[SettlementRecord]
    totals: list[SettlementTotal]


class DisputeEntry(BaseModel):
    status: DisputeStatus
    note: str | None = None
    at: str


class Dispute(BaseModel):
    id: str
    transaction_id: str
    card_id: str
    authorization_id: str | None = None
    reason: DisputeReason
    amount_minor: AmountMinor
    currency: Currency
    status: DisputeStatus
    evidence: list[DisputeEvidence]
    history: list[DisputeEntry]
    chargeback_transaction_id: str | None = None
    created_at: str
    updated_at: str
    closed_at: str | None = None


class AuthorizationPage(BaseModel):
    data: list[Authorization]
    has_more: bool


class TransactionPage(BaseModel):
    data: list[Transaction]
    has_more: bool


# ----- the program's prefunded balance -------------------------------------------------


class ProgramBalance(BaseModel):
    """What the program has prefunded at the issuer in one currency and not
    yet spent; below zero when settlement took more than was funded."""

    currency: Currency
    available_minor: SignedTotalMinor


class ProgramBalanceList(BaseModel):
    data: list[ProgramBalance]


class ProgramBalanceTransaction(BaseModel):
    """One movement of the program's balance: signed, what it added."""

    id: str
    type: ProgramBalanceTransactionType
    amount_minor: SignedTotalMinor
    currency: Currency
    # The transaction, fee or funding behind it; None for the opening balance.
    source_id: str | None = None
    created_at: str


class ProgramBalanceTransactionPage(BaseModel):
    data: list[ProgramBalanceTransaction]
    has_more: bool


class ProgramFunding(BaseModel):
    """The program's wire to its issuer: pending until the issuer credits it
    to the program's balance (by credit_due_at at the latest)."""

    id: str
    status: ProgramFundingStatus
    amount_minor: AmountMinor
    currency: Currency
    reference: str
    created_at: str
    credit_due_at: str
    credited_at: str | None = None


class ProgramFundingPage(BaseModel):
    data: list[ProgramFunding]
    has_more: bool


# ----- 3-D Secure ------------------------------------------------------------------------

AuthenticationStatus = Literal[
    "pending_challenge", "authenticated", "failed", "timed_out", "declined"
]


class Authentication(BaseModel):
    """A 3-D Secure authentication as the issuer keeps it."""

    id: str
    card_id: str
    status: AuthenticationStatus
    merchant: Merchant
    currency: Currency
    amount_minor: int
    decision: Literal["frictionless", "challenge", "decline"] | None
    decided_by: str
    decision_reason: str
    challenge_expires_at: str | None = None
    created_at: str
    completed_at: str | None = None
