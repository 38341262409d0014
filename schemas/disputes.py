"""Disputes `dispute/{transaction_id}`: the customer's chargeback of a cleared card transaction.

The evidence each reason requires (REQUIRED_EVIDENCE), the policy holding
every deadline, the workflow's input, messages, status and result, and the
customer's debt account (a receivable the lost-dispute shortfall is recorded on).

Ledger legs (every one in the transaction's currency, so each currency balances):

    provisional credit   disputes:provisional -> wallet                A
    won, credited        issuer:settlement    -> disputes:provisional  A (the issuer pays)
    won, not credited    issuer:settlement    -> wallet                A
    lost / withdrawn,    wallet               -> disputes:provisional  what the wallet covers
      credited           customer:{id}:debt   -> disputes:provisional  the shortfall
    lost / withdrawn,    nothing
      not credited

(every account in the transaction's currency, `:{CCY}` left out above).

So `disputes:provisional` returns to zero for every closed dispute, and a
wallet never goes below zero: what it cannot cover is a debt the customer owes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.customers import CustomerId
from schemas.edge import TEXT_CHARS_MAX, EdgeModel, Text
from schemas.issuer import DisputeReason, DisputeStatus, EvidenceType
from schemas.ledger import AccountSpec, AmountMinor
from schemas.money import Currency
from schemas.task_queues import DEFAULT_TASK_QUEUE_PREFIX, TaskQueues
from schemas.units import DAY_SECONDS

_QUEUES = TaskQueues(prefix=DEFAULT_TASK_QUEUE_PREFIX)
EVIDENCE_ITEMS_MAX = 20
# A piece of evidence: text of several lines, as the issuer takes it.
EVIDENCE_TEXT_CHARS_MAX = TEXT_CHARS_MAX

# Issuer ids; short enough that every ledger key built from them stays under 200.
TransactionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]

# What the card network asks the cardholder to show for each reason.
REQUIRED_EVIDENCE: dict[DisputeReason, frozenset[EvidenceType]] = {
    # A signed statement that the cardholder did not make or allow the purchase.
    DisputeReason.FRAUDULENT: frozenset({EvidenceType.CARDHOLDER_STATEMENT}),
    # The statement and proof the merchant was asked to deliver.
    DisputeReason.NOT_RECEIVED: frozenset(
        {EvidenceType.CARDHOLDER_STATEMENT, EvidenceType.CORRESPONDENCE}
    ),
    # The receipt of the other, legitimate charge.
    DisputeReason.DUPLICATE: frozenset({EvidenceType.RECEIPT}),
    DisputeReason.NOT_AS_DESCRIBED: frozenset(
        {EvidenceType.CARDHOLDER_STATEMENT, EvidenceType.CORRESPONDENCE}
    ),
    # The merchant's cancellation confirmation (or the cardholder's request).
    DisputeReason.CANCELED: frozenset({EvidenceType.CORRESPONDENCE}),
    DisputeReason.OTHER: frozenset({EvidenceType.CARDHOLDER_STATEMENT}),
}

DISPUTABLE_KINDS = frozenset({"clearing", "force_post"})


def missing_evidence(reason: DisputeReason, evidence: list[EvidenceItem]) -> list[str]:
    """The evidence types `reason` requires that `evidence` lacks, sorted."""
    have = {item.type for item in evidence}
    return sorted(kind.value for kind in REQUIRED_EVIDENCE[reason] - have)


def customer_debt(customer_id: str, currency: Currency | str) -> str:
    return f"customer:{customer_id}:debt:{Currency(currency).value}"


def customer_debt_spec(customer_id: str, currency: Currency | str) -> AccountSpec:
    """What the customer owes us: debited with a shortfall, credited when repaid;
    it can never owe us less than nothing."""
    return AccountSpec(
        code=customer_debt(customer_id, currency),
        currency=Currency(currency),
        kind="receivable",
        owner_id=customer_id,
        credits_must_not_exceed_debits=True,
    )


class EvidenceItem(EdgeModel):
    """One piece of evidence; the signal `add_evidence`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EvidenceType
    description: Text


