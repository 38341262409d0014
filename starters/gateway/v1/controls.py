"""Card controls (schemas/card_controls.py):

- `PUT /v1/cards/{card_id}/controls`: the card's own controls;
- `POST /v1/cards/{card_id}/temporary-controls` and
  `DELETE /v1/cards/{card_id}/temporary-controls/{control_id}`: controls that
  undo themselves at their `until`;
- `POST /v1/customers/{customer_id}/card-controls`: the customer's controls,
  a new version sent to each of their cards (`controls-change/{request_id}`);
- `POST /v1/card-controls` (scope `operations`, program-wide): the program's;
- `GET /v1/customers/{customer_id}/card-controls`: the versions in force;
- `POST /v1/rules` and `GET /v1/rules` (scope `operations`, program-wide):
  the program's authorization rules (schemas/auth_rules.py), a new version
  of the program's controls with only its rules changed, and the rules in
  force.

A card's effective controls take each field from the narrowest scope that
sets it: its temporary controls, its own, its customer's, the program's.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from activities.api_keys import SCOPE_OPERATIONS
from activities.card_controls import ControlsStore
from schemas.auth_rules import RULES_MAX, Rule
from schemas.card_controls import Controls, ControlsChange, ScopedControls, TemporaryControl
from schemas.edge import EdgeModel
from starters.controls import (
    add_temporary_control,
    controls_change_input,
    remove_temporary_control,
    set_card_controls,
)
from starters.gateway.state import DatabasePool, Queues
from starters.gateway.v1.cards import OwnCardId
from starters.gateway.v1.idempotency import ProcessStarter, ProcessUpdates, StartKey, UpdateKey
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route
from workflows.cards import card_workflow_id
from workflows.controls_change import (
    CONTROLS_CHANGE_WORKFLOW,
    controls_change_start_metadata,
    controls_change_workflow_id,
)

router = process_router()


class ControlsRequest(EdgeModel):
    """New controls for a scope, named by the caller's request id."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    controls: Controls
    reason: str = Field(min_length=1, max_length=200)


class RulesRequest(EdgeModel):
    """The program's authorization rules, as a whole, named by a request id."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    rules: list[Rule] = Field(max_length=RULES_MAX)
    reason: str = Field(min_length=1, max_length=200)


class RulesInForce(BaseModel):
    version: int | None = Field(description="The program's controls version (None: never set)")
    rules: list[Rule]


ControlIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


@route(router, UPDATE, "/cards/{card_id}/controls", "Set a card's own controls", method="PUT")
async def card_controls_route(
    card_id: OwnCardId, body: Controls, idempotency: UpdateKey, updates: ProcessUpdates
) -> Controls:
    stored = partial(set_card_controls, updates.client, card_id, body)
    return await updates.send(
        stored, idempotency, "card-controls", card_workflow_id(card_id), card_id, body
    )


@route(
    router,
    UPDATE,
    "/cards/{card_id}/temporary-controls",
    "Add controls to a card that undo themselves at `until` (the same id replaces them)",
)
async def temporary_controls_route(
    card_id: OwnCardId, body: TemporaryControl, idempotency: UpdateKey, updates: ProcessUpdates
) -> list[TemporaryControl]:
    added = partial(add_temporary_control, updates.client, card_id, body)
    return await updates.send(
        added, idempotency, "card-temporary-controls", card_workflow_id(card_id), card_id, body
    )


@route(
    router,
    UPDATE,
    "/cards/{card_id}/temporary-controls/{control_id}",
    "Undo a card's temporary controls before their time",
    method="DELETE",
)
async def remove_temporary_controls_route(
    card_id: OwnCardId, control_id: ControlIdPath, idempotency: UpdateKey, updates: ProcessUpdates
) -> list[TemporaryControl]:
    removed = partial(remove_temporary_control, updates.client, card_id, control_id)
    return await updates.send(
        removed,
        idempotency,
        "card-temporary-controls-remove",
        card_workflow_id(card_id),
        f"{card_id}/{control_id}",
    )


async def _start_change(
    response: Response,
    starter: ProcessStarter,
    idempotency: StartKey,
    queues: Queues,
    caller: Request,
    body: ControlsRequest | RulesRequest,
    controls: Controls,
    *,
    customer_id: str | None = None,
    only_fields: list[str] | None = None,
) -> ProcessRef:
    """Start the change of `body` (by the calling key) once per request id."""
    change = ControlsChange(
        request_id=body.request_id,
        customer_id=customer_id,
        controls=controls,
        reason=body.reason,
        changed_by=f"api-key:{caller.state.api_key_id}",
        only_fields=only_fields,
    )
    request = controls_change_input(change, queues)
    return await starter.start(
        response,
        route="card-controls",
        idempotency=idempotency,
        body=body,
        workflow=CONTROLS_CHANGE_WORKFLOW,
        workflow_id=controls_change_workflow_id(change.request_id),
        argument=request,
        metadata=controls_change_start_metadata(request),
        customer_id=change.customer_id,
    )


@route(
    router,
    START,
    "/customers/{customer_id}/card-controls",
    "Set the controls of all the customer's cards (a new version, sent to each card)",
)
async def customer_controls_route(
    customer_id: OwnCustomerId,
    body: ControlsRequest,
    request: Request,
    response: Response,
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    return await _start_change(
        response,
        starter,
        idempotency,
        queues,
        request,
        body,
        body.controls,
        customer_id=customer_id,
    )


@route(
    router,
    START,
    "/card-controls",
    "Set the program's card controls (a new version, sent to every card)",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def program_controls_route(
    body: ControlsRequest,
    request: Request,
    response: Response,
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    return await _start_change(response, starter, idempotency, queues, request, body, body.controls)


@route(
    router,
    READ,
    "/customers/{customer_id}/card-controls",
    "The program's and the customer's card controls in force, with their versions",
)
async def current_controls_route(
    customer_id: OwnCustomerId, pool: DatabasePool
) -> list[ScopedControls]:
    return await ControlsStore(pool).current(customer_id)


@route(
    router,
    START,
    "/rules",
    "Load the program's authorization rules (a new version, sent to every card)",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def rules_route(
    body: RulesRequest,
    request: Request,
    response: Response,
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    rules = Controls(rules=body.rules)
    return await _start_change(
        response, starter, idempotency, queues, request, body, rules, only_fields=["rules"]
    )


@route(
    router,
    READ,
    "/rules",
    "The program's authorization rules in force, with their version",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def rules_in_force_route(pool: DatabasePool) -> RulesInForce:
    program = next(
        (c for c in await ControlsStore(pool).current(None) if c.scope == "program"), None
    )
    if program is None:
        return RulesInForce(version=None, rules=[])
    return RulesInForce(version=program.version, rules=program.controls.rules or [])
