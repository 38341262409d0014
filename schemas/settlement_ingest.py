"""Ingesting the issuer's daily settlement file (workflows/settlement.py):
the process's input and policy, what one chunk (one gzip member of the file)
finds, the day's interchange and fees, and the result operators read.

Every record of the file gets one class:

- matched: a card posting (clearing, force post, refund) cardflow holds
  with the same amount and currency;
- missing_in_ledger: a card posting cardflow never saw;
- amount_mismatch: a card posting cardflow saw with another amount;
- unknown: a card posting cardflow holds under that transaction in another
  currency or of another kind (a refund for a purchase), or one that names
  no transaction: no amount explains it, an operator decides;
- reversal: a hold released, no money; chargeback: the dispute's own;
- fee: the issuer's charge (per card, or the day's processing total),
  posted with the day's fees; interchange: the day's, posted once a day.

Drift is missing_in_ledger, amount_mismatch and unknown, its rate in basis
points of the card postings (matched and drift).

A difference at or over its currency's auto-fix threshold (and every
unknown record) is an operator item: operators adjust it (the fix posted,
keyed from the record id) or dismiss it (nothing posted) with the
workflow's `decide` update while the policy's wait lasts; an item still
undecided then is flagged in the result and stays open for the day's next
run.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.edge import NAME_CHARS_MAX, REASON_CHARS_MAX, Day, EdgeModel
from schemas.money import Currency
from schemas.reconciliation import OPERATORS_EMAIL_DEFAULT, DecisionAction
from schemas.settlement import SettlementFileFormat
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import BASIS_POINTS_PER_UNIT, DAY_SECONDS, HOUR_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

SETTLEMENT_INGEST_WORKFLOW = "SettlementIngest"
# Records staged, matched and posted at once: one statement and one ledger
# batch per this many, whatever the member's size.
BATCH_RECORDS_MAX = 5_000
BATCH_RECORDS_DEFAULT = 5_000
# Chunks one run of the workflow takes before it continues as new, so that
# its history stays short whatever the file's size.
CHUNKS_PER_RUN_MAX = 1_000
CHUNKS_IN_FLIGHT_MAX = 256
# Operator items one run holds for decisions (the oldest record ids first):
# the rest stay open in the table for the day's next run, so the run's
# history and the e-mail stay bounded whatever the day's drift.
DECISION_ITEMS_MAX = 5_000
DECISION_ITEMS_DEFAULT = 1_000
# Items the operators' e-mail names one by one; it counts the rest.
NOTICE_ITEMS_MAX = 50
# The longest record id the issuer sends (schemas/settlement.py) and an item id.
ITEM_ID_CHARS_MAX = 200


class RecordClass(StrEnum):
    MATCHED = "matched"
    MISSING_IN_LEDGER = "missing_in_ledger"
    AMOUNT_MISMATCH = "amount_mismatch"
    UNKNOWN = "unknown"
    # A transaction settled again under another record id: charged twice.
    DUPLICATE = "duplicate"
    REVERSAL = "reversal"
    CHARGEBACK = "chargeback"
    FEE = "fee"
    INTERCHANGE = "interchange"


DRIFT_CLASSES = frozenset(
    {
        RecordClass.MISSING_IN_LEDGER,
        RecordClass.AMOUNT_MISMATCH,
        RecordClass.UNKNOWN,
        RecordClass.DUPLICATE,
    }
)
CARD_POSTING_CLASSES = DRIFT_CLASSES | {RecordClass.MATCHED}


def _default_thresholds() -> dict[Currency, int]:
    return {
        Currency.USD: 500,
        Currency.EUR: 500,
        Currency.GBP: 500,
        Currency.JPY: 500,
        Currency.USDT: 5_000_000,
    }


class SettlementIngestPolicy(BaseModel):
    # A difference below its currency's threshold is fixed at once; one at
    # or above it (and every unknown record) is left to an operator.
    auto_fix_threshold_minor: dict[Currency, int] = Field(default_factory=_default_thresholds)
    batch_records: int = Field(default=BATCH_RECORDS_DEFAULT, ge=1, le=BATCH_RECORDS_MAX)
    # Chunks run at once across the providers queue's workers: about two per
    # worker keeps each one busy while the other waits on the issuer.
    chunks_in_flight: int = Field(default=4, ge=1, le=CHUNKS_IN_FLIGHT_MAX)
    chunks_per_run: int = Field(default=200, ge=1, le=CHUNKS_PER_RUN_MAX)
    # A chunk heartbeats every batch; a worker silent this long is presumed
    # dead and the chunk resumes on another one from its last heartbeat.
    chunk_heartbeat_seconds: int = Field(default=30, ge=1)
    chunk_timeout_seconds: int = Field(default=HOUR_SECONDS, ge=1)
    chunk_attempts_max: int = Field(default=20, ge=1)
    # Operators are told when drift passes this share of the card postings.
    drift_alert_bps: int = Field(default=100, ge=0, le=BASIS_POINTS_PER_UNIT)
    # How long operators have to decide the items over the threshold, and
    # how many of them one run holds.
    decision_wait_seconds: int = Field(default=DAY_SECONDS, ge=1)
    decision_items_max: int = Field(default=DECISION_ITEMS_DEFAULT, ge=1, le=DECISION_ITEMS_MAX)

    def threshold(self, currency: Currency) -> int:
        return self.auto_fix_threshold_minor.get(currency, 0)


class SettlementIngestInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["issuer"] = "issuer"
    settlement_date: Day
    file_format: SettlementFileFormat = SettlementFileFormat.JSONL
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    policy: SettlementIngestPolicy = Field(default_factory=SettlementIngestPolicy)
    ledger_task_queue: str = Field(default=_QUEUES.ledger, max_length=200)
    providers_task_queue: str = Field(default=_QUEUES.providers, max_length=200)
    workflows_task_queue: str = Field(default=_QUEUES.workflows, max_length=200)
    # Where an earlier run left off when it continued as new (None: a start).
    carried: IngestCarried | None = None


class ClassCount(BaseModel):
    records: int = 0
    # The sum of the differences (issuer minus cardflow, signed for
    # issuer:settlement) of the class's records.
    delta_minor: int = 0


class ChunkCounts(BaseModel):
    """What a member's records are, by class, and what became of the drift."""

    records: int = 0
    classes: dict[RecordClass, ClassCount] = Field(default_factory=dict)
    auto_fixed: int = 0
    operator_items: int = 0

    def add(self, other: ChunkCounts) -> None:
        self.records += other.records
        self.auto_fixed += other.auto_fixed
        self.operator_items += other.operator_items
        for record_class, count in other.classes.items():
            mine = self.classes.setdefault(record_class, ClassCount())
            mine.records += count.records
            mine.delta_minor += count.delta_minor

    def count(self, record_class: RecordClass) -> int:
        found = self.classes.get(record_class)
        return found.records if found is not None else 0


