"""Pings `ping/{id}` and any process's status `/v1/processes/{workflow_id}`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from schemas.cards import CardInput
from schemas.edge import EdgeModel
from schemas.health import PingInput
from schemas.refusals import Refusal
from schemas.views import CardView
from starters.gateway import access
from starters.gateway.errors import ApiError, ErrorBody, process_error
from starters.gateway.state import Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, StartKey
from starters.gateway.v1.ownership import require_process_owner
from starters.gateway.v1.shared import READ, START, ProcessRef, process_router, route
from workflows.catalog import STATUS_QUERIES
from workflows.health import PING_WORKFLOW, ping_start_metadata, ping_workflow_id

router = process_router()

STATUS_QUERY_TIMEOUT = timedelta(seconds=2)
PING_API_EXECUTION_TIMEOUT = timedelta(minutes=5)


class StartPing(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    requested_by: str = Field(min_length=1, max_length=200, description="Who asks")


class ProcessStatus(BaseModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    stage: str | None = None
    # The process's own status query, as it answers it (running processes
    # only); a card's as its public view.
    details: dict[str, Any] | None = None
    start_time: datetime
    close_time: datetime | None = None


@route(router, START, "/pings", "Start a health check through every task queue", program_wide=True)
async def start_ping(
    response: Response,
    body: StartPing,
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    ping = PingInput(
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        requested_by=body.requested_by,
    )
    return await starter.start(
        response,
        route="pings",
        idempotency=idempotency,
        body=body,
        workflow=PING_WORKFLOW,
        workflow_id=ping_workflow_id(f"api-{idempotency.request_id}"),
        argument=ping,
        execution_timeout=PING_API_EXECUTION_TIMEOUT,
        metadata=ping_start_metadata(ping),
    )


WorkflowIdPath = Annotated[str, Path(min_length=1, max_length=300)]


@access.customer_scoped("the process's CustomerId search attribute")
async def _own_process(
    request: Request, client: TemporalClient, workflow_id: WorkflowIdPath
) -> str:
    await require_process_owner(request, client, workflow_id, f"process {workflow_id}")
    return workflow_id


OwnProcessId = Annotated[str, Depends(_own_process)]


def _public_details(answer: BaseModel) -> dict[str, Any]:
    """A status query's answer as the API shows it: a card's state carries
    its task queues and bookkeeping, so it is shown as the card's view."""
    if isinstance(answer, CardInput):
        return CardView.of(answer).model_dump(mode="json")
    return answer.model_dump(mode="json")


@route(
    router,
    READ,
    "/processes/{workflow_id:path}",
    "A process's status",
    response_model=ProcessStatus,
    responses={404: {"model": ErrorBody}},
)
async def process_status(workflow_id: OwnProcessId, client: TemporalClient) -> ProcessStatus:
    handle = client.get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise ApiError(Refusal.NOT_FOUND, f"no process {workflow_id}") from None
        raise process_error(error, workflow_id) from None
    stage: str | None = None
    details: dict[str, Any] | None = None
    if description.status == WorkflowExecutionStatus.RUNNING:
        query = STATUS_QUERIES.get(description.workflow_type)
        answer: Any = None
        if query is not None:
            try:
                answer = await handle.query(query, rpc_timeout=STATUS_QUERY_TIMEOUT)
            except Exception:  # noqa: BLE001 - a process that cannot answer still has a status
                answer = None
        if isinstance(answer, str):
            stage = answer
        elif isinstance(answer, BaseModel):
            details = _public_details(answer)
            found = details.get("stage") or details.get("state")
            stage = str(found) if found is not None else None
    return ProcessStatus(
        workflow_id=workflow_id,
        run_id=description.run_id,
        workflow_type=description.workflow_type,
        status=description.status.name if description.status else "UNKNOWN",
        stage=stage,
        details=details,
        start_time=description.start_time,
        close_time=description.close_time,
    )
