"""Top-ups `topup/{source}/{external_ref}`: read, and an operator's review."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated

from fastapi import Depends, Path, Request

from activities.api_keys import SCOPE_OPERATIONS
from schemas.topup import TopupReview, TopupSource, TopupStatus
from starters.gateway import access
from starters.gateway.state import TemporalClient
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.ownership import require_process_owner
from starters.gateway.v1.shared import READ, UPDATE, process_router, route, steer
from starters.topup import review as review_topup
from starters.topup import status as topup_status
from workflows.topup import topup_workflow_id

router = process_router()

ExternalRefPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


@dataclass(frozen=True)
class TopupRef:
    source: TopupSource
    external_ref: str

    def __str__(self) -> str:
        return f"{self.source}/{self.external_ref}"


@access.customer_scoped("the top-up process's CustomerId search attribute")
async def _own_topup(
    request: Request, client: TemporalClient, source: TopupSource, external_ref: ExternalRefPath
) -> TopupRef:
    workflow_id = topup_workflow_id(source, external_ref)
    await require_process_owner(request, client, workflow_id, f"top-up {source}/{external_ref}")
    return TopupRef(source, external_ref)


@route(
    router,
    READ,
    "/topups/{source}/{external_ref}",
    "A top-up's stage, amounts, confirmations and pending review",
    response_model=TopupStatus,
)
async def topup_status_route(
    topup: Annotated[TopupRef, Depends(_own_topup)], client: TemporalClient
) -> TopupStatus:
    return await steer(topup_status(client, topup.source, topup.external_ref), str(topup))


@route(
    router,
    UPDATE,
    "/topups/{source}/{external_ref}/review",
    "An operator approves (assigning an unmatched payment) or rejects a top-up",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def topup_review_route(
    source: TopupSource,
    external_ref: ExternalRefPath,
    body: TopupReview,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    reviewed = partial(review_topup, updates.client, source, external_ref, body)
    workflow_id = topup_workflow_id(source, external_ref)
    subject = f"{source}/{external_ref}"
    return {
        "result": await updates.send(
            reviewed, idempotency, "topup-review", workflow_id, subject, body
        )
    }
