"""Starting and steering onboardings: one function per action, shared by the
CLI, the gateway and the demo."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from schemas.onboarding import (
    KycReview,
    OnboardingInput,
    OnboardingResult,
    OnboardingStatus,
    Resubmission,
)
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    RESUBMIT_SIGNAL,
    REVIEW_UPDATE,
    onboarding_start_metadata,
    onboarding_workflow_id,
)


def with_queues(request: OnboardingInput, queues: TaskQueues) -> OnboardingInput:
    return request.model_copy(
        update={"ledger_task_queue": queues.ledger, "providers_task_queue": queues.providers}
    )


async def start_onboarding(
    client: Client, queues: TaskQueues, request: OnboardingInput
) -> WorkflowHandle[Any, OnboardingResult]:
    """Start onboarding/{customer_id}; one onboarding per customer."""
    customer_id = request.profile.customer_id
    metadata = onboarding_start_metadata(request)
    return await client.start_workflow(
        ONBOARDING_WORKFLOW,
        with_queues(request, queues),
        id=onboarding_workflow_id(customer_id),
        task_queue=queues.workflows,
        result_type=OnboardingResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(CUSTOMER_ID, customer_id)]),
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


# An operator waits this long for the process to take the decision; longer
# means its workers are down, and the caller should retry later.
UPDATE_RPC_TIMEOUT = timedelta(seconds=10)


async def review(
    client: Client,
    customer_id: str,
    decision: KycReview,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """The operator's decision; the same `update_id` again answers the first one's result."""
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    return str(
        await handle.execute_update(
            REVIEW_UPDATE,
            decision.model_dump(mode="json"),
            id=update_id,
            result_type=str,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    )


async def resubmit(client: Client, customer_id: str, documents: Resubmission) -> None:
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    await handle.signal(RESUBMIT_SIGNAL, documents)


async def status(client: Client, customer_id: str) -> OnboardingStatus:
    handle = client.get_workflow_handle(onboarding_workflow_id(customer_id))
    answer: OnboardingStatus = await handle.query("status", result_type=OnboardingStatus)
    return answer
