"""Ledger activities under Temporal: retries are safe, rejections are not retried."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.ledger import Ledger
from activities.ledger.activities import (
    LEDGER_RETRY_POLICY,
    LEDGER_START_TO_CLOSE,
    TRANSFER,
    LedgerActivities,
)
from schemas.ledger import TransferOutcome, TransferRequest
from tests.activities.ledger.helpers import BANK, move, open_basics
from tests.metrics import prometheus_runtime, scrape
from tests.polling import until


@workflow.defn(name="LedgerTransferProbe", sandboxed=False)
class TransferProbe:
    """Runs one ledger transfer activity with the production retry policy."""

    @workflow.run
    async def run(self, request: TransferRequest) -> TransferOutcome:
        outcome: TransferOutcome = await workflow.execute_activity(
            TRANSFER,
            request,
            start_to_close_timeout=LEDGER_START_TO_CLOSE,
            retry_policy=LEDGER_RETRY_POLICY,
            result_type=TransferOutcome,
        )
        return outcome


class CrashAfterCommit:
    """The real transfer activity, whose first attempt commits and then dies."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.real = LedgerActivities(pool)
        self.attempts: list[int] = []

    @activity.defn(name=TRANSFER)
    async def transfer(self, request: TransferRequest) -> TransferOutcome:
        self.attempts.append(activity.info().attempt)
        outcome = await self.real.transfer(request)
        if activity.info().attempt == 1:
            raise ConnectionResetError("worker lost its connection after the commit")
        return outcome


async def run_probe(
    client: Client, activities: LedgerActivities | CrashAfterCommit, request: TransferRequest
) -> TransferOutcome:
    queue = f"ledger-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client, task_queue=queue, workflows=[TransferProbe], activities=[activities.transfer]
    ):
        return await client.execute_workflow(
            TransferProbe.run,
            request,
            id=f"probe/{uuid.uuid4().hex}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )


async def test_a_retry_after_commit_leaves_exactly_one_transfer(
    workflow_env: WorkflowEnvironment, ledger_pool: asyncpg.Pool
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a")
    crashing = CrashAfterCommit(ledger_pool)
    request = move(BANK, "w:a", 4_200)
    outcome = await run_probe(workflow_env.client, crashing, request)
    assert crashing.attempts == [1, 2]
    assert outcome.accepted and outcome.replayed
    rows = await ledger_pool.fetch(
        "SELECT id FROM ledger_transfers WHERE idempotency_key = $1", request.key
    )
    assert [r["id"] for r in rows] == [outcome.transfer_id]
    assert (await ledger.balance("w:a")).posted == 4_200


async def test_a_business_rejection_is_returned_not_retried(
    workflow_env: WorkflowEnvironment, ledger_pool: asyncpg.Pool
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")

    class Counting(LedgerActivities):
        attempts = 0

        @activity.defn(name=TRANSFER)
        async def transfer(self, request: TransferRequest) -> TransferOutcome:
            Counting.attempts += 1
            return await super().transfer(request)

    outcome = await run_probe(
        workflow_env.client,
        Counting(ledger_pool),
        move("w:a", "w:b", 1),
    )
    assert outcome.rejection == "insufficient_funds" and Counting.attempts == 1


async def test_a_reused_key_fails_the_activity_once_without_retrying(
    workflow_env: WorkflowEnvironment, ledger_pool: asyncpg.Pool
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a")
    await ledger.transfer(move(BANK, "w:a", 5, k="reused-key"))

    class Counting(LedgerActivities):
        attempts = 0

        @activity.defn(name=TRANSFER)
        async def transfer(self, request: TransferRequest) -> TransferOutcome:
            Counting.attempts += 1
            return await super().transfer(request)

    with pytest.raises(WorkflowFailureError) as failure:
        await run_probe(
            workflow_env.client,
            Counting(ledger_pool),
            move(BANK, "w:a", 6, k="reused-key"),
        )
    activity_error = failure.value.cause
    assert isinstance(activity_error, ActivityError)
    cause = activity_error.cause  # workflow failure <- activity error <- application error
    assert isinstance(cause, ApplicationError)
    assert cause.type == "IdempotencyConflict" and "reused-key" in cause.message
    assert Counting.attempts == 1


async def test_a_refusal_is_counted_once_by_reason_not_again_when_replayed(
    ledger_pool: asyncpg.Pool,
) -> None:
    ledger = Ledger(ledger_pool)
    await open_basics(ledger, "w:a", "w:b")
    runtime, port = prometheus_runtime()
    env = ActivityEnvironment()
    env.metric_meter = runtime.metric_meter
    activities = LedgerActivities(ledger_pool)
    request = move("w:a", "w:b", 1)
    first = await env.run(activities.transfer, request)
    # The retry of an activity that had answered: the same refusal, replayed.
    again = await env.run(activities.transfer, request)
    assert first.rejection == again.rejection == "insufficient_funds" and again.replayed

    async def refusals() -> dict[tuple[str, str], float]:
        return {
            (sample.labels["operation"], sample.labels["reason"]): sample.value
            for sample in await scrape(port)
            if sample.name == "cardflow_ledger_rejections_total"
        }

    counted = await until(refusals, bool, "the refusal counted", 10)
    assert counted == {("transfer", "insufficient_funds"): 1}
