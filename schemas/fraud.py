"""Fraud scores and operator fraud cases: the policy, the facts a score is
computed from, the scoring rules (pure functions, no I/O), and the models of
the scan `fraud-scan` and of a case `fraud-case/{case_id}`
(workflows/fraud.py).

A customer's score is the sum of the points of the signals their recent
activity shows, each signal with its own threshold and weight, and with the
evidence (counts, amounts, ids) an operator needs to see why:

- refund_after_reward: card refunds of purchases that earned cashback,
  within `within_days` of the purchase;
- cashback_farming: many small purchases at one merchant within a short
  time (the most found in any such stretch);
- topup_spend_dispute: disputes opened on spend made within a short time
  after a top-up was credited;
- many_cards: cards newly issued to the customer (replacements aside);
- new_usdt_sources: USDT deposits from addresses the customer never sent
  from before.

A signal whose count reaches its threshold scores its weight; one below it
is shown with 0 points (its evidence may still help). The score is capped at
SCORE_MAX. Over the policy's case threshold a customer gets a case; at or
over its auto-freeze threshold their cards are frozen as the case opens.

Amounts are integer minor units of the transactions' own currencies (a
small purchase is small in minor units whatever its currency).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.edge import NAME_CHARS_MAX, REASON_CHARS_MAX, EdgeModel
from schemas.money import AMOUNT_MINOR_MAX
from schemas.reconciliation import OPERATORS_EMAIL_DEFAULT
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS, HOUR_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)

SCORE_MAX = 100
WEIGHT_MAX = SCORE_MAX
WINDOW_DAYS_MAX = 90
CONTEXT_DAYS_MAX = 180
COUNT_MIN_MAX = 1_000
# Customers scored per page of a scan (one read of their facts).
PAGE_SIZE_MAX = 500
# Ids of evidence a signal lists (every one is counted).
EVIDENCE_IDS_MAX = 10
# Facts read per customer and kind (the newest are kept).
FACT_ROWS_MAX = 2_000
# USDT deposits read per customer (the oldest first, so every address's first use).
USDT_DEPOSITS_MAX = 1_000
# Scores a scan keeps in its report (the highest).
REPORT_SCORES_MAX = 20
ESCALATIONS_MAX = 10
ESCALATION_SECONDS_MAX = 30 * DAY_SECONDS

# A case id names the customer and the day of the scan that opened it:
# `{customer_id}-{YYYYMMDD}`; the case's process is `fraud-case/{case_id}`.
CASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{8}$"


# Currencies a signal's amounts are summed in, at most.
CURRENCIES_MAX = 20


class SignalName(StrEnum):
    REFUND_AFTER_REWARD = "refund_after_reward"
    CASHBACK_FARMING = "cashback_farming"
    TOPUP_SPEND_DISPUTE = "topup_spend_dispute"
    MANY_CARDS = "many_cards"
    NEW_USDT_SOURCES = "new_usdt_sources"


# ----- the policy ----------------------------------------------------------------------


class SignalPolicy(BaseModel):
    """A signal scores `weight` once its count reaches `min_count`."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(default=1, ge=1, le=COUNT_MIN_MAX)
    weight: int = Field(default=20, ge=0, le=WEIGHT_MAX)


class RefundAfterRewardPolicy(SignalPolicy):
    min_count: int = Field(default=2, ge=1, le=COUNT_MIN_MAX)
    weight: int = Field(default=30, ge=0, le=WEIGHT_MAX)
    # A refund this soon after a purchase that earned cashback counts.
    within_days: int = Field(default=7, ge=1, le=CONTEXT_DAYS_MAX)


class CashbackFarmingPolicy(SignalPolicy):
    min_count: int = Field(default=5, ge=2, le=COUNT_MIN_MAX)
    weight: int = Field(default=30, ge=0, le=WEIGHT_MAX)
    # Purchases at one merchant within this stretch of time...
    within_seconds: int = Field(default=HOUR_SECONDS, ge=1, le=WINDOW_DAYS_MAX * DAY_SECONDS)
    # ...each of at most this much.
    small_purchase_max_minor: int = Field(default=1_000, ge=1, le=AMOUNT_MINOR_MAX)


class TopupSpendDisputePolicy(SignalPolicy):
    min_count: int = Field(default=1, ge=1, le=COUNT_MIN_MAX)
    weight: int = Field(default=40, ge=0, le=WEIGHT_MAX)
    # A disputed spend this soon after a top-up was credited counts.
    spend_within_seconds: int = Field(default=DAY_SECONDS, ge=1, le=CONTEXT_DAYS_MAX * DAY_SECONDS)


