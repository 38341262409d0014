"""Fraud cases `fraud-case/{case_id}`: an operator reads a case (its score,
signals with their evidence, the cards it froze) and decides it. Both are
program-wide operations routes: a case is about a customer, never theirs to
read or decide."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Path

from activities.api_keys import SCOPE_OPERATIONS
from schemas.fraud import CASE_ID_PATTERN, FraudCaseStatus, FraudDecision
from starters.fraud import decide as decide_case
from starters.fraud import status as case_status
from starters.gateway.state import TemporalClient
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.shared import READ, UPDATE, process_router, route, steer
from workflows.fraud import fraud_case_workflow_id

router = process_router()

CaseIdPath = Annotated[str, Path(pattern=CASE_ID_PATTERN, max_length=80)]


@route(
    router,
    READ,
    "/fraud-cases/{case_id}",
    "A fraud case's stage, score, signals with their evidence, the cards it froze and its decision",
    response_model=FraudCaseStatus,
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def fraud_case_status_route(case_id: CaseIdPath, client: TemporalClient) -> FraudCaseStatus:
    return await steer(case_status(client, case_id), f"fraud case {case_id}")


@route(
    router,
    UPDATE,
    "/fraud-cases/{case_id}/decide",
    "An operator clears a fraud case (the cards it froze are unfrozen) or confirms it"
    " (they stay frozen, or every card of the customer is closed)",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def fraud_case_decide_route(
    case_id: CaseIdPath,
    body: FraudDecision,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    decided = partial(decide_case, updates.client, case_id, body)
    return {
        "result": await updates.send(
            decided,
            idempotency,
            "fraud-case-decide",
            fraud_case_workflow_id(case_id),
            f"fraud case {case_id}",
            body,
        )
    }
