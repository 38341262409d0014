"""How every process takes a step: an activity on the ledger or providers
queue with that queue's timeout, retry policy and deadline, a wait bounded by
a policy, and an idempotency key per step. Deterministic; for use inside
workflows.

A step that has not succeeded by its queue kind's deadline (its
schedule-to-close: a queue nobody serves, a provider down for that long) is
shown as stuck, in the process's ProcessStatus and its current details, for
operators, and is scheduled again with the same request (every activity is
idempotent on its request); once it succeeds the process shows its stage
again and goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar, cast, overload

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, RetryState

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LEDGER_RETRY_POLICY, LEDGER_START_TO_CLOSE
    from activities.providers.http import PROVIDER_RETRY_POLICY, PROVIDER_START_TO_CLOSE
    from activities.queues import QueueKind, queue_kind
    from workflows.process import ProcessStage

SelfT = TypeVar("SelfT")
InT = TypeVar("InT")
OutT = TypeVar("OutT")


class StepQueues(Protocol):
    """Where a process's activities run: every process input names both queues."""

    @property
    def ledger_task_queue(self) -> str: ...

    @property
    def providers_task_queue(self) -> str: ...


# Past these a step shows as stuck. The ledger is the platform's own
# database, a few seconds away when anything serves its queue; a provider's
# outage may last a while before anyone needs to look.
LEDGER_STEP_DEADLINE = timedelta(minutes=5)
PROVIDER_STEP_DEADLINE = timedelta(minutes=30)


@dataclass(frozen=True)
class StepPolicy:
    """How long one attempt of a step on a queue kind may take, how it is
    retried, and by when it should have succeeded (its schedule-to-close)."""

    start_to_close: timedelta
    retry_policy: RetryPolicy
    deadline: timedelta


STEP_POLICIES: dict[QueueKind, StepPolicy] = {
    QueueKind.LEDGER: StepPolicy(LEDGER_START_TO_CLOSE, LEDGER_RETRY_POLICY, LEDGER_STEP_DEADLINE),
    QueueKind.PROVIDERS: StepPolicy(
        PROVIDER_START_TO_CLOSE, PROVIDER_RETRY_POLICY, PROVIDER_STEP_DEADLINE
    ),
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
    its own (a bounded number of attempts, say). Past the kind's deadline
    the step shows as stuck and is scheduled again, the same request."""
    kind = queue_kind(activity)
    policy = STEP_POLICIES[kind]
    task_queue = (
        queues.ledger_task_queue if kind is QueueKind.LEDGER else queues.providers_task_queue
    )
    stuck: StuckStep | None = None
    while True:
        try:
            result = await workflow.execute_activity_method(
                cast(Any, activity),
                args=list(args),
                task_queue=task_queue,
                start_to_close_timeout=policy.start_to_close,
                schedule_to_close_timeout=policy.deadline,
                retry_policy=retry_policy or policy.retry_policy,
            )
        except ActivityError as error:
            if error.retry_state != RetryState.TIMEOUT:
                raise
            if stuck is None:
                stuck = StuckStep(error.activity_type or "step", task_queue, policy.deadline)
                stuck.begin()
            workflow.logger.warning("%s, scheduled again: %s", stuck.description, error.cause)
            continue
        if stuck is not None:
            stuck.end()
        return result


@dataclass(frozen=True)
class StuckStep:
    """A step past its deadline, shown on the process's tracker while it lasts."""

    activity_type: str
    task_queue: str
    deadline: timedelta

    @property
    def description(self) -> str:
        minutes = int(self.deadline.total_seconds()) // 60
        return (
            f"{self.activity_type} on {self.task_queue} has not succeeded within {minutes} min"
            if minutes
            else f"{self.activity_type} on {self.task_queue} has not succeeded"
            f" within {self.deadline.total_seconds():g} s"
        )

    def begin(self) -> None:
        tracker = _tracker()
        if tracker is not None:
            tracker.stuck(self.description)

    def end(self) -> None:
        tracker = _tracker()
        if tracker is not None:
            tracker.unstuck(self.description)


def _tracker() -> ProcessStage | None:
    """The running process's stage tracker (its attribute `progress`), if it keeps one."""
    found = getattr(workflow.instance(), "progress", None)
    return found if isinstance(found, ProcessStage) else None


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
