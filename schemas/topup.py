"""Top-ups `topup/{source}/{external_ref}`: a bank transfer or a USDT-TRC20
deposit credited to a customer's wallet.

Matching: a bank transfer belongs to the customer whose id is the payer's
reference, exactly (surrounding spaces aside); a USDT deposit belongs to the
customer the deposit address was made for. Either way the customer must be
approved and hold an open wallet in the credited currency; otherwise the
top-up waits for an operator's review, which assigns a customer or rejects.

Limits are per currency of the money received (USDT for a deposit): a
minimum and maximum per top-up and a maximum per customer per UTC day,
counted over what was reserved or credited that day. Fees are per source: a
fixed part per credited currency plus basis points of the credited amount,
rounded down, charged from the wallet in the same atomic batch as the credit.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from schemas.customers import CustomerId, KycTier
from schemas.edge import TEXT_CHARS_MAX, EdgeModel
from schemas.money import AMOUNT_MINOR_MAX, Currency, Money
from schemas.providers import BANK, TRON
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.tron import Deposit
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS, HOUR_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

TopupSource = Literal["bank", "usdt"]
TOPUP_SOURCES: tuple[TopupSource, ...] = ("bank", "usdt")
# The provider each source's money comes through (the PROVIDER search attribute).
SOURCE_PROVIDER: dict[TopupSource, str] = {"bank": BANK, "usdt": TRON}
# Bank transfer ids and Tron transaction hashes both fit this.
EXTERNAL_REF_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
ExternalRef = Annotated[str, Field(pattern=EXTERNAL_REF_PATTERN)]
PositiveAmountMinor = Annotated[StrictInt, Field(gt=0, le=AMOUNT_MINOR_MAX)]


class TopupFee(BaseModel):
    """A fixed part per credited currency plus basis points of the credit."""

    model_config = ConfigDict(extra="forbid")

    bps: int = Field(default=0, ge=0, le=BASIS_POINTS_PER_UNIT)
    fixed_minor: dict[Currency, Annotated[int, Field(ge=0, le=AMOUNT_MINOR_MAX)]] = Field(
        default_factory=dict
    )

    def fee_minor(self, credited_minor: int, currency: Currency) -> int:
        """The fee on a credit: fixed plus bps rounded down (in the customer's
        favour), never more than the credit itself."""
        fee = self.fixed_minor.get(currency, 0) + credited_minor * self.bps // BASIS_POINTS_PER_UNIT
        return min(fee, credited_minor)


class TopupLimits(BaseModel):
    """Per currency, in its minor units."""

    model_config = ConfigDict(extra="forbid")

    min_minor: int = Field(ge=1, le=AMOUNT_MINOR_MAX)
    max_minor: int = Field(ge=1, le=AMOUNT_MINOR_MAX)
    daily_max_minor: int = Field(ge=1, le=AMOUNT_MINOR_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> TopupLimits:
        if self.min_minor > self.max_minor:
            raise ValueError("min_minor must not exceed max_minor")
        return self


def _default_limits() -> dict[Currency, TopupLimits]:  # pragma: no mutate block
    def per(unit: int) -> TopupLimits:
        # 1 unit minimum, 10,000 units per top-up, 25,000 units per day.
        return TopupLimits(min_minor=unit, max_minor=10_000 * unit, daily_max_minor=25_000 * unit)

    return {
        Currency.USD: per(100),
        Currency.EUR: per(100),
        Currency.GBP: per(100),
        Currency.JPY: TopupLimits(min_minor=150, max_minor=1_500_000, daily_max_minor=3_750_000),
        Currency.USDT: per(1_000_000),
    }


class TierTopupLimits(BaseModel):
    """What a KYC tier lets a wallet receive, in the top-up's currency's minor
    units: its balance after the credit (a wallet's cap; not for USDT, whose
    credit lands in another currency) and its top-ups in a calendar month."""

    model_config = ConfigDict(extra="forbid")

    balance_cap_minor: int | None = Field(default=None, ge=0, le=AMOUNT_MINOR_MAX)
    monthly_load_minor: int = Field(ge=0, le=AMOUNT_MINOR_MAX)


def _default_tier_limits() -> dict[
    KycTier, dict[Currency, TierTopupLimits]
]:  # pragma: no mutate block
    def each(cap: int, monthly: int) -> dict[Currency, TierTopupLimits]:
        units = {Currency.USD: 100, Currency.EUR: 100, Currency.GBP: 100, Currency.JPY: 150}
        found = {
            currency: TierTopupLimits(
                balance_cap_minor=cap * unit, monthly_load_minor=monthly * unit
            )
            for currency, unit in units.items()
        }
        found[Currency.USDT] = TierTopupLimits(monthly_load_minor=monthly * 1_000_000)
        return found

    return {
        KycTier.BASIC: each(1_000, 1_000),
        KycTier.STANDARD: each(100_000, 100_000),
        KycTier.ENHANCED: each(1_000_000, 1_000_000),
    }


def _default_fees() -> dict[TopupSource, TopupFee]:  # pragma: no mutate block
    return {
        "bank": TopupFee(
            bps=20,
            fixed_minor={Currency.USD: 25, Currency.EUR: 25, Currency.GBP: 25, Currency.JPY: 40},
        ),
        "usdt": TopupFee(bps=100),
    }


class TopupPolicy(BaseModel):
    """Every limit and wait of a top-up, so tests run the same code in seconds."""

    model_config = ConfigDict(extra="forbid")

    fees: dict[TopupSource, TopupFee] = Field(default_factory=_default_fees)
    # A currency left out has no limits configured: its top-ups go to review.
    limits: dict[Currency, TopupLimits] = Field(default_factory=_default_limits)
    # The customer's KYC tier's caps; over one, an operator reviews it.
    tier_limits: dict[KycTier, dict[Currency, TierTopupLimits]] = Field(
        default_factory=_default_tier_limits
    )
    # A deposit is credited once it has this many confirmations or the chain
    # calls it finalized (Tron's finality is 19 blocks), whichever comes first.
    confirmations_required: int = Field(default=19, ge=1, le=1_000)
    # A deposit neither final nor dropped after this long ends uncredited.
    confirmation_wait_seconds: int = Field(default=DAY_SECONDS, ge=1)
    # The bank transfer or first deposit snapshot arrives with the start; this
    # bounds a start that came without one.
    source_wait_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    review_wait_seconds: int = Field(default=3 * DAY_SECONDS, ge=1)
    # A quote with less life left than this is not posted; a new one is taken.
    quote_remaining_seconds_min: int = Field(default=5, ge=0, le=HOUR_SECONDS)
    quote_attempts_max: int = Field(default=10, ge=1, le=100)
    # Seconds between quotes when one came back too short-lived.
    requote_delay_seconds: int = Field(default=1, ge=0, le=60)
    # The "top-up credited" receipt: attempts before a provider that keeps
    # failing counts as a permanent failure (None: retry transient failures
    # for as long as they last; a 4xx refusal is permanent at once).
    receipt_attempts_max: int | None = Field(default=None, ge=1, le=1_000)
    # Collecting a recorded debt from the credit: a refusal (another top-up
    # collected first, or a card payment spent the credit) re-reads the
    # balances and tries again with what is left, at most this many times.
    debt_collection_attempts_max: int = Field(default=3, ge=1, le=10)

    def fee_minor(self, source: TopupSource, credited_minor: int, currency: Currency) -> int:
        """The fee on a credit from `source`; none when the policy names no fee for it."""
        return self.fees.get(source, TopupFee()).fee_minor(credited_minor, currency)


class TopupInput(BaseModel):
    """What starts a top-up; the bank transfer or deposit snapshot arrives as
    the start signal (signal-with-start), from the gateway or a starter."""

    model_config = ConfigDict(extra="forbid", str_max_length=TEXT_CHARS_MAX)

    source: TopupSource
    external_ref: ExternalRef
    # USDT only: the wallet the deposit is converted into.
    wallet_currency: Currency = Currency.USD
    policy: TopupPolicy = Field(default_factory=TopupPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows

    @field_validator("wallet_currency")
    @classmethod
    def _wallet_is_fiat(cls, currency: Currency) -> Currency:
        if currency is Currency.USDT:
            raise ValueError("a wallet is in a fiat currency, not USDT")
        return currency


class BankTopupRequest(BaseModel):
    """A bank transfer to simulate (CLI, demo): who, how much, which currency."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    amount_minor: PositiveAmountMinor
    currency: Currency = Currency.USD

    @field_validator("currency")
    @classmethod
    def _fiat(cls, currency: Currency) -> Currency:
        if currency is Currency.USDT:
            raise ValueError("a bank transfer is in a fiat currency, not USDT")
        return currency


