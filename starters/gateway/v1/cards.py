"""Cards: issuing `card-issue/{request_id}` and the card itself `card/{card_id}`."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated, Literal

from fastapi import Depends, Path, Request, Response
from pydantic import ConfigDict, Field
from temporalio.exceptions import ApplicationError

from activities.api_keys import SCOPE_CARDS_REVEAL, SCOPE_OPERATIONS
from schemas.cards import CardIssueInput, ExceptionDecision, RescheduleDelivery, SpendingLimits
from schemas.customers import CustomerId
from schemas.edge import EdgeModel
from schemas.issuer import Address, RevealToken
from schemas.money import Currency
from schemas.refusals import Refusal
from schemas.views import CardView
from starters.cards import (
    activate,
    card_status,
    change_card,
    reschedule,
    resolve_exception,
    set_limits,
)
from starters.gateway import access
from starters.gateway.errors import ApiError, ErrorBody
from starters.gateway.state import DatabasePool, Providers, Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, ProcessUpdates, StartKey, UpdateKey
from starters.gateway.v1.ownership import (
    request_process_owner,
    require_customer,
    require_owner,
)
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route, steer
from workflows.card_issue import (
    CARD_ISSUE_WORKFLOW,
    card_issue_start_metadata,
    card_issue_workflow_id,
)
from workflows.cards import card_workflow_id

router = process_router()


class IssueCard(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerId
    kind: Literal["virtual", "physical"]
    currency: Currency = Currency.USD
    address: Address


class CardAction(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["freeze", "unfreeze", "close", "report_lost", "report_stolen"]
    reason: str = Field(default="customer request", min_length=1, max_length=200)


CardIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]


@access.customer_scoped("the body's customer_id")
async def _own_card_issue_body(request: Request, body: IssueCard) -> IssueCard:
    require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


@access.customer_scoped("the cards table, by card_id")
async def _own_card(request: Request, pool: DatabasePool, card_id: CardIdPath) -> str:
    await require_owner(request, f"card {card_id}", lambda: access.card_customer(pool, card_id))
    return card_id


OwnCardId = Annotated[str, Depends(_own_card)]


OwnCardIssueId = Annotated[
    str, Depends(request_process_owner(card_issue_workflow_id, "card issue", "card issue"))
]


@route(router, START, "/cards", "Issue a card to an approved customer")
async def issue_card_route(
    response: Response,
    body: Annotated[IssueCard, Depends(_own_card_issue_body)],
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    issue = CardIssueInput(
        request_id=idempotency.request_id,
        customer_id=body.customer_id,
        kind=body.kind,
        currency=body.currency,
        address=body.address,
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    started = await starter.start(
        response,
        route="cards",
        idempotency=idempotency,
        body=body,
        workflow=CARD_ISSUE_WORKFLOW,
        workflow_id=card_issue_workflow_id(issue.request_id),
        argument=issue,
        metadata=card_issue_start_metadata(issue),
        customer_id=body.customer_id,
    )
    # A request remembered before ids were digests has the id it was started with.
    started.request_id = started.workflow_id.removeprefix(card_issue_workflow_id(""))
    return started


@route(
    router,
    UPDATE,
    "/cards/{card_id}/actions",
    "Freeze, unfreeze, close, or report a card lost or stolen",
)
async def card_action_route(
    card_id: OwnCardId,
    body: CardAction,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    changed = partial(change_card, updates.client, card_id, body.action, body.reason)
    workflow_id = card_workflow_id(card_id)
    return {
        "result": await updates.send(
            changed, idempotency, "card-actions", workflow_id, card_id, body
        )
    }


@route(
    router,
    UPDATE,
    "/card-issues/{request_id}/reschedule",
    "Move a physical card's delivery date, until it ships",
)
async def reschedule_route(
    request_id: OwnCardIssueId,
    body: RescheduleDelivery,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    rescheduled = partial(reschedule, updates.client, request_id, body)
    workflow_id = card_issue_workflow_id(request_id)
    route = "card-issue-reschedule"
    return {
        "result": await updates.send(rescheduled, idempotency, route, workflow_id, request_id, body)
    }


@route(
    router,
    UPDATE,
    "/card-issues/{request_id}/activate",
    "Activate a delivered physical card (a replacement by its own card id)",
)
async def activate_route(
    request_id: OwnCardIssueId,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    activated = partial(activate, updates.client, request_id)
    workflow_id = card_issue_workflow_id(request_id)
    route = "card-issue-activate"
    return {"result": await updates.send(activated, idempotency, route, workflow_id, request_id)}


@route(router, UPDATE, "/cards/{card_id}/limits", "Set a card's spending limits", method="PUT")
async def limits_route(
    card_id: OwnCardId,
    body: SpendingLimits,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> SpendingLimits:
    stored = partial(set_limits, updates.client, card_id, body)
    workflow_id = card_workflow_id(card_id)
    return await updates.send(stored, idempotency, "card-limits", workflow_id, card_id, body)


@route(
    router,
    READ,
    "/cards/{card_id}/reveal",
    "A single-use token with which the holder's device fetches the card's number from the issuer",
    method="POST",
    scope=SCOPE_CARDS_REVEAL,
    status_code=201,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def reveal_route(card_id: OwnCardId, providers: Providers) -> RevealToken:
    """The issuer makes the token (single use, bound to the card, 60 s at
    most); the device trades it for the number at the issuer's URL. The
    number, expiry and CVV never pass through cardflow."""
    try:
        return await providers.issuer.create_reveal_token(
            card_id, idempotency_key=f"reveal/{card_id}/{uuid.uuid4().hex}"
        )
    except ApplicationError as error:
        if error.type == "ProviderNotFound":
            raise ApiError(Refusal.NOT_FOUND, f"the issuer knows no card {card_id}") from None
        if error.type == "ProviderConflict":
            raise ApiError(
                Refusal.WRONG_STATE, f"card {card_id} is closed: its number is not shown"
            ) from None
        raise ApiError(
            Refusal.PROVIDER_UNAVAILABLE, f"the issuer did not make a token ({error.type})"
        ) from None


@route(
    router,
    READ,
    "/cards/{card_id}",
    "A card's state: limits, open authorizations and holds, exceptions",
)
async def card_route(card_id: OwnCardId, client: TemporalClient) -> CardView:
    return CardView.of(await steer(card_status(client, card_id), card_id))


@route(
    router,
    UPDATE,
    "/cards/{card_id}/exceptions",
    "Decide an exception: charge the wallet or write the amount off to suspense",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def card_exception_route(
    card_id: CardIdPath,
    body: ExceptionDecision,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    resolved = partial(resolve_exception, updates.client, card_id, body)
    workflow_id = card_workflow_id(card_id)
    route = "card-exceptions"
    return {"result": await updates.send(resolved, idempotency, route, workflow_id, card_id, body)}
