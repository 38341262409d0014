"""Reconciliation `reconciliation/issuer/{date}`: a day's settlement report
against the ledger, and an operator's decisions on large differences."""

from __future__ import annotations

from datetime import date
from functools import partial
from typing import Annotated

from fastapi import Path, Response

from activities.api_keys import SCOPE_ADMIN, SCOPE_OPERATIONS
from schemas.edge import DAY_MAX, DAY_MIN
from schemas.reconciliation import Decision, ReconciliationItem, ReconciliationStatus
from starters.gateway.state import GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.shared import (
    READ,
    START,
    UPDATE,
    ProcessRef,
    process_router,
    route,
    start_by_period,
    steer,
)
from starters.reconcile import decide as decide_reconciliation
from starters.reconcile import reconciliation_input
from starters.reconcile import start as start_reconciliation
from starters.reconcile import status as reconciliation_status
from workflows.reconciliation import reconciliation_workflow_id

router = process_router()

# A day whose reconciliation's date arithmetic stays in range (schemas.edge.Day).
SettlementDatePath = Annotated[
    date,
    Path(ge=DAY_MIN, le=DAY_MAX, description=f"The UTC day, YYYY-MM-DD, {DAY_MIN} to {DAY_MAX}"),
]


@route(
    router,
    START,
    "/reconciliations/issuer/{settlement_date}",
    "Reconcile the issuer's settlement report of a UTC day (YYYY-MM-DD)",
    scope=SCOPE_ADMIN,
    program_wide=True,
    responses={200: {"model": ProcessRef, "description": "This day was reconciled already"}},
)
async def reconciliation_start_route(
    response: Response,
    settlement_date: SettlementDatePath,
    client: TemporalClient,
    queues: Queues,
    settings: GatewaySettings,
) -> ProcessRef:
    # The process id is the day's: a repeat finds the first process (a failed
    # one runs again), so no Idempotency-Key is needed. A day not yet over is
    # refused: reconciled early, it would pre-empt the run once it is over.
    day = settlement_date.isoformat()
    reconciliation = reconciliation_input(settings, queues, settlement_date)
    return await start_by_period(
        response,
        start_reconciliation(client, queues, reconciliation),
        period=day,
        workflow_id=reconciliation_workflow_id("issuer", settlement_date),
        process="reconciliation",
        status_url=f"/v1/reconciliations/issuer/{day}",
    )


@route(
    router,
    READ,
    "/reconciliations/issuer/{settlement_date}",
    "A reconciliation's stage and its differences",
    program_wide=True,
    response_model=ReconciliationStatus,
)
async def reconciliation_status_route(
    settlement_date: SettlementDatePath, client: TemporalClient
) -> ReconciliationStatus:
    answer = reconciliation_status(client, settlement_date)
    return await steer(answer, settlement_date.isoformat())


@route(
    router,
    UPDATE,
    "/reconciliations/issuer/{settlement_date}/decisions",
    "An operator decides one difference over the threshold: adjust or dismiss",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
    response_model=ReconciliationItem,
)
async def reconciliation_decide_route(
    settlement_date: SettlementDatePath,
    body: Decision,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> ReconciliationItem:
    decided = partial(decide_reconciliation, updates.client, settlement_date, body)
    workflow_id = reconciliation_workflow_id("issuer", settlement_date)
    route, day = "reconciliation-decisions", settlement_date.isoformat()
    return await updates.send(decided, idempotency, route, workflow_id, day, body)
