"""How every process takes a step: an activity on the ledger or providers
queue with that queue's timeout and retry policy, a wait bounded by a policy,
and an idempotency key per step. Deterministic; for use inside workflows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LEDGER_RETRY_POLICY, LEDGER_START_TO_CLOSE
    from activities.providers.http import PROVIDER_RETRY_POLICY, PROVIDER_START_TO_CLOSE


async def on_ledger(
    task_queue: str,
    name: str,
    *args: object,
    result_type: type | None = None,
    retry_policy: RetryPolicy = LEDGER_RETRY_POLICY,
) -> Any:
    """Run a ledger-queue activity (database work)."""
    return await workflow.execute_activity(
        name,
        args=list(args),
        task_queue=task_queue,
        result_type=result_type,
        start_to_close_timeout=LEDGER_START_TO_CLOSE,
        retry_policy=retry_policy,
    )


async def on_providers(
    task_queue: str, name: str, *args: object, result_type: type | None = None
) -> Any:
    """Run a providers-queue activity (a call to an outside provider)."""
    return await workflow.execute_activity(
        name,
        args=list(args),
        task_queue=task_queue,
        result_type=result_type,
        start_to_close_timeout=PROVIDER_START_TO_CLOSE,
        retry_policy=PROVIDER_RETRY_POLICY,
    )


async def wait_for(condition: Callable[[], bool], seconds: int) -> bool:
    """True once `condition` holds; False if `seconds` pass first."""
    try:
        await workflow.wait_condition(condition, timeout=timedelta(seconds=seconds))
    except TimeoutError:
        return False
    return True


def step_key(step: str) -> str:
    """The idempotency key of one step of this workflow."""
    return f"{workflow.info().workflow_id}/{step}"
