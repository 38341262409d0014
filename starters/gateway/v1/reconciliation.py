"""Reconciliation `reconciliation/issuer/{date}`: a day's settlement report
against the ledger, and an operator's decisions on large differences."""

from __future__ import annotations

from datetime import date
from functools import partial
from typing import Annotated

from fastapi import Path, Response

from activities.api_keys import SCOPE_ADMIN, SCOPE_OPERATIONS, SCOPE_PROCESSES_READ
from schemas.edge import DAY_MAX, DAY_MIN
from schemas.periods import PeriodNotEnded
from schemas.reconciliation import Decision, ReconciliationItem, ReconciliationStatus
from starters.gateway.auth import requires
from starters.gateway.errors import period_not_ended, process_error
from starters.gateway.state import GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.ownership import PROGRAM_WIDE
from starters.gateway.v1.shared import (
    READ_RESPONSES,
    STEER_RESPONSES,
    ProcessRef,
    found_or_started,
    process_router,
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


@router.post(
    "/reconciliations/issuer/{settlement_date}",
    dependencies=[*requires(SCOPE_ADMIN), PROGRAM_WIDE],
    status_code=202,
    response_model=ProcessRef,
    responses={200: {"model": ProcessRef, "description": "This day was reconciled already"}},
    summary="Reconcile the issuer's settlement report of a UTC day (YYYY-MM-DD)",
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
    try:
        reconciliation = reconciliation_input(settings, queues, settlement_date)
        handle = await start_reconciliation(client, queues, reconciliation)
        run_id, replayed = await found_or_started(handle)
    except PeriodNotEnded as error:
        raise period_not_ended(error, day) from None
    except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
        raise process_error(error, day) from None
    if replayed:
        response.status_code = 200
    return ProcessRef(
        workflow_id=reconciliation_workflow_id("issuer", settlement_date),
        run_id=run_id,
        process="reconciliation",
        status_url=f"/v1/reconciliations/issuer/{day}",
        replayed=replayed,
    )


@router.get(
    "/reconciliations/issuer/{settlement_date}",
    dependencies=[*requires(SCOPE_PROCESSES_READ), PROGRAM_WIDE],
    response_model=ReconciliationStatus,
    responses=READ_RESPONSES,
    summary="A reconciliation's stage and its differences",
)
async def reconciliation_status_route(
    settlement_date: SettlementDatePath, client: TemporalClient
) -> ReconciliationStatus:
    answer = reconciliation_status(client, settlement_date)
    return await steer(answer, settlement_date.isoformat())


@router.post(
    "/reconciliations/issuer/{settlement_date}/decisions",
    dependencies=[*requires(SCOPE_OPERATIONS), PROGRAM_WIDE],
    response_model=ReconciliationItem,
    responses=STEER_RESPONSES,
    summary="An operator decides one difference over the threshold: adjust or dismiss",
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
