"""The Ping workflow proves each task queue's worker answers, and names the one that does not."""

from __future__ import annotations

import uuid

import pytest

from activities.migrate import discover
from schemas.health import PingResult
from schemas.search import PROCESS_STATUS
from starters.health import WorkflowWorkerSilent, ping
from tests.conftest import RunningStack, StackFactory
from workflows.health import ping_workflow_id


async def test_ping_reports_every_queue_answering(stack: RunningStack) -> None:
    workflow_id = ping_workflow_id(uuid.uuid4().hex)
    result = await ping(stack.client, stack.queues, requested_by="test", workflow_id=workflow_id)
    assert isinstance(result, PingResult)
    assert result.healthy
    assert result.workflow_task_queue == stack.queues.workflows
    applied = f"database answered, {len(discover())} migrations applied"
    assert result.ledger.answered and applied in (result.ledger.worker_identity or "")
    assert result.providers.answered and result.providers.worker_identity
    description = await stack.client.get_workflow_handle(workflow_id).describe()
    assert description.typed_search_attributes.get(PROCESS_STATUS) == "healthy"


async def test_ping_names_the_queue_whose_worker_is_down(make_stack: StackFactory) -> None:
    async with make_stack(kinds=("workflows", "providers")) as running:
        result = await ping(running.client, running.queues, probe_timeout_seconds=1)
    assert not result.healthy
    assert result.providers.answered
    assert not result.ledger.answered
    assert result.ledger.task_queue == running.queues.ledger
    assert "timeout" in result.ledger.detail.lower()


async def test_ping_raises_when_no_workflow_worker_runs(make_stack: StackFactory) -> None:
    async with make_stack(kinds=("ledger", "providers")) as running:
        with pytest.raises(WorkflowWorkerSilent, match=running.queues.workflows):
            await ping(
                running.client, running.queues, probe_timeout_seconds=1, deadline_margin_seconds=2
            )
