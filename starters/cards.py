"""Starting card issuing and steering cards: one function per action, shared by
the CLI, the gateway and the scenarios."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy

from schemas.cards import (
    CardInput,
    CardIssueInput,
    CardIssueResult,
    CardStateChange,
    ExceptionDecision,
    RescheduleDelivery,
    SpendingLimits,
)
from schemas.search import CUSTOMER_ID
from schemas.task_queues import TaskQueues
from workflows.cards import (
    ACTIVATE_UPDATE,
    CARD_ISSUE_WORKFLOW,
    LIMITS_UPDATE,
    RESCHEDULE_UPDATE,
    RESOLVE_EXCEPTION_UPDATE,
    card_issue_start_metadata,
    card_issue_workflow_id,
    card_workflow_id,
)

# How long a caller waits for the process to take an update (unless it says
# otherwise); longer means its workers are down or far behind, and the call
# raises WorkflowUpdateRPCTimeoutOrCancelledError. Each function takes
# `update_id`: sent again with the same one, an update attaches to the first
# (and answers its result) instead of running twice.
UPDATE_RPC_TIMEOUT = timedelta(seconds=30)


async def issue_card(
    client: Client, queues: TaskQueues, request: CardIssueInput
) -> WorkflowHandle[Any, CardIssueResult]:
    request = request.model_copy(
        update={
            "ledger_task_queue": queues.ledger,
            "providers_task_queue": queues.providers,
            "workflows_task_queue": queues.workflows,
        }
    )
    metadata = card_issue_start_metadata(request)
    return await client.start_workflow(
        CARD_ISSUE_WORKFLOW,
        request,
        id=card_issue_workflow_id(request.request_id),
        task_queue=queues.workflows,
        result_type=CardIssueResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(CUSTOMER_ID, request.customer_id)]
        ),
        static_summary=metadata.summary,
        static_details=metadata.details,
    )


async def change_card(
    client: Client,
    card_id: str,
    update: str,
    reason: str,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """freeze, unfreeze, close, report_lost or report_stolen; returns the new state
    (or the replacement card's id)."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return str(
        await handle.execute_update(
            update,
            CardStateChange(reason=reason),
            id=update_id,
            result_type=str,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    )


async def set_limits(
    client: Client,
    card_id: str,
    limits: SpendingLimits,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> SpendingLimits:
    """Replace the card's spending limits; answers them as the card stored them."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    stored: SpendingLimits = await handle.execute_update(
        LIMITS_UPDATE,
        limits,
        id=update_id,
        result_type=SpendingLimits,
        rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
    )
    return stored


async def reschedule(
    client: Client,
    request_id: str,
    change: RescheduleDelivery,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    handle = client.get_workflow_handle(card_issue_workflow_id(request_id))
    return str(
        await handle.execute_update(
            RESCHEDULE_UPDATE,
            change,
            id=update_id,
            result_type=str,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    )


async def activate(
    client: Client,
    request_id: str,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    handle = client.get_workflow_handle(card_issue_workflow_id(request_id))
    return str(
        await handle.execute_update(
            ACTIVATE_UPDATE,
            id=update_id,
            result_type=str,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    )


async def resolve_exception(
    client: Client,
    card_id: str,
    decision: ExceptionDecision,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> str:
    """An operator's decision on money the issuer moved that the card could
    not mirror on its own (charge the wallet, or write it off to suspense)."""
    handle = client.get_workflow_handle(card_workflow_id(card_id))
    return str(
        await handle.execute_update(
            RESOLVE_EXCEPTION_UPDATE,
            decision,
            id=update_id,
            result_type=str,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    )


async def card_status(client: Client, card_id: str) -> CardInput:
    """The card's state: limits, open authorizations and their holds, exceptions."""
    state: CardInput = await client.get_workflow_handle(card_workflow_id(card_id)).query(
        "status", result_type=CardInput
    )
    return state
