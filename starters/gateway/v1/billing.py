"""Fees and statements `billing/{customer_id}/{period}`, and billing runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Path, Response
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from activities.api_keys import SCOPE_ADMIN
from schemas.billing import BillingInput, BillingRunInput, BillingStatus, Period, Statement
from schemas.periods import PeriodNotEnded, refuse_unended_month
from schemas.refusals import Refusal
from starters.billing import billing_status, read_statement, start_billing, statements_dir
from starters.billing import with_queues as with_billing_queues
from starters.gateway.errors import ApiError, ErrorBody, period_not_ended, process_error
from starters.gateway.state import GatewaySettings, Queues, TemporalClient
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import (
    READ,
    START,
    ProcessRef,
    process_router,
    route,
    start_by_period,
    steer,
)
from workflows.billing import (
    BILLING_RUN_WORKFLOW,
    billing_run_start_metadata,
    billing_run_workflow_id,
    billing_workflow_id,
)

router = process_router()

PeriodPath = Annotated[Period, Path(description="The month, YYYY-MM")]


@route(
    router,
    START,
    "/billing/{customer_id}/{period}",
    "Bill a customer's month (a past one too): card fees, then the statement",
    scope=SCOPE_ADMIN,
    responses={200: {"model": ProcessRef, "description": "This period was billed already"}},
)
async def billing_start_route(
    response: Response,
    customer_id: OwnCustomerId,
    period: PeriodPath,
    client: TemporalClient,
    queues: Queues,
    settings: GatewaySettings,
) -> ProcessRef:
    # The process id is the period's: a repeat finds the first process, so no
    # Idempotency-Key is needed and the same period never charges twice. A
    # month not over is refused: billed early, it would pre-empt its real run.
    billing = BillingInput(
        customer_id=customer_id, period=period, statements_dir=str(statements_dir(settings))
    )
    return await start_by_period(
        response,
        start_billing(client, queues, billing),
        period=period,
        workflow_id=billing_workflow_id(customer_id, period),
        process="billing",
        status_url=f"/v1/billing/{customer_id}/{period}",
    )


@route(
    router,
    START,
    "/billing-runs/{period}",
    "Bill every customer with cards for a month (skips those billed already)",
    scope=SCOPE_ADMIN,
    program_wide=True,
    responses={},
)
async def billing_run_route(
    period: PeriodPath, client: TemporalClient, queues: Queues, settings: GatewaySettings
) -> ProcessRef:
    try:
        refuse_unended_month("period", period, datetime.now(UTC))
    except PeriodNotEnded as error:
        raise period_not_ended(error, period) from None
    run = with_billing_queues(
        BillingRunInput(period=period, statements_dir=str(statements_dir(settings))), queues
    )
    workflow_id = billing_run_workflow_id(period)
    metadata = billing_run_start_metadata(run)
    try:
        handle = await client.start_workflow(
            BILLING_RUN_WORKFLOW,
            run,
            id=workflow_id,
            task_queue=queues.workflows,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=metadata.summary,
            static_details=metadata.details,
        )
    except Exception as error:  # noqa: BLE001 - Temporal busy or unreachable: 503
        raise process_error(error, workflow_id) from None
    return ProcessRef(
        workflow_id=workflow_id,
        run_id=handle.result_run_id or "",
        process="billing-run",
        status_url=f"/v1/processes/{workflow_id}",
        replayed=False,
    )


@route(
    router,
    READ,
    "/billing/{customer_id}/{period}",
    "A billing process's stage, fees and statement paths",
    response_model=BillingStatus,
)
async def billing_status_route(
    customer_id: OwnCustomerId, period: PeriodPath, client: TemporalClient
) -> BillingStatus:
    return await steer(billing_status(client, customer_id, period), f"{customer_id}/{period}")


@route(
    router,
    READ,
    "/statements/{customer_id}/{period}",
    "A customer's statement of a month: balances, every transaction, fees",
    response_model=Statement,
    responses={404: {"model": ErrorBody}},
)
async def statement_route(
    customer_id: OwnCustomerId, period: PeriodPath, settings: GatewaySettings
) -> Statement:
    statement = read_statement(settings, customer_id, period)
    if statement is None:
        raise ApiError(Refusal.NOT_FOUND, f"no statement for {customer_id} in {period}")
    return statement