class DisputePolicy(BaseModel):
    """Every deadline of a dispute, in seconds so tests can run them quickly."""

    model_config = ConfigDict(extra="forbid")

    # A transaction can be disputed this long after it settled.
    filing_window_seconds: int = Field(default=120 * DAY_SECONDS, ge=1)
    # The customer completes and submits the evidence within this; then the dispute lapses.
    evidence_window_seconds: int = Field(default=14 * DAY_SECONDS, ge=1)
    # Undecided this long after submission, the wallet is credited provisionally (0: at once).
    provisional_credit_after_seconds: int = Field(default=10 * DAY_SECONDS, ge=0)
    # After a representment, the customer answers within this; then pre-arbitration.
    representment_response_seconds: int = Field(default=10 * DAY_SECONDS, ge=1)
    # Without news this long, the issuer is asked (a webhook may have been lost).
    issuer_poll_seconds: int = Field(default=DAY_SECONDS, ge=1)
    # The dispute gives up waiting for the network after this (an operator takes over).
    decision_wait_seconds_max: int = Field(default=180 * DAY_SECONDS, ge=1)
    # A wallet that cannot cover a reversal is read again and debited, this often.
    reversal_attempts_max: int = Field(default=3, ge=1, le=10)


class DisputeRequest(EdgeModel):
    """A customer's dispute of (part of) a cleared transaction of theirs, as
    they open it (the API's body)."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: TransactionId
    customer_id: CustomerId
    reason: DisputeReason
    # None: the whole transaction.
    amount_minor: AmountMinor | None = None
    evidence: list[EvidenceItem] = Field(default_factory=list, max_length=EVIDENCE_ITEMS_MAX)


class DisputeInput(DisputeRequest):
    """The workflow's input: the request, the platform's policy and queues."""

    policy: DisputePolicy = Field(default_factory=DisputePolicy)
    ledger_task_queue: str = _QUEUES.ledger
    providers_task_queue: str = _QUEUES.providers
    workflows_task_queue: str = _QUEUES.workflows


class DisputeSubmission(EdgeModel):
    """The update `submit`: the evidence is complete; send it (or the representment answer)."""

    model_config = ConfigDict(extra="forbid")

    # More evidence handed in with the submission.
    evidence: list[EvidenceItem] = Field(default_factory=list, max_length=EVIDENCE_ITEMS_MAX)


class WithdrawRequest(EdgeModel):
    """The update `withdraw`: the customer (or an operator for them) drops the dispute."""

    model_config = ConfigDict(extra="forbid")

    by: Literal["customer", "operator"] = "customer"
    note: str = Field(default="", max_length=500)


class OperatorAction(EdgeModel):
    """The update `operator_action`: credit provisionally now, or answer a
    representment now (pre-arbitration) without waiting for the deadline."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["credit_now", "escalate"]
    operator: str = Field(min_length=1, max_length=100)
    note: str = Field(default="", max_length=500)


class IssuerDisputeEvent(BaseModel):
    """The issuer's dispute webhook, routed to the signal `issuer_event`."""

    model_config = ConfigDict(extra="ignore")

    event_id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    dispute_id: str
    transaction_id: str
    status: DisputeStatus


class DisputedTransaction(BaseModel):
    """The settled transaction as the card recorded it (card_transactions)."""

    transaction_id: str
    card_id: str
    customer_id: str
    kind: str
    amount_minor: int
    currency: Currency
    merchant_name: str | None = None
    occurred_at: AwareDatetime


class IssuerDisputeRequest(BaseModel):
    """What the providers-queue activities send to the issuer."""

    key: str = Field(min_length=1, max_length=200)
    transaction_id: str = ""
    dispute_id: str = ""
    reason: DisputeReason | None = None
    amount_minor: int | None = None
    evidence: list[EvidenceItem] = Field(default_factory=list)


DisputeOutcome = Literal["refused", "expired", "won", "lost", "withdrawn", "undecided"]


class DisputeStatusView(BaseModel):
    """The `status` query."""

    transaction_id: str
    stage: str
    reason: DisputeReason
    customer_id: str
    card_id: str | None = None
    amount_minor: int | None = None
    currency: Currency | None = None
    evidence: list[EvidenceItem] = Field(default_factory=list)
    missing_evidence: list[str] = Field(default_factory=list)
    issuer_dispute_id: str | None = None
    issuer_status: DisputeStatus | None = None
    provisional_credit_minor: int = 0
    reversed_minor: int = 0
    debt_minor: int = 0
    final_credit_minor: int = 0
    deadline_at: datetime | None = None
    provisional_credit_at: datetime | None = None


class DisputeResult(BaseModel):
    transaction_id: str
    outcome: DisputeOutcome
    reason: str = ""
    issuer_dispute_id: str | None = None
    amount_minor: int = 0
    currency: Currency | None = None
    # Credited provisionally; on a won dispute it stays (final_credit_minor equals it).
    provisional_credit_minor: int = 0
    # Taken back from the wallet on a lost or withdrawn dispute.
    reversed_minor: int = 0
    # What the wallet could not cover, recorded on customer:{id}:debt:{CCY}.
    debt_minor: int = 0
    # What the customer keeps in the end.
    final_credit_minor: int = 0
