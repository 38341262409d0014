"""Which workflow each provider event goes to, and how.

A route turns one verified event into one Temporal call on a workflow id
derived from the event: a signal, a signal-with-start, or an update. Processes
add their routes with their issues; the Ping workflow's routes prove the
mechanism end to end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, Field

from activities.withdrawals import chain_update
from schemas.bank import InboundTransfer
from schemas.cards import CARD_REASONS, CardInput, CardNetworkEvent, ShippingUpdate
from schemas.disputes import IssuerDisputeEvent
from schemas.edge import StorableText
from schemas.health import PingInput, WebhookEventNote
from schemas.issuer import Authorization, CardState, DecidedBy, Reversal, Transaction
from schemas.onboarding import KycResult
from schemas.providers import BANK, ISSUER, KYC, TRON
from schemas.task_queues import TaskQueues
from schemas.tron import ChainWithdrawal, Deposit
from schemas.withdrawals import PayoutUpdate
from starters.topup import topup_input_of, topup_workflow_id_of
from workflows.card_issue import SHIPPING_UPDATE_SIGNAL, card_issue_workflow_id
from workflows.cards import (
    CARD_WORKFLOW,
    NETWORK_EVENT_SIGNAL,
    card_start_metadata,
    card_workflow_id,
)
from workflows.dispute import ISSUER_EVENT_SIGNAL, dispute_workflow_id
from workflows.health import (
    PING_WORKFLOW,
    RECORD_WEBHOOK_EVENT_UPDATE,
    WEBHOOK_EVENT_SIGNAL,
    ping_start_metadata,
    ping_workflow_id,
)
from workflows.onboarding import KYC_RESULT_SIGNAL, onboarding_workflow_id
from workflows.topup import (
    BANK_TRANSFER_SIGNAL,
    DEPOSIT_SIGNAL,
    TOPUP_WORKFLOW,
    topup_start_metadata,
)
from workflows.withdrawal import PAYOUT_UPDATE_SIGNAL, withdrawal_workflow_id

ANY_PROVIDER = "*"


class ProviderEvent(BaseModel):
    """The envelope every simulator and provider adapter sends."""

    # Both are stored (gateway_webhook_events): PostgreSQL must be able to.
    id: StorableText = Field(min_length=1, max_length=200)
    type: StorableText = Field(min_length=1, max_length=200)
    created_at: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Start:
    workflow: str
    argument: Any
    task_queue: str


@dataclass(frozen=True)
class Route:
    kind: Literal["signal", "signal_with_start", "update"]
    name: str
    workflow_id: Callable[[str, ProviderEvent], str]
    argument: Callable[[str, ProviderEvent], Any]
    # signal_with_start only: what to start when the workflow is not running.
    start: Callable[[str, ProviderEvent, TaskQueues], Start] | None = None
    # When the workflow id is not in the event: look it up (None: no process).
    resolve: Callable[[asyncpg.Pool, ProviderEvent], Awaitable[str | None]] | None = None
    # Whether the workflow has anything to do with this event (None: always).
    wanted: Callable[[ProviderEvent], bool] | None = None
    # signal_with_start only: the start's static summary and details (what an
    # operator reads first in the Web UI), from the start's argument.
    summary: Callable[[Any], str] | None = None
    details: Callable[[Any], str] | None = None
    # signal only: what to start when the workflow has ended (None: nothing),
    # so the event still finds a process; summary and details as above.
    restart: Callable[[asyncpg.Pool, ProviderEvent, TaskQueues], Awaitable[Start | None]] | None = (
        None
    )


class PingEventData(BaseModel):
    ping_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    expected: int = Field(default=1, ge=1, le=1_000)
    sequence: int | None = None


def _ping_id(_: str, event: ProviderEvent) -> str:
    return ping_workflow_id(f"webhook-{PingEventData.model_validate(event.data).ping_id}")


def _ping_note(provider: str, event: ProviderEvent) -> WebhookEventNote:
    data = PingEventData.model_validate(event.data)
    return WebhookEventNote(
        event_id=event.id, event_type=event.type, provider=provider, sequence=data.sequence
    )


def _ping_start(provider: str, event: ProviderEvent, queues: TaskQueues) -> Start:
    data = PingEventData.model_validate(event.data)
    return Start(
        workflow=PING_WORKFLOW,
        argument=PingInput(
            ledger_task_queue=queues.ledger,
            providers_task_queue=queues.providers,
            requested_by=f"{provider} webhook",
            webhook_events_expected=data.expected,
        ),
        task_queue=queues.workflows,
    )


def _withdrawal_id(_: str, event: ProviderEvent) -> str:
    return withdrawal_workflow_id(str(event.data.get("reference", "")))


def _payout_update(_: str, event: ProviderEvent) -> PayoutUpdate:
    data = event.data
    return PayoutUpdate(
        payout_id=data["id"],
        status=data["status"],
        amount_minor=data["amount_minor"],
        reason=data.get("return_reason") or data.get("failure_reason"),
    )


def _chain_send_update(_: str, event: ProviderEvent) -> PayoutUpdate:
    return chain_update(ChainWithdrawal.model_validate(event.data))


def _onboarding_id(_: str, event: ProviderEvent) -> str:
    return onboarding_workflow_id(str(event.data.get("external_customer_id", "")))


def _kyc_result(_: str, event: ProviderEvent) -> KycResult:
    return KycResult(
        check_id=event.data["id"],
        status=event.data["status"],
        result=event.data.get("result"),
        reject_type=event.data.get("reject_type"),
        reject_labels=event.data.get("reject_labels") or [],
    )


async def _card_issue_of(pool: asyncpg.Pool, event: ProviderEvent) -> str | None:
    request_id = await pool.fetchval(
        "SELECT request_id FROM cards WHERE card_id = $1", str(event.data.get("id", ""))
    )
    return card_issue_workflow_id(request_id) if request_id else None


def _shipping(_: str, event: ProviderEvent) -> ShippingUpdate:
    shipping = event.data.get("shipping") or {}
    return ShippingUpdate(
        card_id=event.data["id"],
        status=shipping.get("status", "pending"),
        carrier=shipping.get("carrier"),
        tracking_number=shipping.get("tracking_number"),
        eta=shipping.get("eta"),
    )


def _card_id(_: str, event: ProviderEvent) -> str:
    return card_workflow_id(str(event.data.get("card_id", "")))


def _network_event(_: str, event: ProviderEvent) -> CardNetworkEvent:
    subject = event.type.split(".", 1)[0]
    if event.type == "authorization.reversed":
        return CardNetworkEvent(
            event_id=event.id, type=event.type, reversal=Reversal.model_validate(event.data)
        )
    if subject == "authorization":
        return CardNetworkEvent(
            event_id=event.id,
            type=event.type,
            authorization=Authorization.model_validate(event.data),
        )
    return CardNetworkEvent(
        event_id=event.id, type=event.type, transaction=Transaction.model_validate(event.data)
    )


def _may_differ_from_the_card(event: ProviderEvent) -> bool:
    """Whether the issuer's record of an authorization could differ from the
    card's: anything but a new (or declined) authorization whose every
    decision is the card's own answer, as the card gave it."""
    if event.type not in ("authorization.created", "authorization.declined"):
        return True
    decisions = event.data.get("decisions") or []
    return not decisions or any(
        decision.get("decided_by") != DecidedBy.CARDFLOW.value
        or decision.get("reason") not in CARD_REASONS
        for decision in decisions
    )