class IngestCarried(BaseModel):
    """What one run hands the next when it continues as new."""

    file: SettlementFileSummary
    next_member: int = Field(ge=0)
    chunks_done: int = Field(ge=0)
    counts: ChunkCounts


class SettlementFileRequest(BaseModel):
    provider: str
    settlement_date: date
    file_format: SettlementFileFormat


class SettlementFileSummary(BaseModel):
    """The file as recorded: its members are read from the database by index."""

    file_id: int
    sha256: str = Field(max_length=64)
    record_count: int
    member_count: int
    byte_size: int


class ChunkRequest(BaseModel):
    provider: str
    file_id: int
    member_index: int = Field(ge=0)
    batch_records: int = Field(ge=1, le=BATCH_RECORDS_MAX)
    auto_fix_threshold_minor: dict[Currency, int]


class ChunkProgress(BaseModel):
    """A chunk's heartbeat: the member's records done so far and their counts."""

    records_done: int = 0
    counts: ChunkCounts = Field(default_factory=ChunkCounts)


class ChunkResult(BaseModel):
    member_index: int
    counts: ChunkCounts
    # True when the member was checkpointed before this call: nothing redone.
    already_done: bool = False
    # Records this call's attempt started after (a resumed attempt's skip).
    resumed_from_record: int = 0
    fixes_posted: int = 0
    # Where this attempt's time went (a benchmark reads them from history).
    read_ms: int = 0
    match_ms: int = 0
    post_ms: int = 0


