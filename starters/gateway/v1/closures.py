"""Account closures `closure/{customer_id}`: close a customer's account and pay
its balance out, read how far it got, and an operator's decision where it
cannot go on by itself."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Request, Response

from activities.api_keys import SCOPE_OPERATIONS
from schemas.closures import ClosureDecision, ClosureRequest, ClosureStatus
from starters.closure import closure_input, closure_policy
from starters.closure import decide as decide_closure
from starters.closure import status as closure_status
from starters.gateway import access
from starters.gateway.state import GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, ProcessUpdates, StartKey, UpdateKey
from starters.gateway.v1.ownership import CustomerIdPath, OwnCustomerId, require_customer
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route, steer
from workflows.closure import CLOSURE_WORKFLOW, closure_start_metadata, closure_workflow_id

router = process_router()


@access.customer_scoped("the body's customer_id")
async def _own_closure_body(request: Request, body: ClosureRequest) -> ClosureRequest:
    require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


@route(
    router,
    START,
    "/closures",
    "Close a customer's account and pay its balance out, once per customer",
)
async def start_closure_route(
    response: Response,
    body: Annotated[ClosureRequest, Depends(_own_closure_body)],
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
    settings: GatewaySettings,
) -> ProcessRef:
    # Requested now, by the gateway's clock; a retry of this Idempotency-Key
    # answers the process the first sending started, whose input it keeps.
    closure = closure_input(body, queues, policy=closure_policy(settings))
    return await starter.start(
        response,
        route="closures",
        idempotency=idempotency,
        body=body,
        workflow=CLOSURE_WORKFLOW,
        workflow_id=closure_workflow_id(body.customer_id),
        argument=closure,
        metadata=closure_start_metadata(closure),
        customer_id=body.customer_id,
    )


@route(
    router,
    READ,
    "/closures/{customer_id}",
    "A closure's stage, cards, settled debt, payouts and what an operator is asked",
    response_model=ClosureStatus,
)
async def closure_status_route(customer_id: OwnCustomerId, client: TemporalClient) -> ClosureStatus:
    return await steer(closure_status(client, customer_id), f"closure of {customer_id}")


@route(
    router,
    UPDATE,
    "/closures/{customer_id}/decide",
    "An operator retries (the cards, or the payout to another destination) or abandons"
    " a closure that cannot go on by itself",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def closure_decide_route(
    customer_id: CustomerIdPath,
    body: ClosureDecision,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    decided = partial(decide_closure, updates.client, customer_id, body)
    workflow_id = closure_workflow_id(customer_id)
    return {
        "result": await updates.send(
            decided,
            idempotency,
            "closure-decide",
            workflow_id,
            f"closure of {customer_id}",
            body,
        )
    }