class ManyCardsPolicy(SignalPolicy):
    min_count: int = Field(default=4, ge=1, le=COUNT_MIN_MAX)
    weight: int = Field(default=20, ge=0, le=WEIGHT_MAX)


class NewUsdtSourcesPolicy(SignalPolicy):
    min_count: int = Field(default=3, ge=1, le=COUNT_MIN_MAX)
    weight: int = Field(default=20, ge=0, le=WEIGHT_MAX)


class FraudPolicy(BaseModel):
    """Every window, threshold, weight and wait of the scan and its cases."""

    model_config = ConfigDict(extra="forbid")

    # What is scored: the activity of the last `window_days` (after the
    # customer's last decided case, if later).
    window_days: int = Field(default=7, ge=1, le=WINDOW_DAYS_MAX)
    # How far before the window a refund's purchase, a disputed spend and the
    # top-up before it are looked for.
    context_days: int = Field(default=30, ge=0, le=CONTEXT_DAYS_MAX)
    refund_after_reward: RefundAfterRewardPolicy = Field(default_factory=RefundAfterRewardPolicy)
    cashback_farming: CashbackFarmingPolicy = Field(default_factory=CashbackFarmingPolicy)
    topup_spend_dispute: TopupSpendDisputePolicy = Field(default_factory=TopupSpendDisputePolicy)
    many_cards: ManyCardsPolicy = Field(default_factory=ManyCardsPolicy)
    new_usdt_sources: NewUsdtSourcesPolicy = Field(default_factory=NewUsdtSourcesPolicy)
    # A score at or over this opens a case...
    case_threshold: int = Field(default=50, ge=1, le=SCORE_MAX)
    # ...and at or over this freezes the customer's cards as it opens.
    auto_freeze_threshold: int = Field(default=80, ge=1, le=SCORE_MAX + 1)
    # Unanswered this long, a case is escalated (operators alerted again),
    # at most `escalations_max` times; then it waits on, unalerted.
    escalation_seconds: int = Field(default=DAY_SECONDS, ge=1, le=ESCALATION_SECONDS_MAX)
    escalations_max: int = Field(default=3, ge=0, le=ESCALATIONS_MAX)
    page_size: int = Field(default=100, ge=1, le=PAGE_SIZE_MAX)

    @property
    def context_seconds(self) -> int:
        return self.context_days * DAY_SECONDS


# ----- the facts a score is computed from ------------------------------------------------


class CardTransactionFact(BaseModel):
    """A settled card transaction (card_transactions) and the cashback it earned."""

    transaction_id: str
    card_id: str
    kind: Literal["clearing", "force_post", "refund"]
    amount_minor: int
    currency: str
    merchant_name: str | None = None
    occurred_at: datetime
    refunded_transaction_id: str | None = None
    rewarded_minor: int = 0


class TopupFact(BaseModel):
    """A top-up credited to the customer's wallet (its process id)."""

    topup_id: str
    amount_minor: int
    currency: str
    credited_at: datetime


class DisputeFact(BaseModel):
    """A dispute opened on one of the customer's card transactions."""

    transaction_id: str
    opened_at: datetime


class UsdtSourceFact(BaseModel):
    """An address the customer sent USDT from, and its first deposit."""

    from_address: str
    first_tx_hash: str
    first_seen_at: datetime
    deposits: int = 1


class CustomerFacts(BaseModel):
    """What one customer did: transactions and top-ups from `context_since`,
    disputes and new cards from `since`, to `until`."""

    customer_id: str
    since: datetime
    until: datetime
    context_since: datetime
    transactions: list[CardTransactionFact] = Field(default_factory=list)
    topups: list[TopupFact] = Field(default_factory=list)
    disputes: list[DisputeFact] = Field(default_factory=list)
    new_cards: list[str] = Field(default_factory=list)
    usdt_sources: list[UsdtSourceFact] = Field(default_factory=list)


# ----- scores ----------------------------------------------------------------------------


class Signal(EdgeModel):
    """One signal of a customer's score: how many, how much, which."""

    name: SignalName
    points: int
    count: int
    # Summed per currency.
    amounts_minor: dict[str, int] = Field(default_factory=dict, max_length=CURRENCIES_MAX)
    # The first EVIDENCE_IDS_MAX ids (transactions, top-ups, cards, addresses).
    evidence: list[str] = Field(default_factory=list, max_length=EVIDENCE_IDS_MAX)
    detail: str


