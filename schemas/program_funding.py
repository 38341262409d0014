"""Program funding `program-funding`: the scheduled run that keeps the card
program funded at the issuer and reconciles the bank account and custody.
Its input and policy, what its activities read and answer, its report, and
the rules it decides by (pure functions, no I/O).

Money is integer minor units; the safety factor and the coverage are basis
points; every division rounds explicitly (up where a smaller figure would
under-fund the program).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.bank import BENEFICIARY_NAME_CHARS_MAX, Iban, StatementLineKind
from schemas.edge import EdgeModel
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.reconciliation import OPERATORS_EMAIL_DEFAULT
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

SPEND_WINDOW_DAYS_MAX = 366
WIRE_LEAD_DAYS_MAX = 30
SAFETY_FACTOR_BPS_MAX = 100 * BASIS_POINTS_PER_UNIT
PENDING_LOOKBACK_DAYS_MAX = 366
STATEMENT_GRACE_SECONDS_MAX = 30 * DAY_SECONDS
# Fundings wired within the look-back that one run asks the issuer about,
# newest first: a run funds at most once per currency, so a handful.
PENDING_FUNDINGS_CHECKED_MAX = 50
# Drift items one run lists per currency (every drifting line is counted).
DRIFT_ITEMS_MAX = 50
# The coverage shown and recorded is capped here (100 times the customers'
# money), and is this when customers hold nothing: covered, however much.
COVERAGE_BPS_MAX = 100 * BASIS_POINTS_PER_UNIT
# The issuer's account the program's wires go to, unless the policy names another.
ISSUER_ACCOUNT_IBAN_DEFAULT = "GB33BUKB20201555555555"
ISSUER_ACCOUNT_NAME_DEFAULT = "Card issuer, program funding account"

# How a run ends (its ProcessStatus), most urgent first: a run that finds
# several ends with the first, and its details and report say every one.
STATUS_COVERAGE_LOW = "coverage low"
STATUS_FUNDING_REFUSED = "funding refused"
STATUS_DRIFT = "drift"
STATUS_FUNDED = "funded"
STATUS_COVERED = "covered"

MinorPositive = Annotated[int, Field(ge=1, le=AMOUNT_MINOR_MAX)]


def _default_currencies() -> list[Currency]:
    return [Currency.USD, Currency.EUR]


def _default_steps() -> dict[Currency, int]:
    # Wires of whole 10,000.00 units: fewer, rounder wires for the bank.
    return {Currency.USD: 1_000_000, Currency.EUR: 1_000_000}


def _default_funding_max() -> dict[Currency, int]:
    # 100,000,000.00: more is an operator's decision, not a scheduled run's.
    return {Currency.USD: 10**10, Currency.EUR: 10**10}


class IssuerAccount(EdgeModel):
    """The issuer's bank account the program's wires are paid to."""

    model_config = ConfigDict(extra="forbid")

    iban: Iban = ISSUER_ACCOUNT_IBAN_DEFAULT
    name: str = Field(
        default=ISSUER_ACCOUNT_NAME_DEFAULT, min_length=1, max_length=BENEFICIARY_NAME_CHARS_MAX
    )


class ProgramFundingPolicy(EdgeModel):
    """Every threshold and window of a run."""

    model_config = ConfigDict(extra="forbid")

    # The card currencies the program keeps funded at the issuer.
    currencies: list[Currency] = Field(
        default_factory=_default_currencies, max_length=len(Currency)
    )
    # The spend rate is what cards cleared over this many days, per day.
    spend_window_days: int = Field(default=7, ge=1, le=SPEND_WINDOW_DAYS_MAX)
    # Days a wire takes to reach the issuer: the spend the balance must cover meanwhile.
    wire_lead_days: int = Field(default=2, ge=0, le=WIRE_LEAD_DAYS_MAX)
    # Target = customers' money + spend per day x lead days x this.
    safety_factor_bps: int = Field(
        default=15_000, ge=BASIS_POINTS_PER_UNIT, le=SAFETY_FACTOR_BPS_MAX
    )
    # A funding is the shortfall rounded up to the currency's step, at most its max.
    funding_step_minor: dict[Currency, MinorPositive] = Field(default_factory=_default_steps)
    funding_max_minor: dict[Currency, MinorPositive] = Field(default_factory=_default_funding_max)
    # Coverage (issuer balance / customers' money) under this is an alert.
    coverage_alert_bps: int = Field(default=BASIS_POINTS_PER_UNIT, ge=0, le=COVERAGE_BPS_MAX)
    # Fundings wired this recently are asked about: still pending at the issuer?
    pending_lookback_days: int = Field(default=14, ge=1, le=PENDING_LOOKBACK_DAYS_MAX)
    # The bank account's currencies whose statement is reconciled.
    bank_currencies: list[Currency] = Field(
        default_factory=_default_currencies, max_length=len(Currency)
    )
    # A statement line younger than this is in flight, not drift: its top-up
    # may wait for an operator, its withdrawal for the bank's word.
    statement_grace_seconds: int = Field(default=DAY_SECONDS, ge=0, le=STATEMENT_GRACE_SECONDS_MAX)
    # What custody holds of the program's own, which no customer's money
    # explains (the custodian's opening float): left out of the comparison.
    custody_opening_minor: int = Field(default=0, ge=0, le=AMOUNT_MINOR_MAX)
    issuer_account: IssuerAccount = Field(default_factory=IssuerAccount)

    def step_minor(self, currency: Currency) -> int:
        return self.funding_step_minor.get(currency, 1)

    def funding_cap_minor(self, currency: Currency) -> int:
        return self.funding_max_minor.get(currency, AMOUNT_MINOR_MAX)


class ProgramFundingInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    policy: ProgramFundingPolicy = Field(default_factory=ProgramFundingPolicy)
    # Told by e-mail (the notification provider's channel) when a run alerts.
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


# ----- ids and keys ------------------------------------------------------------------
#
# A funding's id is its run's workflow id and its currency: the reference of
# the bank's wire and of the issuer's funding, and the root of every key of
# it, so a run started again under its id finds (by reference) and repeats
# (by key) what it already did, never a second wire.


def funding_reference(workflow_id: str, currency: Currency) -> str:
    return f"{workflow_id}/{currency.value}"


def wire_posting_key(reference: str) -> str:
    """The ledger transfer of the wire: issuer:prefunding <- bank:outbound."""
    return f"{reference}/wire"


def wire_payout_key(reference: str) -> str:
    """The bank's idempotency key of the wire."""
    return f"{reference}/payout"


