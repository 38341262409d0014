"""The process skeleton every workflow is built on (workflows/process.py and
workflows/steps.py), proven on a small workflow with stubbed activities and
short policies against the dev server: no database, no simulators, a few
seconds in all. Part of the fast tier (`make test-fast`).

- the saga undoes newest first, stops at a failed undo step unless told to
  keep going, and finishes its undo steps even when the process is cancelled
  meanwhile;
- the stage tracker upserts at once, or batched at the next flush; a step
  past its deadline shows `stuck` at once even when batched, and the stage's
  own status comes back once the step succeeds;
- a step that fails for good is not "stuck": its failure reaches the process.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.queues import QueueKind, ledger_activity, provider_activity
from schemas.search import PROCESS_STATUS
from tests.polling import until
from workflows import steps
from workflows.cancellation import is_cancellation
from workflows.process import STATUS_STUCK, ProcessStage, Saga
from workflows.steps import step

pytestmark = pytest.mark.fast

STUB_DEADLINE = timedelta(seconds=2)
WAIT_SECONDS_MAX = 20
# A business failure the probe raises after its steps, to make it compensate.
FAILURE = "the business step failed"


class Plan(BaseModel):
    ledger_task_queue: str
    providers_task_queue: str
    steps: int = 3
    fail: bool = False
    keep_going: bool = False
    batched: bool = False
    # Undo steps that fail for good, by step number.
    failing_undo: list[int] = []
    # Wait in the undo of this step until the test lets it go.
    held_undo: int | None = None
    # Take one provider step that fails (retryably) until the test lets it go.
    flaky: bool = False


class Stubs:
    """The probe's activities: they record what ran and obey the test."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.undo_released = asyncio.Event()
        self.undo_held = asyncio.Event()
        self.provider_up = False
        self.failing_undo: set[int] = set()

    @ledger_activity("skeleton.do")
    async def do(self, number: int) -> int:
        self.ran.append(f"do {number}")
        return number

    @ledger_activity("skeleton.undo")
    async def undo(self, number: int) -> None:
        self.ran.append(f"undo {number}")
        if number in self.failing_undo:
            raise ApplicationError(f"undo {number} refused", non_retryable=True)

    @ledger_activity("skeleton.held_undo")
    async def held_undo(self, number: int) -> None:
        self.undo_held.set()
        await self.undo_released.wait()
        self.ran.append(f"undo {number}")

    @provider_activity("skeleton.flaky")
    async def flaky(self) -> str:
        if not self.provider_up:
            raise ApplicationError("provider down")
        self.ran.append("flaky")
        return "answered"

    @provider_activity("skeleton.refused")
    async def refused(self) -> str:
        raise ApplicationError("refused for good", non_retryable=True)


@workflow.defn(name="SkeletonProbe")
class SkeletonProbe:
    def __init__(self) -> None:
        self.progress = ProcessStage("starting", self._details)

    def _details(self) -> str:
        return f"at {self.progress.stage}"

    @workflow.run
    async def run(self, plan: Plan) -> str:
        self.progress = ProcessStage("starting", self._details, batched=plan.batched)
        saga = Saga()
        try:
            for number in range(plan.steps):
                self.progress.enter(f"step {number}")
                await step(plan, Stubs.do, number)
                saga.done(self._undo_of(plan, number))
            if plan.flaky:
                self.progress.enter("asking the provider")
                await step(plan, Stubs.flaky)
            if plan.fail:
                raise ApplicationError(FAILURE, non_retryable=True)
            self.progress.enter("done")
            self.progress.flush()
            return "done"
        except (Exception, asyncio.CancelledError) as error:
            self.progress.enter("cancelled" if is_cancellation(error) else "compensating")
            await saga.compensate(keep_going=plan.keep_going)
            self.progress.flush()
            raise

    def _undo_of(self, plan: Plan, number: int) -> Any:
        async def undo() -> None:
            if plan.held_undo == number:
                await step(plan, Stubs.held_undo, number)
            else:
                await step(plan, Stubs.undo, number)

        return undo


@workflow.defn(name="SkeletonRefusal")
class SkeletonRefusal:
    @workflow.run
    async def run(self, plan: Plan) -> str:
        return await step(plan, Stubs.refused, retry_policy=RetryPolicy(maximum_attempts=1))


class Probe:
    def __init__(self, env: WorkflowEnvironment, stubs: Stubs, queue: str) -> None:
        self.env, self.stubs, self.queue = env, stubs, queue

    async def start(self, **plan: Any) -> WorkflowHandle[Any, Any]:
        self.stubs.failing_undo = set(plan.get("failing_undo", []))
        return await self.env.client.start_workflow(
            SkeletonProbe.run,
            Plan(ledger_task_queue=self.queue, providers_task_queue=self.queue, **plan),
            id=f"skeleton-{uuid.uuid4().hex[:12]}",
            task_queue=self.queue,
        )