class DepositRequest(BaseModel):
    """A USDT deposit to simulate (CLI, demo), in micro-USDT."""

    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    amount_minor: PositiveAmountMinor


class TopupReview(EdgeModel):
    """An operator's decision on a top-up in review. Approving an unmatched
    transfer assigns it to `customer_id`."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str = Field(min_length=3, max_length=500)
    operator: str = Field(min_length=1, max_length=100)
    customer_id: CustomerId | None = None


ReviewKind = Literal["unmatched", "limit"]


class PendingReview(BaseModel):
    kind: ReviewKind
    reason: str


TopupOutcome = Literal["credited", "rejected", "expired", "dropped", "reversed", "reversal_failed"]


class TopupResult(BaseModel):
    workflow_id: str
    source: TopupSource
    external_ref: str
    outcome: TopupOutcome
    reason: str = ""
    customer_id: str | None = None
    # What was received, in its own currency (micro-USDT for a deposit).
    amount_minor: int = 0
    currency: Currency | None = None
    # What the wallet got before the fee, and the fee, in the wallet's currency.
    credited_minor: int = 0
    fee_minor: int = 0
    # Of the credit net of fee: what repaid the customer's recorded debt
    # (customer:{id}:debt:{CCY}), wallet -> debt account.
    debt_collected_minor: int = 0
    wallet_currency: Currency | None = None
    quote_id: str | None = None
    quotes_taken: int = 0
    reviewed_by: str | None = None
    # After a failure past the credit: what the reversal did, for an operator.
    compensation: str = ""


class TopupStatus(BaseModel):
    workflow_id: str
    source: TopupSource | None
    external_ref: str
    stage: str
    customer_id: str | None
    amount_minor: int | None
    currency: Currency | None
    confirmations: int | None = None
    confirmations_required: int | None = None
    pending_review: PendingReview | None = None
    credited_minor: int = 0
    fee_minor: int = 0
    debt_collected_minor: int = 0
    outcome: TopupOutcome | None = None
    compensation: str = ""


# ----- activity contracts (ledger queue: the customer match, daily usage) ----


class CustomerMatchRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The payer's reference (bank) or the address owner's id (USDT).
    reference: str = Field(max_length=200)
    currency: Currency
    # The system accounts the credit will use: the answer says which are not open.
    system_accounts: list[str] = Field(default_factory=list, max_length=32)


class CustomerMatch(BaseModel):
    customer_id: str | None
    # Why there is no match (for the operator), empty on a match.
    reason: str = ""
    missing_accounts: list[str] = Field(default_factory=list)
    # The customer's recorded debt in the currency (0 when none), read in the
    # same round trip, so a top-up of a customer without debt pays nothing
    # more for debt collection.
    debt_outstanding_minor: int = Field(default=0, ge=0)


class UsageReservation(BaseModel):
    """Count `amount_minor` against the customer's daily limit, once per top-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topup_id: str = Field(min_length=1, max_length=200)
    customer_id: CustomerId
    currency: Currency
    amount_minor: PositiveAmountMinor
    day: date
    daily_max_minor: int = Field(ge=0, le=AMOUNT_MINOR_MAX)
    # An operator approved going over the limit.
    force: bool = False
    # The KYC tiers' caps (the customer's tier is read with the usage).
    tier_limits: dict[KycTier, dict[Currency, TierTopupLimits]] = Field(default_factory=dict)


