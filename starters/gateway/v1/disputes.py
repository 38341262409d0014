"""Disputes `dispute/{transaction_id}`: open, hand in evidence, submit, withdraw."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Path, Request, Response
from pydantic import BaseModel

from activities.api_keys import SCOPE_OPERATIONS, SCOPE_PROCESSES_START
from schemas.disputes import (
    DisputeInput,
    DisputeRequest,
    DisputeStatusView,
    DisputeSubmission,
    EvidenceItem,
    OperatorAction,
    WithdrawRequest,
)
from starters.dispute import add_evidence as add_dispute_evidence
from starters.dispute import operator_action as dispute_operator_action
from starters.dispute import status as dispute_status
from starters.dispute import submit as submit_dispute
from starters.dispute import with_queues as with_dispute_queues
from starters.dispute import withdraw as withdraw_dispute
from starters.gateway import access
from starters.gateway.state import DatabasePool, Queues, TemporalClient
from starters.gateway.v1.idempotency import (
    Idempotency,
    ProcessStarter,
    ProcessUpdates,
    StartKey,
    Update,
    UpdateKey,
    Updates,
)
from starters.gateway.v1.ownership import require_customer, require_owner
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route, steer
from workflows.dispute import DISPUTE_WORKFLOW, dispute_start_metadata, dispute_workflow_id

router = process_router()

TransactionIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,80}$")]


@access.customer_scoped("the body's customer_id, and the card_transactions table")
async def _own_dispute_body(
    request: Request, pool: DatabasePool, body: DisputeRequest
) -> DisputeRequest:
    # The transaction must be one of the key's customers' too: the body
    # names a customer, the recorded transaction says whose it is.
    require_customer(request, body.customer_id, f"customer {body.customer_id}")
    transaction_id = body.transaction_id
    await require_owner(
        request,
        f"transaction {transaction_id}",
        lambda: access.transaction_customer(pool, transaction_id),
    )
    return body


@access.customer_scoped("the card_transactions table, by transaction_id")
async def _own_transaction(
    request: Request, pool: DatabasePool, transaction_id: TransactionIdPath
) -> str:
    await require_owner(
        request,
        f"transaction {transaction_id}",
        lambda: access.transaction_customer(pool, transaction_id),
    )
    return transaction_id


OwnTransactionId = Annotated[str, Depends(_own_transaction)]


async def _send(
    updates: Updates,
    update: Update[DisputeStatusView],
    idempotency: Idempotency | None,
    route: str,
    transaction_id: str,
    body: BaseModel,
) -> DisputeStatusView:
    """An update of the dispute of `transaction_id`, answered its status."""
    workflow_id = dispute_workflow_id(transaction_id)
    return await updates.send(update, idempotency, route, workflow_id, transaction_id, body)


@route(
    router,
    START,
    "/disputes",
    "Dispute a cleared transaction (once per transaction); then add evidence and submit",
)
async def open_dispute_route(
    response: Response,
    body: Annotated[DisputeRequest, Depends(_own_dispute_body)],
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    dispute = with_dispute_queues(DisputeInput.model_validate(body.model_dump()), queues)
    return await starter.start(
        response,
        route="disputes",
        idempotency=idempotency,
        body=body,
        workflow=DISPUTE_WORKFLOW,
        workflow_id=dispute_workflow_id(body.transaction_id),
        argument=dispute,
        metadata=dispute_start_metadata(dispute),
        customer_id=body.customer_id,
    )


@route(
    router,
    READ,
    "/disputes/{transaction_id}/evidence",
    "Hand in one piece of evidence",
    method="POST",
    scope=SCOPE_PROCESSES_START,
)
async def dispute_evidence_route(
    transaction_id: OwnTransactionId, body: EvidenceItem, client: TemporalClient
) -> dict[str, str]:
    await steer(add_dispute_evidence(client, transaction_id, body), transaction_id)
    return {"result": "evidence received"}


@route(
    router,
    UPDATE,
    "/disputes/{transaction_id}/submit",
    "Submit the evidence (or answer a representment); 409 names what is missing",
    response_model=DisputeStatusView,
)
async def dispute_submit_route(
    transaction_id: OwnTransactionId,
    body: DisputeSubmission,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> DisputeStatusView:
    submitted = partial(submit_dispute, updates.client, transaction_id, body.evidence)
    return await _send(updates, submitted, idempotency, "dispute-submit", transaction_id, body)


@route(
    router,
    UPDATE,
    "/disputes/{transaction_id}/withdraw",
    "Withdraw an undecided dispute; any provisional credit is taken back",
    response_model=DisputeStatusView,
)
async def dispute_withdraw_route(
    transaction_id: OwnTransactionId,
    body: WithdrawRequest,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> DisputeStatusView:
    withdrawn = partial(withdraw_dispute, updates.client, transaction_id, body)
    return await _send(updates, withdrawn, idempotency, "dispute-withdraw", transaction_id, body)


@route(
    router,
    UPDATE,
    "/disputes/{transaction_id}/operator",
    "An operator credits provisionally now, or answers a representment now",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
    response_model=DisputeStatusView,
)
async def dispute_operator_route(
    transaction_id: TransactionIdPath,
    body: OperatorAction,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> DisputeStatusView:
    acted = partial(dispute_operator_action, updates.client, transaction_id, body)
    return await _send(updates, acted, idempotency, "dispute-operator", transaction_id, body)


@route(
    router,
    READ,
    "/disputes/{transaction_id}",
    "A dispute's stage, evidence, deadlines and amounts",
    response_model=DisputeStatusView,
)
async def dispute_status_route(
    transaction_id: OwnTransactionId, client: TemporalClient
) -> DisputeStatusView:
    return await steer(dispute_status(client, transaction_id), transaction_id)