@pytest_asyncio.fixture(loop_scope="session")
async def probe(workflow_env: WorkflowEnvironment) -> AsyncIterator[Probe]:
    stubs = Stubs()
    queue = f"skeleton-{uuid.uuid4().hex[:12]}"
    async with Worker(
        workflow_env.client,
        task_queue=queue,
        workflows=[SkeletonProbe, SkeletonRefusal],
        activities=[stubs.do, stubs.undo, stubs.held_undo, stubs.flaky, stubs.refused],
        # The probe lives in a test module: run it as it is, and let the
        # monkeypatched policies reach it.
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield Probe(workflow_env, stubs, queue)
    stubs.undo_released.set()


@pytest.fixture
def short_provider_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = replace(steps.STEP_POLICIES[QueueKind.PROVIDERS], deadline=STUB_DEADLINE)
    monkeypatch.setitem(steps.STEP_POLICIES, QueueKind.PROVIDERS, policy)


async def failure_of(handle: WorkflowHandle[Any, Any]) -> BaseException:
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert failed.value.cause is not None
    return failed.value.cause


async def process_status(handle: WorkflowHandle[Any, Any]) -> str | None:
    return (await handle.describe()).typed_search_attributes.get(PROCESS_STATUS)


async def event_types(handle: WorkflowHandle[Any, Any]) -> list[EventType.ValueType]:
    return [event.event_type async for event in handle.fetch_history_events()]


def taken_in(kinds: list[EventType.ValueType]) -> bool:
    """A workflow task completed after the cancellation was requested."""
    requested = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
    if requested not in kinds:
        return False
    return EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds[kinds.index(requested) :]


async def upserts(handle: WorkflowHandle[Any, Any]) -> int:
    kind = EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    return len([event async for event in handle.fetch_history_events() if event.event_type == kind])


async def test_the_saga_undoes_every_step_newest_first(probe: Probe) -> None:
    handle = await probe.start(steps=3, fail=True)

    cause = await failure_of(handle)

    assert isinstance(cause, ApplicationError) and cause.message == FAILURE
    assert probe.stubs.ran == ["do 0", "do 1", "do 2", "undo 2", "undo 1", "undo 0"]
    assert await process_status(handle) == "compensating"


async def test_a_failed_undo_stops_the_rest_unless_the_saga_keeps_going(probe: Probe) -> None:
    stopping = await probe.start(steps=3, fail=True, failing_undo=[1])
    cause = await failure_of(stopping)
    # The undo's failure is what the process fails with; undo 0 never ran.
    assert "undo 1 refused" in str(cause.__cause__ or cause)
    assert probe.stubs.ran[-2:] == ["undo 2", "undo 1"]

    probe.stubs.ran.clear()
    going_on = await probe.start(steps=3, fail=True, failing_undo=[1], keep_going=True)
    cause = await failure_of(going_on)
    assert isinstance(cause, ApplicationError) and cause.message == FAILURE
    assert probe.stubs.ran[-3:] == ["undo 2", "undo 1", "undo 0"]


async def test_a_cancellation_during_compensation_waits_for_every_undo_step(
    probe: Probe,
) -> None:
    handle = await probe.start(steps=3, fail=True, held_undo=1)
    await asyncio.wait_for(probe.stubs.undo_held.wait(), WAIT_SECONDS_MAX)

    await handle.cancel()
    # The process has taken its cancellation in (a workflow task completed
    # after the request), and its undo step in flight was not cancelled.
    kinds = await until(
        lambda: event_types(handle),
        taken_in,
        "the cancellation taken in by the process",
        WAIT_SECONDS_MAX,
    )
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED not in kinds
    assert probe.stubs.ran[-1] == "undo 2"
    probe.stubs.undo_released.set()

    await failure_of(handle)
    assert probe.stubs.ran[-3:] == ["undo 2", "undo 1", "undo 0"]


async def test_a_batched_tracker_upserts_once_where_an_immediate_one_upserts_each_stage(
    probe: Probe,
) -> None:
    immediate = await probe.start(steps=3)
    batched = await probe.start(steps=3, batched=True)
    assert await immediate.result() == await batched.result() == "done"

    # step 0, step 1, step 2, done: each at once; or the last one, once.
    assert await upserts(immediate) == 4
    assert await upserts(batched) == 1
    assert await process_status(immediate) == await process_status(batched) == "done"


@pytest.mark.parametrize("batched", [False, True])
async def test_a_step_past_its_deadline_shows_stuck_until_it_succeeds(
    probe: Probe, short_provider_deadline: None, batched: bool
) -> None:
    probe.stubs.provider_up = False
    handle = await probe.start(steps=1, flaky=True, batched=batched)

    await until(
        lambda: process_status(handle),
        lambda status: status == STATUS_STUCK,
        "the probe shown stuck",
        WAIT_SECONDS_MAX,
    )
    probe.stubs.provider_up = True

    assert await handle.result() == "done"
    assert probe.stubs.ran[-1] == "flaky"
    assert await process_status(handle) == "done"


async def test_a_step_that_fails_for_good_is_a_failure_not_stuck(
    probe: Probe, short_provider_deadline: None
) -> None:
    handle = await probe.env.client.start_workflow(
        SkeletonRefusal.run,
        Plan(ledger_task_queue=probe.queue, providers_task_queue=probe.queue),
        id=f"skeleton-{uuid.uuid4().hex[:12]}",
        task_queue=probe.queue,
    )

    cause = await failure_of(handle)

    assert not isinstance(cause, CancelledError)
    assert "refused for good" in str(cause.__cause__ or cause)
    assert await process_status(handle) is None
