"""Every step has a deadline per queue kind: a step past it (a queue nobody
serves) shows as stuck in ProcessStatus and the current details, for
operators, and is scheduled again with the same request; once a worker serves
the queue the process goes on, shows its own status again, and pays once."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle

from activities.providers.activities import ProviderClients
from activities.queues import QueueKind
from schemas.cashback import CashbackInput
from schemas.money import Currency
from schemas.search import PROCESS_STATUS
from tests.conftest import TEST_POOL_SIZE_MAX, UNREACHABLE_PROVIDERS_URL, StackFactory
from tests.polling import until
from workers.build import build_worker
from workflows import steps
from workflows.cashback import Cashback, cashback_workflow_id
from workflows.process import STATUS_STUCK

# Short enough for a test; the policy itself is minutes.
TEST_DEADLINE = timedelta(seconds=2)
STUCK_SECONDS_MAX = 30
WORKFLOW_METADATA_QUERY = "__temporal_workflow_metadata"


@pytest.fixture
def short_ledger_deadline(monkeypatch: pytest.MonkeyPatch) -> timedelta:
    policy = replace(steps.STEP_POLICIES[QueueKind.LEDGER], deadline=TEST_DEADLINE)
    monkeypatch.setitem(steps.STEP_POLICIES, QueueKind.LEDGER, policy)
    return TEST_DEADLINE


async def process_status(handle: WorkflowHandle[Any, Any]) -> str | None:
    return (await handle.describe()).typed_search_attributes.get(PROCESS_STATUS)


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    metadata = await handle.query(WORKFLOW_METADATA_QUERY, result_type=WorkflowMetadata)
    return str(metadata.current_details)


def test_every_queue_kind_has_a_deadline_past_its_attempts_timeout() -> None:
    for kind in QueueKind:
        policy = steps.STEP_POLICIES[kind]
        assert policy.deadline > policy.start_to_close


async def test_a_step_on_a_queue_nobody_serves_shows_stuck_then_goes_on_when_served(
    make_stack: StackFactory, short_ledger_deadline: timedelta
) -> None:
    async with make_stack(["workflows", "providers"]) as stack:
        request = CashbackInput(
            transaction_id=f"txn-{uuid.uuid4().hex[:10]}",
            customer_id=f"cus-{uuid.uuid4().hex[:10]}",
            card_id="card-test",
            amount_minor=5_000,
            currency=Currency.USD,
            mcc="5411",
            occurred_at=datetime(2026, 3, 2, 12, 0, tzinfo=UTC),
            ledger_task_queue=stack.queues.ledger,
            providers_task_queue=stack.queues.providers,
            workflows_task_queue=stack.queues.workflows,
        )
        handle = await stack.client.start_workflow(
            Cashback.run,
            request,
            id=cashback_workflow_id(request.transaction_id),
            task_queue=stack.queues.workflows,
        )
        await until(
            lambda: process_status(handle),
            lambda status: status == STATUS_STUCK,
            "the process shown stuck",
            STUCK_SECONDS_MAX,
        )
        details = await current_details(handle)
        assert "Stuck" in details and stack.queues.ledger in details

        ledger = build_worker(
            "ledger",
            stack.client,
            stack.queues,
            pool=stack.pool,
            pool_size_max=TEST_POOL_SIZE_MAX,
            provider_clients=ProviderClients(UNREACHABLE_PROVIDERS_URL),
        )
        async with ledger:
            result = await handle.result()

        assert result.outcome == "no_reward"
        assert await process_status(handle) != STATUS_STUCK
        assert "Stuck" not in await current_details(handle)
        scheduled = [
            event.activity_task_scheduled_event_attributes
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        # The first gather passed its deadline and was scheduled again, the same request.
        assert len(scheduled) >= 2
        assert scheduled[0].activity_type.name == scheduled[1].activity_type.name
        first, again = [
            await stack.client.data_converter.decode(attributes.input.payloads)
            for attributes in scheduled[:2]
        ]
        assert first == again
        assert all(
            attributes.schedule_to_close_timeout.ToTimedelta() == short_ledger_deadline
            for attributes in scheduled
            if attributes.task_queue.name == stack.queues.ledger
        )
