"""Settlement ingest `settlement/issuer/{date}`: the issuer's daily file
ingested, and an operator's decisions on the records over the auto-fix
threshold."""

from __future__ import annotations

from functools import partial

from activities.api_keys import SCOPE_OPERATIONS
from schemas.reconciliation import ISSUER_PROVIDER
from schemas.settlement_ingest import OperatorItem, SettlementDecision, SettlementIngestStatus
from starters.gateway.state import TemporalClient
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.reconciliation import SettlementDatePath
from starters.gateway.v1.shared import READ, UPDATE, process_router, route, steer
from starters.settlement import decide as decide_settlement
from starters.settlement import status as settlement_status
from workflows.settlement import settlement_workflow_id

router = process_router()


@route(
    router,
    READ,
    "/settlements/issuer/{settlement_date}",
    "A settlement ingest's stage, records by class and the items over the threshold",
    program_wide=True,
    response_model=SettlementIngestStatus,
)
async def settlement_status_route(
    settlement_date: SettlementDatePath, client: TemporalClient
) -> SettlementIngestStatus:
    answer = settlement_status(client, settlement_date)
    return await steer(answer, settlement_date.isoformat())


@route(
    router,
    UPDATE,
    "/settlements/issuer/{settlement_date}/decisions",
    "An operator decides one settlement record over the threshold: adjust or dismiss",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
    response_model=OperatorItem,
)
async def settlement_decide_route(
    settlement_date: SettlementDatePath,
    body: SettlementDecision,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> OperatorItem:
    decided = partial(decide_settlement, updates.client, settlement_date, body)
    workflow_id = settlement_workflow_id(ISSUER_PROVIDER, settlement_date)
    route, day = "settlement-decisions", settlement_date.isoformat()
    return await updates.send(decided, idempotency, route, workflow_id, day, body)
