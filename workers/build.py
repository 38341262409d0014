"""What runs on each task queue. Process entry points and tests both build
their workers here, so a test exercises exactly what production runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.worker import Interceptor, Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.authentication import (
    AuthenticationLedgerActivities,
    AuthenticationProviderActivities,
)
from activities.billing import BillingActivities
from activities.card_controls import CardControlActivities
from activities.card_tiers import CardTierActivities
from activities.card_transactions import CardTransactionActivities
from activities.cashback import CashbackActivities
from activities.closures import ClosureActivities
from activities.customers import CustomerActivities
from activities.disputes import DisputeLedgerActivities, DisputeProviderActivities
from activities.event_delivery import EventDeliveryActivities
from activities.fraud import FraudLedgerActivities, FraudProviderActivities
from activities.health import LedgerHealthActivities, providers_ping
from activities.ledger.activities import LedgerActivities
from activities.program_funding import (
    ProgramFundingLedgerActivities,
    ProgramFundingProviderActivities,
)
from activities.providers.activities import ProviderActivities, ProviderClients
from activities.reconciliation import (
    ReconciliationLedgerActivities,
    ReconciliationProviderActivities,
)
from activities.settlement_decisions import SettlementDecisionActivities
from activities.settlement_ingest import SettlementIngestActivities
from activities.topups import TopupActivities, TopupReceiptActivities
from activities.withdrawals import PayoutActivities, WithdrawalActivities
from schemas.task_queues import TaskQueues
from workers.interceptors import UnrepresentableValueInterceptor
from workflows.catalog import ALL_WORKFLOWS

# Models validate e-mail addresses with email-validator, which loads its own
# modules lazily; they are deterministic and pass through the sandbox. The
# tracing interceptor's spans must be the process's own OpenTelemetry objects,
# not copies re-imported per workflow run.
WORKFLOW_SANDBOX_RESTRICTIONS = SandboxRestrictions.default.with_passthrough_modules(
    "email_validator", "idna", "dns", "opentelemetry"
)


def sandboxed_runner() -> SandboxedWorkflowRunner:
    """The sandbox every workflow runs in on the workers, but those whose
    definition opts out (the card, whose decisions are the hot path)."""
    return SandboxedWorkflowRunner(restrictions=WORKFLOW_SANDBOX_RESTRICTIONS)


def guarded_replayer(
    workflows: Sequence[type], data_converter: DataConverter, **options: Any
) -> Replayer:
    """A replayer that runs every workflow inside the sandbox, also one the
    workers run outside it: the replays of recorded histories are where a
    non-deterministic call (a clock, I/O, the environment) in such a workflow
    is still caught."""
    return Replayer(
        workflows=workflows,
        data_converter=data_converter,
        workflow_runner=sandboxed_runner(),
        unsandboxed_workflow_runner=sandboxed_runner(),
        **options,
    )


# Provider APIs rate-limit us; the worker's task-queue limit keeps the whole
# fleet under it no matter how many processes run.
PROVIDERS_ACTIVITIES_PER_SECOND_MAX = 50.0


def ledger_activities(pool: asyncpg.Pool, client: Client | None = None) -> list[Callable[..., Any]]:
    """The ledger queue's activities; `client` is how a closure or a fraud
    case asks cards to freeze and close through their updates, and how a
    fraud scan lists disputes (without one, only listed)."""
    return [
        *ClosureActivities(pool, client).all(),  # type: ignore[list-item]
        *CardTierActivities(pool).all(),  # type: ignore[list-item]
        *CardControlActivities(pool).all(),  # type: ignore[list-item]
        LedgerHealthActivities(pool).ping,
        *LedgerActivities(pool).all(),  # type: ignore[list-item]
        *CustomerActivities(pool).all(),  # type: ignore[list-item]
        *CardTransactionActivities(pool).all(),  # type: ignore[list-item]
        *CashbackActivities(pool).all(),  # type: ignore[list-item]
        *TopupActivities(pool).all(),  # type: ignore[list-item]
        *ReconciliationLedgerActivities(pool).all(),  # type: ignore[list-item]
        *DisputeLedgerActivities(pool).all(),  # type: ignore[list-item]
        *BillingActivities(pool).all(),  # type: ignore[list-item]
        *EventDeliveryActivities(pool).ledger(),  # type: ignore[list-item]
        *WithdrawalActivities(pool).all(),  # type: ignore[list-item]
        *ProgramFundingLedgerActivities(pool).all(),  # type: ignore[list-item]
        *FraudLedgerActivities(pool, client).all(),  # type: ignore[list-item]
        *AuthenticationLedgerActivities(pool).all(),  # type: ignore[list-item]
        *SettlementIngestActivities(None, pool).ledger_side(),  # type: ignore[list-item]
        *SettlementDecisionActivities(pool).all(),  # type: ignore[list-item]
    ]


def local_ledger_activities(pool: asyncpg.Pool) -> list[Callable[..., Any]]:
    """Ledger calls a workflow makes as local activities, inside its own
    workflow task, where a round trip through a task queue costs too much
    (a card authorization's hold, answered while the issuer waits; the void
    of a hold a lost task may have left, asked for every stand-in answer)."""
    ledger = LedgerActivities(pool)
    return [
        ledger.hold,
        ledger.balance,
        ledger.resolve_hold,
        CardTierActivities(pool).hold_within_tier,
    ]


def provider_activities(clients: ProviderClients, pool: asyncpg.Pool) -> list[Callable[..., Any]]:
    return [
        providers_ping,
        *ProviderActivities(clients, pool).all(),  # type: ignore[list-item]
        *TopupReceiptActivities(clients, pool).all(),  # type: ignore[list-item]
        *ReconciliationProviderActivities(clients, pool).all(),  # type: ignore[list-item]
        *DisputeProviderActivities(clients).all(),  # type: ignore[list-item]
        *EventDeliveryActivities(  # type: ignore[list-item]
            pool, ProviderActivities(clients, pool)
        ).providers(),
        *PayoutActivities(clients).all(),  # type: ignore[list-item]
        *ProgramFundingProviderActivities(clients, pool).all(),  # type: ignore[list-item]
        *FraudProviderActivities(clients).all(),  # type: ignore[list-item]
        *AuthenticationProviderActivities(clients, pool).all(),  # type: ignore[list-item]
        # A settlement file's chunks: read from the issuer, written to the
        # database a batch at a time (activities/settlement_ingest.py).
        *SettlementIngestActivities(clients, pool).providers(),  # type: ignore[list-item]
    ]


# Innermost on every worker (after the caller's): it sees an activity's own error.
ALWAYS_INTERCEPTORS: Sequence[Interceptor] = (UnrepresentableValueInterceptor(),)


def build_worker(
    kind: str,
    client: Client,
    queues: TaskQueues,
    *,
    pool: asyncpg.Pool | None = None,
    pool_size_max: int = 10,
    identity: str | None = None,
    provider_clients: ProviderClients | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Worker:
    """The worker for one task-queue kind: workflows, ledger or providers.
    `interceptors` apply to the workflows worker (tests inject faults there);
    every worker runs ALWAYS_INTERCEPTORS."""
    if kind == "workflows":
        assert pool is not None, "the workflows worker needs a database pool (local activities)"
        return Worker(
            client,
            task_queue=queues.workflows,
            workflows=list(ALL_WORKFLOWS),
            activities=local_ledger_activities(pool),
            identity=identity,
            workflow_runner=sandboxed_runner(),
            interceptors=[*interceptors, *ALWAYS_INTERCEPTORS],
        )
    if kind == "ledger":
        assert pool is not None, "the ledger worker needs a database pool"
        # Never take more activities than there are connections: the extra
        # ones would only queue inside the process and time out there.
        return Worker(
            client,
            task_queue=queues.ledger,
            activities=ledger_activities(pool, client),
            max_concurrent_activities=pool_size_max,
            identity=identity,
            interceptors=ALWAYS_INTERCEPTORS,
        )
    if kind == "providers":
        assert pool is not None and provider_clients is not None, (
            "the providers worker needs a database pool and provider clients"
        )
        return Worker(
            client,
            task_queue=queues.providers,
            activities=provider_activities(provider_clients, pool),
            max_task_queue_activities_per_second=PROVIDERS_ACTIVITIES_PER_SECOND_MAX,
            identity=identity,
            interceptors=ALWAYS_INTERCEPTORS,
        )
    raise ValueError(f"unknown task-queue kind {kind!r}; expected workflows, ledger or providers")