def announcement_key(reference: str) -> str:
    """The issuer's idempotency key of the funding announced."""
    return f"{reference}/issuer"


WIRE_POSTING_SUFFIX = wire_posting_key("")


# ----- the rules -------------------------------------------------------------------


def _ceil_div(numerator: int, denominator: int) -> int:
    assert denominator > 0, "a division by a count of days or a step"
    return -(-numerator // denominator)


def spend_per_day_minor(spend_minor: int, days: int) -> int:
    """The window's spend per day, rounded up."""
    return _ceil_div(max(spend_minor, 0), days)


def target_minor(customers_minor: int, spend_per_day: int, policy: ProgramFundingPolicy) -> int:
    """What the issuer should hold: the customers' money, and the spend of
    the wire's lead days times the safety factor (rounded up)."""
    buffer = _ceil_div(
        spend_per_day * policy.wire_lead_days * policy.safety_factor_bps, BASIS_POINTS_PER_UNIT
    )
    return max(customers_minor, 0) + buffer


def funding_minor(shortfall_minor: int, step_minor: int, cap_minor: int) -> int:
    """The wire for a shortfall: rounded up to the step, at most the cap; 0 for none."""
    if shortfall_minor <= 0:
        return 0
    return min(_ceil_div(shortfall_minor, step_minor) * step_minor, cap_minor)


def coverage_bps(balance_minor: int, customers_minor: int) -> int:
    """The issuer's balance over the customers' money in basis points,
    rounded down and capped at COVERAGE_BPS_MAX (which it is when customers
    hold nothing)."""
    if customers_minor <= 0:
        return COVERAGE_BPS_MAX
    return min(balance_minor * BASIS_POINTS_PER_UNIT // customers_minor, COVERAGE_BPS_MAX)


# ----- the ledger's and the providers' side ------------------------------------------


class LedgerPositionRequest(BaseModel):
    currencies: list[Currency]
    as_of: datetime
    spend_since: datetime
    fundings_since: datetime


class CurrencyLedgerPosition(BaseModel):
    currency: Currency
    # Every customer wallet's posted balance (what card holds reserve included).
    customers_minor: int
    # Card postings from wallets to issuer:settlement since spend_since.
    spend_minor: int


class WiredFunding(BaseModel):
    """A funding whose wire the ledger has posted."""

    reference: str
    currency: Currency
    amount_minor: int


class LedgerPosition(BaseModel):
    currencies: list[CurrencyLedgerPosition]
    # Wired since fundings_since, newest first, at most PENDING_FUNDINGS_CHECKED_MAX.
    fundings: list[WiredFunding]


class IssuerPositionRequest(BaseModel):
    currencies: list[Currency]
    references: list[str] = Field(max_length=PENDING_FUNDINGS_CHECKED_MAX)


FundingState = Literal["pending", "credited", "not_announced"]


class IssuerFunding(BaseModel):
    reference: str
    state: FundingState
    funding_id: str | None = None
    amount_minor: int = 0


class IssuerPosition(BaseModel):
    balances: dict[Currency, int]
    fundings: list[IssuerFunding]


class WireRequest(BaseModel):
    reference: str
    key: str
    amount_minor: int = Field(ge=1, le=AMOUNT_MINOR_MAX)
    currency: Currency
    iban: str
    name: str


class Wire(BaseModel):
    """The bank's payout of a funding: made now or found by its reference."""

    payout_id: str
    amount_minor: int
    status: str


class FundingAnnouncement(BaseModel):
    reference: str
    key: str
    amount_minor: int = Field(ge=1, le=AMOUNT_MINOR_MAX)
    currency: Currency


class Announced(BaseModel):
    """The issuer's funding: made now or found by its reference."""

    funding_id: str
    status: Literal["pending", "credited"]
    amount_minor: int


class BankCheckRequest(BaseModel):
    currencies: list[Currency]
    as_of: datetime
    grace_seconds: int


class BankDriftKind(StrEnum):
    """How a statement line differs from the ledger."""

    INBOUND_NOT_CREDITED = "inbound_not_credited"
    INBOUND_AMOUNT_DIFFERS = "inbound_amount_differs"
    PAYOUT_NOT_POSTED = "payout_not_posted"
    PAYOUT_AMOUNT_DIFFERS = "payout_amount_differs"
    RETURN_NOT_CREDITED = "return_not_credited"
    RETURN_AMOUNT_DIFFERS = "return_amount_differs"


class BankDrift(BaseModel):
    """One movement of the bank account the ledger lacks or has otherwise."""

    kind: BankDriftKind
    line_id: str
    line_kind: StatementLineKind
    # The inbound transfer or payout (ibt_..., po_...) and its reference.
    source_id: str
    reference: str
    # Signed as the statement signs it: + into the account, - out of it.
    bank_minor: int
    ledger_minor: int
    at: str


class BankCheck(BaseModel):
    """A currency's statement against the ledger: each line matched, in
    flight (younger than the grace, or a payout whose hold is still open),
    or drift, counted by kind; the first DRIFT_ITEMS_MAX drifts listed."""

    currency: Currency
    lines: int = 0
    matched: int = 0
    in_flight: int = 0
    drift_counts: dict[BankDriftKind, int] = Field(default_factory=dict)
    drift: list[BankDrift] = Field(default_factory=list)

    @property
    def drift_lines(self) -> int:
        return sum(self.drift_counts.values())


class CustodyCheckRequest(BaseModel):
    opening_minor: int


class CustodyCheck(BaseModel):
    """The custodian's balance against crypto:custody:USDT (which deposits
    debit: the ledger's holding is its debits less its credits)."""

    currency: Currency = Currency.USDT
    custodian_minor: int
    opening_minor: int
    ledger_minor: int
    # ledger - (custodian - opening): > 0 is money missing from custody.
    missing_minor: int


class CurrencyFunding(BaseModel):
    """One currency's coverage at the issuer, and the funding made for it."""

    currency: Currency
    issuer_balance_minor: int
    # Wired before this run, not yet credited at the issuer (it counts).
    pending_minor: int
    customers_minor: int
    spend_window_minor: int
    spend_per_day_minor: int
    target_minor: int
    # target - (issuer balance + pending); funded when above 0.
    shortfall_minor: int
    funded_minor: int = 0
    # The funding's id (the wire's and the issuer funding's reference).
    funding_id: str | None = None
    payout_id: str | None = None
    issuer_funding_id: str | None = None
    funding_status: Literal["pending", "credited"] | None = None
    refused: str | None = None
    # The issuer's balance (with what this run's funding credited at once)
    # over the customers' money.
    coverage_bps: int
    coverage_low: bool


class ProgramFundingReport(BaseModel):
    """The `status` query's answer while a run goes, and its result."""

    workflow_id: str
    stage: str
    as_of: datetime | None = None
    currencies: list[CurrencyFunding] = Field(default_factory=list)
    # Fundings an earlier run wired and posted but never announced: this run told the issuer.
    recovered: list[IssuerFunding] = Field(default_factory=list)
    bank: list[BankCheck] = Field(default_factory=list)
    custody: CustodyCheck | None = None
    operators_notified: bool = False

    @property
    def bank_drift_lines(self) -> int:
        return sum(check.drift_lines for check in self.bank)

    def outcome(self) -> str:
        """The ProcessStatus the findings end the run with, most urgent first."""
        if any(currency.coverage_low for currency in self.currencies):
            return STATUS_COVERAGE_LOW
        if any(currency.refused for currency in self.currencies):
            return STATUS_FUNDING_REFUSED
        if self.bank_drift_lines or (self.custody is not None and self.custody.missing_minor):
            return STATUS_DRIFT
        if any(currency.funded_minor for currency in self.currencies):
            return STATUS_FUNDED
        return STATUS_COVERED


class FundingRecord(BaseModel):
    """A run's report and the threshold its coverage alerts under, for its gauges."""

    report: ProgramFundingReport
    coverage_alert_bps: int


class OperatorNotice(BaseModel):
    key: str
    to: str
    subject: str
    body: str