async def _card_restart(
    pool: asyncpg.Pool, event: ProviderEvent, queues: TaskQueues
) -> Start | None:
    """A card's money has a home even after its process ended (closed or
    replaced long ago): the issuer's money event starts the card's process
    again, closed, to post it. Snapshots of authorizations start nothing: a
    closed card whose process ended holds nothing."""
    if event.type.split(".", 1)[0] != "transaction" and event.type != "authorization.reversed":
        return None
    card_id = str(event.data.get("card_id", ""))
    customer_id = await pool.fetchval("SELECT customer_id FROM cards WHERE card_id = $1", card_id)
    if customer_id is None:
        return None
    card = CardInput(
        card_id=card_id,
        customer_id=customer_id,
        state=CardState.CLOSED,
        currency=event.data["currency"],
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    return Start(workflow=CARD_WORKFLOW, argument=card, task_queue=queues.workflows)


# The issuer's events about a card's money go to that card's entity workflow.
CARD_NETWORK_EVENTS = (
    "authorization.created",
    "authorization.declined",
    "authorization.incremented",
    "authorization.increment_declined",
    "authorization.advice",
    "authorization.reversed",
    "authorization.expired",
    "transaction.cleared",
    "transaction.force_posted",
    "transaction.refunded",
)


def _topup_start(provider: str, event: ProviderEvent, queues: TaskQueues) -> Start:
    return Start(
        workflow=TOPUP_WORKFLOW,
        argument=topup_input_of(provider, event.data, queues),
        task_queue=queues.workflows,
    )


def _topup_route(signal: str, record: type[BaseModel]) -> Route:
    """A bank transfer or a deposit snapshot starts or reaches its top-up."""
    return Route(
        kind="signal_with_start",
        name=signal,
        workflow_id=lambda provider, event: topup_workflow_id_of(provider, event.data),
        argument=lambda _, event: record.model_validate(event.data),
        start=_topup_start,
        summary=lambda request: topup_start_metadata(request).summary,
        details=lambda request: topup_start_metadata(request).details,
    )


def _dispute_id(_: str, event: ProviderEvent) -> str:
    return dispute_workflow_id(str(event.data.get("transaction_id", "")))


def _dispute_event(_: str, event: ProviderEvent) -> IssuerDisputeEvent:
    return IssuerDisputeEvent(
        event_id=event.id,
        type=event.type,
        dispute_id=event.data["id"],
        transaction_id=event.data["transaction_id"],
        status=event.data["status"],
    )


# The issuer's dispute decisions go to dispute/{transaction_id}.
DISPUTE_EVENTS = (
    "dispute.representment",
    "dispute.pre_arbitration",
    "dispute.won",
    "dispute.lost",
    "dispute.withdrawn",
)

DEPOSIT_EVENTS = (
    "deposit.detected",
    "deposit.confirmations",
    "deposit.finalized",
    "deposit.dropped",
)

# (provider or "*", event type) -> route.
ROUTES: dict[tuple[str, str], Route] = {
    **{
        (ISSUER, event_type): Route(
            kind="signal",
            name=NETWORK_EVENT_SIGNAL,
            workflow_id=_card_id,
            argument=_network_event,
            # Most new authorizations are decided by the card and stand as it
            # answered: nothing to reconcile, so the card is not woken.
            wanted=_may_differ_from_the_card,
            restart=_card_restart,
            summary=lambda card: card_start_metadata(card).summary,
            details=lambda card: card_start_metadata(card).details,
        )
        for event_type in CARD_NETWORK_EVENTS
    },
    # A physical card's shipment, to the card-issue process that follows it: the
    # one that ordered a new card, or a lost or stolen card's replacement's own.
    (ISSUER, "card.shipping.updated"): Route(
        kind="signal",
        name=SHIPPING_UPDATE_SIGNAL,
        workflow_id=lambda _p, _e: "",
        argument=_shipping,
        resolve=_card_issue_of,
    ),
    # The bank's word on a payout goes to the withdrawal it pays (its reference).
    **{
        (BANK, event_type): Route(
            kind="signal",
            name=PAYOUT_UPDATE_SIGNAL,
            workflow_id=_withdrawal_id,
            argument=_payout_update,
        )
        for event_type in ("payout.sent", "payout.failed", "payout.returned")
    },
    # Custody's word on a USDT send, likewise.
    **{
        (TRON, event_type): Route(
            kind="signal",
            name=PAYOUT_UPDATE_SIGNAL,
            workflow_id=_withdrawal_id,
            argument=_chain_send_update,
        )
        for event_type in ("withdrawal.confirming", "withdrawal.finalized", "withdrawal.failed")
    },
    # The KYC provider's verdicts go to the customer's onboarding, and so does a
    # check's start: an upload at the provider's own page starts one.
    (KYC, "check.pending"): Route(
        kind="signal", name=KYC_RESULT_SIGNAL, workflow_id=_onboarding_id, argument=_kyc_result
    ),
    (KYC, "check.completed"): Route(
        kind="signal", name=KYC_RESULT_SIGNAL, workflow_id=_onboarding_id, argument=_kyc_result
    ),
    (KYC, "check.on_hold"): Route(
        kind="signal", name=KYC_RESULT_SIGNAL, workflow_id=_onboarding_id, argument=_kyc_result
    ),
    # Any provider can send a test event ("send test webhook"): it starts or
    # signals a Ping workflow that records each event once.
    (ANY_PROVIDER, "cardflow.ping"): Route(
        kind="signal_with_start",
        name=WEBHOOK_EVENT_SIGNAL,
        workflow_id=_ping_id,
        argument=_ping_note,
        start=_ping_start,
        summary=lambda request: ping_start_metadata(request).summary,
        details=lambda request: ping_start_metadata(request).details,
    ),
    (ANY_PROVIDER, "cardflow.ping.update"): Route(
        kind="update",
        name=RECORD_WEBHOOK_EVENT_UPDATE,
        workflow_id=_ping_id,
        argument=_ping_note,
    ),
    # Money arriving: a bank transfer, or a deposit as the chain sees it (any
    # order, any number of times), to topup/{bank|usdt}/{ref}.
    (BANK, "inbound_transfer.received"): _topup_route(BANK_TRANSFER_SIGNAL, InboundTransfer),
    **{(TRON, event_type): _topup_route(DEPOSIT_SIGNAL, Deposit) for event_type in DEPOSIT_EVENTS},
    **{
        (ISSUER, event_type): Route(
            kind="signal",
            name=ISSUER_EVENT_SIGNAL,
            workflow_id=_dispute_id,
            argument=_dispute_event,
        )
        for event_type in DISPUTE_EVENTS
    },
}


def route_for(provider: str, event_type: str) -> Route | None:
    return ROUTES.get((provider, event_type)) or ROUTES.get((ANY_PROVIDER, event_type))