class UsageDecision(BaseModel):
    reserved: bool
    # Reserved or credited for the customer that day before this top-up.
    used_minor: int
    daily_max_minor: int
    # Why it was not reserved, when a tier's cap said no (else the day's limit).
    over: str | None = None


UsageStatus = Literal["credited", "released"]


class UsageStatusChange(BaseModel):
    """Mark a top-up's usage credited, or released so it no longer counts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topup_id: str = Field(min_length=1, max_length=200)
    status: UsageStatus


class ReceiptRequest(BaseModel):
    """The "top-up credited" message, with how many attempts it may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1, max_length=200)
    customer_id: CustomerId
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=2_000)
    attempts_max: int | None = Field(default=None, ge=1)


def describe(amount_minor: int, currency: Currency) -> str:
    """ "12.34 USD": amounts as people read them, for details and messages."""
    return str(Money(amount_minor=amount_minor, currency=currency))


def deposit_rank(deposit: Deposit) -> tuple[int, int]:
    """How far a deposit has come: finalized beats dropped (a final deposit
    cannot be dropped), both beat confirming, and more confirmations beat fewer."""
    if deposit.status == "finalized":
        return (3, deposit.confirmations)
    if deposit.status == "dropped":
        return (2, 0)
    return (1, deposit.confirmations)