class DayTotalsRequest(BaseModel):
    provider: str
    settlement_date: date


class DayPosting(BaseModel):
    """The day's interchange and issuer fees in one currency, as posted."""

    currency: Currency
    interchange_minor: int
    fees_minor: int
    # True when an earlier call had posted them already.
    replayed: bool
    # The day was posted before with other totals (a file changed since):
    # nothing posted now, an operator looks.
    conflict: bool = False


class DriftRate(BaseModel):
    record_class: RecordClass
    records: int
    rate_bps: int


OperatorItemState = Literal["awaiting_decision", "adjusted", "dismissed", "undecided"]


class OperatorItem(BaseModel):
    """A record whose difference waits for (or had) an operator's decision."""

    record_id: str
    record_class: RecordClass
    transaction_id: str | None = None
    currency: Currency
    # Issuer minus cardflow, signed for issuer:settlement (what an
    # adjustment credits it, through suspense).
    delta_minor: int
    state: OperatorItemState
    decided_by: str | None = None
    reason: str | None = None
    transfer_key: str | None = None


class SettlementDecision(EdgeModel):
    """An operator's decision on one item (its record id): adjust (post the
    fix through suspense) or dismiss (post nothing)."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=ITEM_ID_CHARS_MAX)
    action: DecisionAction
    operator: str = Field(min_length=1, max_length=NAME_CHARS_MAX)
    reason: str = Field(min_length=1, max_length=REASON_CHARS_MAX)


class OperatorItemsRequest(BaseModel):
    provider: str
    settlement_date: date
    items_max: int = Field(ge=1, le=DECISION_ITEMS_MAX)


class OperatorItems(BaseModel):
    """The day's items awaiting a decision (at most items_max), and how many there are."""

    items: list[OperatorItem]
    awaiting_total: int


class DecisionRecord(BaseModel):
    """A decision to record (and, for an adjustment, post) once."""

    provider: str
    settlement_date: date
    decision: SettlementDecision


class DriftReport(BaseModel):
    """What the ingest found, for the dashboards' gauges."""

    provider: str
    settlement_date: date
    counts: ChunkCounts
    drift_rate_bps: int
    drift_by_class: list[DriftRate]
    drift_alert_bps: int


class SettlementIngestStatus(BaseModel):
    stage: str
    settlement_date: date
    chunks_done: int
    chunks_total: int
    records_done: int
    records_total: int
    counts: ChunkCounts
    # The items over the threshold this run holds, as decided so far.
    items: list[OperatorItem] = Field(default_factory=list)


class SettlementIngestResult(BaseModel):
    file: SettlementFileSummary
    chunks: int
    counts: ChunkCounts
    day_postings: list[DayPosting]
    drift_records: int
    drift_rate_bps: int
    drift_by_class: list[DriftRate]
    alerted: bool
    # Operators' decisions on the items over the threshold this run held;
    # the record ids still undecided when the wait ended (flagged), and the
    # items beyond the run's decision_items_max, left for the next run.
    adjusted: int = 0
    dismissed: int = 0
    undecided: list[str] = Field(default_factory=list)
    items_not_held: int = 0


class ScheduledSettlementInput(EdgeModel):
    """The daily schedule's action: ingest the issuer's file of the UTC day
    before the scheduled time (or settlement_date, for a backfill)."""

    model_config = ConfigDict(extra="forbid")

    settlement_date: Day | None = None
    file_format: SettlementFileFormat = SettlementFileFormat.JSONL
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    policy: SettlementIngestPolicy = Field(default_factory=SettlementIngestPolicy)
    ledger_task_queue: str = Field(default=_QUEUES.ledger, max_length=200)
    providers_task_queue: str = Field(default=_QUEUES.providers, max_length=200)
    workflows_task_queue: str = Field(default=_QUEUES.workflows, max_length=200)


class ScheduledSettlementResult(BaseModel):
    workflow_id: str
    settlement_date: date
    started: bool = Field(description="False when that day's ingest had run or was running")


SettlementIngestInput.model_rebuild()