class FraudScore(EdgeModel):
    customer_id: str
    score: int
    signals: list[Signal] = Field(default_factory=list, max_length=len(SignalName))
    since: datetime
    until: datetime

    def describe(self) -> list[str]:
        """One line per signal, for operators."""
        return [
            f"- {signal.name.value}: {signal.points} points; {signal.detail}"
            + (f" ({', '.join(signal.evidence)})" if signal.evidence else "")
            for signal in self.signals
        ]


def _in(at: datetime, since: datetime, until: datetime) -> bool:
    return since <= at < until


def _amounts(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for currency, amount in items:
        totals[currency] += amount
    return dict(sorted(totals.items()))


def _signal(
    name: SignalName,
    policy: SignalPolicy,
    count: int,
    amounts: dict[str, int],
    evidence: Sequence[str],
    detail: str,
) -> Signal:
    return Signal(
        name=name,
        points=policy.weight if count >= policy.min_count else 0,
        count=count,
        amounts_minor=amounts,
        evidence=list(evidence[:EVIDENCE_IDS_MAX]),
        detail=f"{detail} (counts from {policy.min_count})",
    )


def refund_after_reward(facts: CustomerFacts, policy: RefundAfterRewardPolicy) -> Signal:
    """Refunds in the window of purchases that earned cashback, within
    `within_days` of the purchase. A refund names its purchase, or else is
    taken as refunding the latest earlier purchase on the same card at the
    same merchant of at least its amount."""
    purchases = sorted(
        (t for t in facts.transactions if t.kind != "refund"),
        key=lambda t: (t.occurred_at, t.transaction_id),
    )
    by_id = {t.transaction_id: t for t in purchases}
    within = timedelta(days=policy.within_days)
    refunds = sorted(
        (t for t in facts.transactions if t.kind == "refund"),
        key=lambda t: (t.occurred_at, t.transaction_id),
    )
    # A purchase a refund names is not taken for another refund.
    named = {t.refunded_transaction_id for t in refunds if t.refunded_transaction_id}
    matched: list[tuple[CardTransactionFact, CardTransactionFact]] = []
    for refund in refunds:
        if not _in(refund.occurred_at, facts.since, facts.until):
            continue
        purchase = by_id.get(refund.refunded_transaction_id or "")
        if purchase is None and refund.refunded_transaction_id is None:
            earlier = [
                t
                for t in purchases
                if t.card_id == refund.card_id
                and t.merchant_name == refund.merchant_name
                and t.amount_minor >= refund.amount_minor
                and t.occurred_at <= refund.occurred_at
                and t.transaction_id not in named
            ]
            purchase = earlier[-1] if earlier else None
            if purchase is not None:
                named.add(purchase.transaction_id)
        if purchase is None or purchase.rewarded_minor <= 0:
            continue
        if refund.occurred_at - purchase.occurred_at <= within:
            matched.append((refund, purchase))
    return _signal(
        SignalName.REFUND_AFTER_REWARD,
        policy,
        len(matched),
        _amounts((refund.currency, refund.amount_minor) for refund, _ in matched),
        [
            f"{refund.transaction_id} refunds {purchase.transaction_id}"
            for refund, purchase in matched
        ],
        f"{len(matched)} refunds within {policy.within_days} days of a purchase that earned"
        f" {sum(purchase.rewarded_minor for _, purchase in matched)} in cashback",
    )


def cashback_farming(facts: CustomerFacts, policy: CashbackFarmingPolicy) -> Signal:
    """The most small purchases at one merchant within `within_seconds`,
    over the window (a merchant is its name, case and spaces aside)."""
    by_merchant: dict[str, list[CardTransactionFact]] = defaultdict(list)
    for purchase in facts.transactions:
        if (
            purchase.kind != "refund"
            and purchase.merchant_name
            and purchase.amount_minor <= policy.small_purchase_max_minor
            and _in(purchase.occurred_at, facts.since, facts.until)
        ):
            by_merchant[purchase.merchant_name.strip().casefold()].append(purchase)
    within = timedelta(seconds=policy.within_seconds)
    best: list[CardTransactionFact] = []
    best_merchant = ""
    for merchant in sorted(by_merchant):
        purchases = sorted(by_merchant[merchant], key=lambda t: (t.occurred_at, t.transaction_id))
        first = 0
        for last, purchase in enumerate(purchases):
            while purchase.occurred_at - purchases[first].occurred_at > within:
                first += 1
            if last - first + 1 > len(best):
                best = purchases[first : last + 1]
                best_merchant = purchase.merchant_name or merchant
    return _signal(
        SignalName.CASHBACK_FARMING,
        policy,
        len(best),
        _amounts((t.currency, t.amount_minor) for t in best),
        [t.transaction_id for t in best],
        f"{len(best)} purchases of at most {policy.small_purchase_max_minor} minor units"
        + (f" at {best_merchant}" if best else "")
        + f" within {policy.within_seconds} s",
    )


def topup_spend_dispute(facts: CustomerFacts, policy: TopupSpendDisputePolicy) -> Signal:
    """Disputes opened in the window on spend made at most
    `spend_within_seconds` after a top-up was credited."""
    spends = {t.transaction_id: t for t in facts.transactions if t.kind != "refund"}
    within = timedelta(seconds=policy.spend_within_seconds)
    matched: list[tuple[CardTransactionFact, TopupFact]] = []
    for dispute in sorted(facts.disputes, key=lambda d: (d.opened_at, d.transaction_id)):
        spend = spends.get(dispute.transaction_id)
        if spend is None or not _in(dispute.opened_at, facts.since, facts.until):
            continue
        before = [
            topup
            for topup in facts.topups
            if timedelta(0) <= spend.occurred_at - topup.credited_at <= within
        ]
        if before:
            matched.append((spend, max(before, key=lambda topup: topup.credited_at)))
    return _signal(
        SignalName.TOPUP_SPEND_DISPUTE,
        policy,
        len(matched),
        _amounts((spend.currency, spend.amount_minor) for spend, _ in matched),
        [f"{spend.transaction_id} after {topup.topup_id}" for spend, topup in matched],
        f"{len(matched)} disputes on spend within {policy.spend_within_seconds} s of a top-up",
    )


def many_cards(facts: CustomerFacts, policy: ManyCardsPolicy) -> Signal:
    """Cards newly issued to the customer in the window (replacements aside)."""
    cards = sorted(facts.new_cards)
    return _signal(
        SignalName.MANY_CARDS,
        policy,
        len(cards),
        {},
        cards,
        f"{len(cards)} cards issued",
    )


def new_usdt_sources(facts: CustomerFacts, policy: NewUsdtSourcesPolicy) -> Signal:
    """Addresses whose first USDT deposit to the customer is in the window."""
    new = sorted(
        (s for s in facts.usdt_sources if _in(s.first_seen_at, facts.since, facts.until)),
        key=lambda s: (s.first_seen_at, s.from_address),
    )
    return _signal(
        SignalName.NEW_USDT_SOURCES,
        policy,
        len(new),
        {},
        [source.from_address for source in new],
        f"{len(new)} addresses never sent from before",
    )


def score_customer(facts: CustomerFacts, policy: FraudPolicy) -> FraudScore:
    """The customer's score: every signal with a count (0 points below its
    threshold), the points of those at or over it summed, capped at SCORE_MAX."""
    signals = [
        refund_after_reward(facts, policy.refund_after_reward),
        cashback_farming(facts, policy.cashback_farming),
        topup_spend_dispute(facts, policy.topup_spend_dispute),
        many_cards(facts, policy.many_cards),
        new_usdt_sources(facts, policy.new_usdt_sources),
    ]
    shown = [signal for signal in signals if signal.count]
    return FraudScore(
        customer_id=facts.customer_id,
        score=min(sum(signal.points for signal in shown), SCORE_MAX),
        signals=shown,
        since=facts.since,
        until=facts.until,
    )


# ----- ids ---------------------------------------------------------------------------------


def fraud_case_id(customer_id: str, day: date) -> str:
    """The case of `customer_id` opened by the scan of `day`."""
    return f"{customer_id}-{day:%Y%m%d}"


# ----- the scan ----------------------------------------------------------------------------


class FraudScanInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    policy: FraudPolicy = Field(default_factory=FraudPolicy)
    # The end of the window scored; a run started without one takes its
    # workflow clock at its start (and keeps it across continue-as-new).
    as_of: AwareDatetime | None = None
    # Continue-as-new carries the customers already scored (by id order).
    after_customer_id: str | None = None
    pages_before: int = Field(default=0, ge=0)
    # Told by e-mail (the notification provider's channel) of every case.
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


class FraudScanReport(BaseModel):
    """The scan's `status` query answer while it runs, and its result."""

    workflow_id: str
    stage: str
    as_of: datetime | None = None
    window_start: datetime | None = None
    pages: int = 0
    customers_scored: int = 0
    over_threshold: int = 0
    # Cases this run opened (their ids), and customers whose open case it left.
    cases_opened: list[str] = Field(default_factory=list)
    cases_already_open: list[str] = Field(default_factory=list)
    # The highest scores over 0 (at most REPORT_SCORES_MAX).
    top_scores: list[FraudScore] = Field(default_factory=list)


class ActiveCustomersRequest(BaseModel):
    since: datetime
    until: datetime
    after_customer_id: str | None = None
    limit: int = Field(ge=1, le=PAGE_SIZE_MAX)


class ActiveCustomers(BaseModel):
    """A page of customers with activity in the window, in id order, and
    which of them had USDT top-ups credited in it."""

    customer_ids: list[str]
    usdt_customer_ids: list[str] = Field(default_factory=list)


class UsdtSourcesRequest(BaseModel):
    customer_ids: list[str] = Field(max_length=PAGE_SIZE_MAX)


class UsdtSources(BaseModel):
    """Per customer, every address they sent USDT from and its first deposit."""

    sources: dict[str, list[UsdtSourceFact]] = Field(default_factory=dict)


class ScorePageRequest(BaseModel):
    customer_ids: list[str] = Field(max_length=PAGE_SIZE_MAX)
    window_start: datetime
    window_end: datetime
    policy: FraudPolicy
    usdt_sources: dict[str, list[UsdtSourceFact]] = Field(default_factory=dict)


class ScoredPage(BaseModel):
    """The scores over 0 of a page's customers."""

    scores: list[FraudScore]


# ----- a case ------------------------------------------------------------------------------

FraudAction = Literal["clear", "confirm"]
FraudCaseOutcome = Literal["cleared", "confirmed", "duplicate"]
# fraud_cases.status; the first two are a case still open.
FraudCaseState = Literal["open", "escalated", "cleared", "confirmed"]
OPEN_CASE_STATES: tuple[FraudCaseState, ...] = ("open", "escalated")


class FraudDecision(EdgeModel):
    """An operator's word on a case: `clear` (no fraud: the cards the case
    froze are unfrozen) or `confirm` (fraud: the cards stay frozen, or are
    closed with `close_cards`)."""

    model_config = ConfigDict(extra="forbid")

    action: FraudAction
    close_cards: bool = False
    reason: str = Field(min_length=3, max_length=REASON_CHARS_MAX)
    operator: str = Field(min_length=1, max_length=NAME_CHARS_MAX)

    @model_validator(mode="after")
    def _closes_only_when_confirmed(self) -> FraudDecision:
        if self.close_cards and self.action != "confirm":
            raise ValueError("close_cards: the cards are closed only when fraud is confirmed")
        return self


class FraudCaseInput(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(pattern=CASE_ID_PATTERN)
    customer_id: str
    score: FraudScore
    policy: FraudPolicy = Field(default_factory=FraudPolicy)
    # The scan that opened it.
    opened_by: str = ""
    operators_email: str = Field(default=OPERATORS_EMAIL_DEFAULT, min_length=3, max_length=200)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers


class FraudCaseStatus(BaseModel):
    """A case's `status` query answer, and its result."""

    case_id: str
    customer_id: str
    stage: str
    score: int
    signals: list[Signal]
    auto_freeze: bool
    # Cards this case froze (a card frozen or closed before is not among them).
    frozen_cards: list[str] = Field(default_factory=list)
    unfrozen_cards: list[str] = Field(default_factory=list)
    closed_cards: list[str] = Field(default_factory=list)
    # Cards a confirm could not close yet (open authorizations): frozen still.
    cards_not_closed: list[str] = Field(default_factory=list)
    escalations: int = 0
    decision: FraudDecision | None = None
    outcome: FraudCaseOutcome | None = None
    reason: str | None = None


class CaseRecord(BaseModel):
    """Record a case as it opens, once (fraud_cases)."""

    case_id: str
    customer_id: str
    workflow_id: str
    score: int
    signals: list[Signal]
    auto_freeze: bool


class CaseRecorded(BaseModel):
    """Whether `case_id` is the customer's open case (else `open_case_id` is)."""

    case_id: str
    open_here: bool
    open_case_id: str | None


class CaseChange(BaseModel):
    """A case's state and cards, as it moves; idempotent."""

    case_id: str
    status: FraudCaseState
    frozen_cards: list[str] = Field(default_factory=list)
    escalations: int = 0
    decision: FraudDecision | None = None


class FraudCardChange(BaseModel):
    """Freeze, unfreeze or close one card, once (the update's id)."""

    card_id: str
    action: Literal["freeze", "unfreeze", "close"]
    update_id: str
    reason: str = Field(max_length=200)


class FraudCardOutcome(BaseModel):
    # The card did it now (False: it was so already, or is gone, or refused).
    changed: bool
    detail: str


class FraudNotice(BaseModel):
    key: str
    to: str
    subject: str
    body: str
