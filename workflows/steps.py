"""How every process takes a step: an activity on the ledger or providers
queue with that queue's timeout and retry policy, a wait bounded by a policy,
and an idempotency key per step. Deterministic; for use inside workflows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar, cast, overload

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LEDGER_RETRY_POLICY, LEDGER_START_TO_CLOSE
    from activities.providers.http import PROVIDER_RETRY_POLICY, PROVIDER_START_TO_CLOSE
    from activities.queues import QueueKind, queue_kind

SelfT = TypeVar("SelfT")
InT = TypeVar("InT")
OutT = TypeVar("OutT")


class StepQueues(Protocol):
    """Where a process's activities run: every process input names both queues."""

    @property
    def ledger_task_queue(self) -> str: ...

    @property
    def providers_task_queue(self) -> str: ...


@dataclass(frozen=True)
class StepPolicy:
    """How long one attempt of a step on a queue kind may take, and how it is retried."""

    start_to_close: timedelta
    retry_policy: RetryPolicy


STEP_POLICIES: dict[QueueKind, StepPolicy] = {
    QueueKind.LEDGER: StepPolicy(LEDGER_START_TO_CLOSE, LEDGER_RETRY_POLICY),
    QueueKind.PROVIDERS: StepPolicy(PROVIDER_START_TO_CLOSE, PROVIDER_RETRY_POLICY),
}


@overload
async def step(
    queues: StepQueues,
    activity: Callable[[SelfT], Awaitable[OutT]],
    /,
    *,
    retry_policy: RetryPolicy | None = None,
) -> OutT: ...


@overload
async def step(
    queues: StepQueues,
    activity: Callable[[SelfT, InT], Awaitable[OutT]],
    request: InT,
    /,
    *,
    retry_policy: RetryPolicy | None = None,
) -> OutT: ...


async def step(
    queues: StepQueues,
    activity: Callable[..., Awaitable[Any]],
    /,
    *args: Any,
    retry_policy: RetryPolicy | None = None,
) -> Any:
    """Run `activity` (a method of an activities class, by reference) on the
    queue of its kind with that kind's policy; the answer is the activity's
    own result type. `retry_policy` replaces the kind's where a step needs
    its own (a bounded number of attempts, say)."""
    kind = queue_kind(activity)
    policy = STEP_POLICIES[kind]
    task_queue = (
        queues.ledger_task_queue if kind is QueueKind.LEDGER else queues.providers_task_queue
    )
    return await workflow.execute_activity_method(
        cast(Any, activity),
        args=list(args),
        task_queue=task_queue,
        start_to_close_timeout=policy.start_to_close,
        retry_policy=retry_policy or policy.retry_policy,
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
