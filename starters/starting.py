"""How a starter starts a customer's process once: under its id, refused a
second start (REJECT_DUPLICATE), with the customer's search attribute and
the operator's summary and details from the start; a process already
started under that id is answered instead (it keeps its own input)."""

from __future__ import annotations

from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from schemas.search import CUSTOMER_ID
from workflows.metadata import StartMetadata

ResultT = TypeVar("ResultT")


async def start_once(
    client: Client,
    workflow: str,
    argument: Any,
    *,
    workflow_id: str,
    task_queue: str,
    result_type: type[ResultT],
    customer_id: str,
    metadata: StartMetadata,
) -> WorkflowHandle[Any, ResultT]:
    try:
        return await client.start_workflow(
            workflow,
            argument,
            id=workflow_id,
            task_queue=task_queue,
            result_type=result_type,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(CUSTOMER_ID, customer_id)]
            ),
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=result_type)
