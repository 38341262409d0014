"""Daily reconciliation of the ledger against a provider's settlement report:
inputs, the differences it finds, operator decisions and the report."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.edge import Day, EdgeModel
from schemas.issuer import SettlementRecord
from schemas.money import Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS, HOUR_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

# The one provider reconciled today; the workflow id leaves room for more.
ISSUER_PROVIDER = "issuer"
# Where operators are told about differences that wait for their decision:
# the notification provider's e-mail channel to the operations mailbox.
OPERATORS_EMAIL_DEFAULT = "operations@cardflow.example"
# Records per page of the settlement report the download asks for.
SETTLEMENT_PAGE_SIZE_MAX = 500
# Earlier fixes one run corrects at most (oldest first; the next run takes
# the rest), so that its history stays small; and how far back it may look.
LATE_POSTING_FIXES_MAX = 500
LATE_POSTING_LOOKBACK_DAYS_MAX = 366
# The corrections of a fix are keyed from the fix's own key, so that every
# run finding the same fix posts the same transfer: after a late posting of
# the card, and after the issuer settled the transaction on a later day.
FIX_REVERSED_SUFFIX = "/reversed"
FIX_SETTLED_LATE_SUFFIX = "/settled-late"


class SettlementReportPage(BaseModel):
    """One page of a settlement report; next_cursor is None on the last page."""

    settlement_date: date
    records: list[SettlementRecord]
    next_cursor: str | None = None


class DifferenceKind(StrEnum):
    MISSING_IN_LEDGER = "missing_in_ledger"
    MISSING_AT_ISSUER = "missing_at_issuer"
    AMOUNT_MISMATCH = "amount_mismatch"
    DUPLICATE = "duplicate"


class DecisionAction(StrEnum):
    """What an operator may decide about a difference over the threshold."""

    # Post the difference through suspense, as an automatic fix would.
    ADJUST = "adjust"
    # Post nothing: the operator explained it elsewhere (e.g. a late webhook).
    DISMISS = "dismiss"


ItemState = Literal["auto_fixed", "awaiting_decision", "adjusted", "dismissed", "undecided"]


def _default_thresholds() -> dict[Currency, int]:
    return {Currency.USD: 500, Currency.EUR: 500, Currency.USDT: 5_000_000}


class ReconciliationPolicy(BaseModel):
    # A difference whose absolute amount is below the currency's threshold is
    # fixed automatically; one at or above it waits for an operator.
    auto_fix_threshold_minor: dict[Currency, int] = Field(default_factory=_default_thresholds)
    decision_wait_seconds: int = Field(default=DAY_SECONDS, ge=1)
    # The download heartbeats every page; a worker that stops for this long
    # is presumed dead and the download resumes on another one.
    download_heartbeat_seconds: int = Field(default=30, ge=1)
    download_timeout_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    download_attempts_max: int = Field(default=20, ge=1)
    page_size: int = Field(default=SETTLEMENT_PAGE_SIZE_MAX, ge=1, le=SETTLEMENT_PAGE_SIZE_MAX)
    # Each run looks back this many days (its own included) at earlier fixes
    # whose card posting has arrived since, and reverses them.
    late_posting_lookback_days: int = Field(default=7, ge=0, le=LATE_POSTING_LOOKBACK_DAYS_MAX)

    def threshold(self, currency: Currency) -> int:
        return self.auto_fix_threshold_minor.get(currency, 0)


class ReconciliationInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["issuer"] = "issuer"
    settlement_date: Day
    # {CARDFLOW_HOME}/reports on the host the ledger workers run on.
    reports_dir: str = Field(min_length=1, max_length=1000)
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    policy: ReconciliationPolicy = Field(default_factory=ReconciliationPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class ScheduledReconciliationInput(EdgeModel):
    """The daily schedule's action: reconcile the UTC day before the
    scheduled time (or settlement_date when given, for a backfill)."""

    model_config = ConfigDict(extra="forbid")

    settlement_date: Day | None = None
    reports_dir: str = Field(min_length=1, max_length=1000)
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    policy: ReconciliationPolicy = Field(default_factory=ReconciliationPolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class ScheduledReconciliationResult(BaseModel):
    workflow_id: str
    settlement_date: date
    started: bool = Field(description="False when that day was already reconciled")


class DownloadRequest(BaseModel):
    run_key: str
    settlement_date: date
    page_size: int = Field(ge=1, le=SETTLEMENT_PAGE_SIZE_MAX)


class DownloadProgress(BaseModel):
    """The download's heartbeat details: where to resume after a crash."""

    cursor: str | None = None
    pages: int = 0
    records: int = 0


class DownloadSummary(BaseModel):
    records: int
    pages: int
    attempt: int
    # The cursor the last attempt started from (None: from the beginning).
    resumed_from_cursor: str | None = None
    pages_this_attempt: int


class MatchRequest(BaseModel):
    run_key: str
    settlement_date: date


