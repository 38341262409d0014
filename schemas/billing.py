"""Monthly fees and statements: the billing process's messages and the period rules.

A period is a calendar month in UTC, `YYYY-MM`, from its first instant
(inclusive) to the next month's first instant (exclusive).

Fee rule: one monthly fee per card that was active in the period, in the
card's currency, at the policy's amount for that currency (a currency the
policy does not name costs nothing). A card counts as active when it was
issued before the period's end (the `cards` table) and its card process
`card/{card_id}` had not ended before the period's start (a closed card's
process ends; a card whose process never started is not active).

A wallet that cannot pay a card's fee in full pays nothing for that card: the
fee is waived and flagged (status "waived" with the ledger's reason, and the
process status `billed_with_waivers`), never charged in part, so a re-run can
never take a different amount than the first run did.

A customer with more cards than `cards_max` is not billed in part: the
process fails (TooManyCards) for an operator, charging nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator

from schemas.customers import CustomerId
from schemas.edge import EdgeModel
from schemas.money import AMOUNT_MINOR_MAX, Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)
_PERIOD = re.compile(r"^(?P<year>20[0-9]{2})-(?P<month>0[1-9]|1[0-2])$")

# Limits: cards billed per customer, customers per driver page, pages per
# driver run before it continues as new, statement entries per wallet.
CARDS_PER_CUSTOMER_MAX = 50
CUSTOMERS_PAGE_SIZE_MAX = 500
DRIVER_PAGES_PER_RUN_MAX = 20
STATEMENT_ENTRIES_PER_WALLET_MAX = 20_000
# Statement entry categories, by counterparty account or idempotency key.
CATEGORIES: tuple[str, ...] = (
    "card",
    "card_hold",
    "topup",
    "fx",
    "fee",
    "cashback",
    "dispute",
    "adjustment",
    "transfer",
)

Period = Annotated[str, Field(pattern=_PERIOD.pattern)]
Category = Literal[
    "card",
    "card_hold",
    "topup",
    "fx",
    "fee",
    "cashback",
    "dispute",
    "debt_repayment",
    "adjustment",
    "transfer",
]


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The period's first instant and the next period's first instant (UTC)."""
    match = _PERIOD.match(period)
    if match is None:
        raise ValueError(f"period {period!r} must be YYYY-MM")
    year, month = int(match["year"]), int(match["month"])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_of(instant: datetime) -> str:
    return f"{instant.year:04d}-{instant.month:02d}"


def previous_period(instant: datetime) -> str:
    """The month before the one `instant` is in (what a monthly run bills)."""
    start, _ = period_bounds(period_of(instant.astimezone(UTC)))
    return period_of(start - timedelta(days=1))


class BillingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The monthly fee per active card, per card currency, in minor units.
    monthly_fee_minor: dict[Currency, Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]] = (
        Field(default_factory=lambda: {Currency.USD: 100, Currency.EUR: 100})
    )
    cards_max: int = Field(default=CARDS_PER_CUSTOMER_MAX, ge=1, le=CARDS_PER_CUSTOMER_MAX)


class BillingInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    period: Period
    # Where the statement files go: {CARDFLOW_HOME}/statements in production.
    statements_dir: str = Field(default=".cardflow/statements", min_length=1, max_length=1000)
    policy: BillingPolicy = Field(default_factory=BillingPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        period_bounds(value)
        return value


class ActiveCardsRequest(BaseModel):
    customer_id: CustomerId
    period_start: AwareDatetime
    period_end: AwareDatetime
    limit: int = Field(default=CARDS_PER_CUSTOMER_MAX, ge=1, le=CARDS_PER_CUSTOMER_MAX)


class ActiveCard(BaseModel):
    card_id: str
    currency: Currency


class FeeCharge(BaseModel):
    """One card's monthly fee: charged, waived (the wallet could not pay), or no fee."""

    card_id: str
    currency: Currency
    amount_minor: int = Field(ge=0)
    status: Literal["charged", "waived", "no_fee"]
    key: str = ""
    transfer_id: int | None = None
    reason: str = ""


class StatementRequest(BaseModel):
    customer_id: CustomerId
    period: Period
    period_start: AwareDatetime
    period_end: AwareDatetime
    statements_dir: str
    fees: list[FeeCharge] = Field(default_factory=list)


class StatementEntry(BaseModel):
    transfer_id: int
    at: datetime
    key: str
    kind: str
    category: Category
    direction: Literal["debit", "credit"]
    counterparty: str
    amount_minor: int
    # Whether it moved the posted balance (holds and their releases do not).
    posted: bool


class WalletStatement(BaseModel):
    code: str
    currency: Currency
    opening_minor: int
    closing_minor: int
    credits_minor: int
    debits_minor: int
    # Net posted amount per category (credits positive, debits negative).
    by_category_minor: dict[str, int]
    entries: list[StatementEntry]


class Statement(BaseModel):
    customer_id: str
    period: str
    period_start: datetime
    period_end: datetime
    # The instant balances and entries are taken up to: the period's end, or
    # the time of writing for a period not over yet.
    cutoff: datetime
    wallets: list[WalletStatement]
    # The fees this period's billing charged (posted when the run happened,
    # so for a closed period they appear among the next period's entries).
    fees: list[FeeCharge]


class WalletTotals(BaseModel):
    code: str
    currency: Currency
    opening_minor: int
    closing_minor: int
    entries: int
    by_category_minor: dict[str, int]


class StatementSummary(BaseModel):
    json_path: str
    html_path: str
    wallets: list[WalletTotals]


class CustomersPageRequest(BaseModel):
    period_end: AwareDatetime
    after: str = ""
    limit: int = Field(default=100, ge=1, le=CUSTOMERS_PAGE_SIZE_MAX)


class CustomersPage(BaseModel):
    customer_ids: list[str]
    # Pass as `after` for the next page; None when this page is the last.
    next_after: str | None = None


class BillingResult(BaseModel):
    customer_id: str
    period: str
    fees: list[FeeCharge]
    fees_charged_minor: dict[Currency, int]
    fees_waived_minor: dict[Currency, int]
    statement: StatementSummary


class BillingStatus(BaseModel):
    customer_id: str
    period: str
    stage: str
    fees: list[FeeCharge] = Field(default_factory=list)
    statement: StatementSummary | None = None


class BillingRunPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Customers per page; one page of billing children runs at a time.
    page_size: int = Field(default=100, ge=1, le=CUSTOMERS_PAGE_SIZE_MAX)
    pages_per_run_max: int = Field(default=DRIVER_PAGES_PER_RUN_MAX, ge=1, le=1_000)


class BillingRunInput(EdgeModel):
    """The monthly driver: bills every customer with cards for the period
    (None: the month before the one the run starts in, as the schedule wants)."""

    model_config = ConfigDict(extra="forbid")

    period: Period | None = None
    statements_dir: str = Field(default=".cardflow/statements", min_length=1, max_length=1000)
    billing_policy: BillingPolicy = Field(default_factory=BillingPolicy)
    policy: BillingRunPolicy = Field(default_factory=BillingRunPolicy)
    # Carried across continue-as-new.
    after: str = ""
    started: int = 0
    already_billed: int = 0
    failed: list[str] = Field(default_factory=list, max_length=1_000)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows

    @field_validator("period")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is not None:
            period_bounds(value)
        return value


class BillingRunResult(BaseModel):
    period: str
    # Billing processes this run started (and saw finish) ...
    started: int
    # ... and customers whose period was billed before (their process exists).
    already_billed: int
    failed: list[str]


class BillingRunStatus(BaseModel):
    period: str
    stage: str
    started: int
    already_billed: int
    failed: list[str]
