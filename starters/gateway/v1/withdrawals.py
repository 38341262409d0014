"""Withdrawals `withdrawal/{request_id}`: start one (to a bank account or a
USDT-TRC20 address), read it, and an operator's review of a new destination
above the threshold."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Request, Response

from activities.api_keys import SCOPE_OPERATIONS
from schemas.withdrawals import WithdrawalRequest, WithdrawalReview, WithdrawalStatus
from starters.gateway import access
from starters.gateway.state import GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, ProcessUpdates, StartKey, UpdateKey
from starters.gateway.v1.ownership import (
    RequestIdPath,
    request_process_owner,
    require_customer,
)
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route, steer
from starters.withdrawal import review as review_withdrawal
from starters.withdrawal import status as withdrawal_status
from starters.withdrawal import withdrawal_input, withdrawal_policy
from workflows.withdrawal import (
    WITHDRAWAL_WORKFLOW,
    withdrawal_start_metadata,
    withdrawal_workflow_id,
)

router = process_router()


@access.customer_scoped("the body's customer_id")
async def _own_withdrawal_body(request: Request, body: WithdrawalRequest) -> WithdrawalRequest:
    require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


OwnWithdrawalId = Annotated[
    str, Depends(request_process_owner(withdrawal_workflow_id, "withdrawal", "withdrawal"))
]


@route(
    router,
    START,
    "/withdrawals",
    "Pay out of a customer's wallet to an account or address, once per request_id",
)
async def start_withdrawal_route(
    response: Response,
    body: Annotated[WithdrawalRequest, Depends(_own_withdrawal_body)],
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
    settings: GatewaySettings,
) -> ProcessRef:
    # Requested now, by the gateway's clock: the month its limits count it
    # in. A retry of this Idempotency-Key answers the process the first
    # sending started, whose input (and time) it keeps.
    withdrawal = withdrawal_input(body, queues, policy=withdrawal_policy(settings))
    started = await starter.start(
        response,
        route="withdrawals",
        idempotency=idempotency,
        body=body,
        workflow=WITHDRAWAL_WORKFLOW,
        workflow_id=withdrawal_workflow_id(body.request_id),
        argument=withdrawal,
        metadata=withdrawal_start_metadata(withdrawal),
        customer_id=body.customer_id,
    )
    started.request_id = body.request_id
    return started


@route(
    router,
    READ,
    "/withdrawals/{request_id}",
    "A withdrawal's stage, amounts, cooling period and the payout",
    response_model=WithdrawalStatus,
)
async def withdrawal_status_route(
    request_id: OwnWithdrawalId, client: TemporalClient
) -> WithdrawalStatus:
    return await steer(withdrawal_status(client, request_id), f"withdrawal {request_id}")


@route(
    router,
    UPDATE,
    "/withdrawals/{request_id}/review",
    "An operator approves or rejects a withdrawal to a new destination above the threshold",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def withdrawal_review_route(
    request_id: RequestIdPath,
    body: WithdrawalReview,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    reviewed = partial(review_withdrawal, updates.client, request_id, body)
    workflow_id = withdrawal_workflow_id(request_id)
    return {
        "result": await updates.send(
            reviewed,
            idempotency,
            "withdrawal-review",
            workflow_id,
            f"withdrawal {request_id}",
            body,
        )
    }