class Difference(BaseModel):
    # One difference per issuer transaction id: the item operators decide on.
    item_id: str
    kind: DifferenceKind
    transaction_id: str
    card_id: str | None
    currency: Currency
    record_type: str | None
    issuer_amount_minor: int = Field(description="what the issuer settled, signed for the program")
    ledger_amount_minor: int = Field(description="what the ledger posted to issuer:settlement")
    # issuer - ledger: > 0 the ledger must credit issuer:settlement more.
    delta_minor: int
    ledger_postings: int
    # What reconciliation's own transfers for the transaction (an earlier,
    # failed run's fix of the day and its corrections) had already moved on
    # issuer:settlement when it was matched: a fix posts delta - this.
    fixed_before_minor: int = 0


class CurrencyVolume(BaseModel):
    currency: Currency
    records: int
    volume_minor: int


class MatchResult(BaseModel):
    records_total: int
    records_matched: int
    # Reversals, fees and chargebacks: not ledger postings of the card.
    records_not_applicable: int
    volumes: list[CurrencyVolume]
    differences: list[Difference]


class ReconciliationItem(BaseModel):
    difference: Difference
    state: ItemState
    decided_by: str | None = None
    reason: str | None = None
    transfer_key: str | None = None


class Decision(EdgeModel):
    """An operator's decision on one item. `action` is checked by the
    workflow's validator (and by the starters), so a wrong one is refused
    with its name rather than failing to decode."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=200)
    action: str = Field(min_length=1, max_length=50, description="adjust or dismiss")
    operator: str = Field(min_length=1, max_length=100)
    reason: str = Field(default="", max_length=500)


class FixRecord(BaseModel):
    """A fix as it stood when posted, kept for later runs' look-back."""

    fix_key: str
    run_key: str
    settlement_date: date
    difference: Difference


class LatePostingLookup(BaseModel):
    since_date: date
    until_date: date
    limit: int = Field(default=LATE_POSTING_FIXES_MAX, ge=1, le=LATE_POSTING_FIXES_MAX)
    # The run whose staged report is read for transactions the issuer has
    # settled since an earlier day fixed them (None: not looked for).
    run_key: str | None = None


class ReversalKind(StrEnum):
    # The card posted, after the fix, what the fix had stood in for.
    LATE_POSTING_REVERSED = "late_posting_reversed"
    # The issuer settled on a later day (this run's) a transaction an earlier
    # day fixed as not settled by it: that fix no longer stands, and this
    # day's matching takes the transaction over.
    LATE_SETTLEMENT_REVERSED = "late_settlement_reversed"


class LatePosting(BaseModel):
    """An earlier fix that no longer stands: its transaction the card has
    posted to since, or the issuer has settled since on a later day. The
    correction keeps issuer:settlement at what the issuer settled."""

    kind: ReversalKind = ReversalKind.LATE_POSTING_REVERSED
    fix: FixRecord
    ledger_amount_now_minor: int
    # The correcting transfer's effect on issuer:settlement (like delta_minor:
    # > 0 credits it from suspense). For a late posting of exactly what the
    # issuer settled it is -fix.delta_minor: the fix reversed in full.
    correction_minor: int
    # What suspense still holds for the item after it: issuer - card now
    # (0 when the late posting was what the issuer settled). After a late
    # settlement: what this day's matching finds between the issuer and the card.
    residual_minor: int
    transfer_key: str | None = None

    @property
    def correction_key(self) -> str:
        """The correcting transfer's key, from the fix's own key."""
        if self.kind is ReversalKind.LATE_SETTLEMENT_REVERSED:
            return f"{self.fix.fix_key}{FIX_SETTLED_LATE_SUFFIX}"
        return f"{self.fix.fix_key}{FIX_REVERSED_SUFFIX}"


class ReversalMark(BaseModel):
    fix_key: str
    reversal_key: str
    correction_minor: int
    ledger_amount_now_minor: int
    reversed_by: str


class CurrencySummary(BaseModel):
    currency: Currency
    records: int
    volume_minor: int
    differences: int
    drift_minor: int
    fixed_minor: int
    unexplained_minor: int
    # drift / volume, as a decimal string (0 when there was no volume).
    drift_rate: str
    unexplained_drift_rate: str
    # Earlier fixes this run corrected: a late posting arrived, or the
    # issuer settled their transaction on this day.
    reversals: int = 0
    reversed_minor: int = 0


class ReportPaths(BaseModel):
    json_path: str
    csv_path: str


class ReconciliationReport(BaseModel):
    workflow_id: str
    provider: str
    settlement_date: date
    download: DownloadSummary
    records_total: int
    records_matched: int
    records_not_applicable: int
    counts: dict[str, int] = Field(description="differences per kind")
    states: dict[str, int] = Field(description="items per state")
    currencies: list[CurrencySummary]
    items: list[ReconciliationItem]
    reversal_counts: dict[str, int] = Field(
        default_factory=dict, description="corrections of earlier fixes per kind"
    )
    reversals: list[LatePosting] = Field(default_factory=list)


class ReconciliationResult(BaseModel):
    report: ReconciliationReport
    paths: ReportPaths

    @property
    def unexplained_minor(self) -> int:
        return sum(summary.unexplained_minor for summary in self.report.currencies)


class ReconciliationStatus(BaseModel):
    stage: str
    settlement_date: date
    items: list[ReconciliationItem]
    reversals: list[LatePosting] = Field(default_factory=list)
