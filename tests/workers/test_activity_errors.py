"""An activity given a value its layer cannot hold (a NUL PostgreSQL refuses,
a day whose next day overflows) fails at once, not retrying: the same
input can never succeed, so the process moves on (compensates) instead of
looping."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

from activities.customers import SET_KYC_STATUS
from activities.reconciliation import MATCH_SETTLEMENT
from tests.conftest import RunningStack

# Long enough for one attempt; an activity still retrying past it loops.
PROBE_SECONDS_MAX = 20


class Probe(BaseModel):
    activity: str
    args: list[Any]
    task_queue: str


@workflow.defn(name="ActivityErrorProbe", sandboxed=False)
class ActivityErrorProbe:
    """Runs one activity, retried without limit unless it says not to; answers how it failed."""

    @workflow.run
    async def run(self, probe: Probe) -> str:
        try:
            await workflow.execute_activity(
                probe.activity,
                args=probe.args,
                task_queue=probe.task_queue,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(milliseconds=100),
                    maximum_interval=timedelta(milliseconds=500),
                ),
            )
        except ActivityError as error:
            cause = error.cause
            assert isinstance(cause, ApplicationError)
            return f"{cause.type} non_retryable={cause.non_retryable}"
        return "completed"


@pytest.mark.parametrize(
    ("activity", "args"),
    [
        (SET_KYC_STATUS, [{"customer_id": "c-\x00", "status": "approved"}]),
        (MATCH_SETTLEMENT, [{"run_key": "probe", "settlement_date": "9999-12-31"}]),
    ],
    ids=["nul-in-text", "date-overflow"],
)
async def test_an_activity_given_an_unrepresentable_value_fails_without_retrying(
    stack: RunningStack, activity: str, args: list[Any]
) -> None:
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    async with Worker(stack.client, task_queue=queue, workflows=[ActivityErrorProbe]):
        outcome = await asyncio.wait_for(
            stack.client.execute_workflow(
                ActivityErrorProbe.run,
                Probe(activity=activity, args=args, task_queue=stack.queues.ledger),
                id=f"probe-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            ),
            PROBE_SECONDS_MAX,
        )
    assert outcome == "UnrepresentableValue non_retryable=True"
