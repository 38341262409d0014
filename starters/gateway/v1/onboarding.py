"""Onboarding `onboarding/{customer_id}`: wallets and KYC."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Request, Response
from pydantic import ConfigDict

from activities.api_keys import SCOPE_OPERATIONS, SCOPE_PROCESSES_START
from schemas.customers import CustomerProfile
from schemas.edge import EdgeModel
from schemas.onboarding import Documents, KycReview, OnboardingInput, Resubmission
from starters.gateway import access
from starters.gateway.errors import ErrorBody
from starters.gateway.state import Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, ProcessUpdates, StartKey, UpdateKey
from starters.gateway.v1.ownership import (
    CustomerIdPath,
    OwnCustomerId,
    require_customer,
)
from starters.gateway.v1.shared import READ, START, UPDATE, ProcessRef, process_router, route, steer
from starters.onboarding import resubmit, review, with_queues
from workflows.onboarding import (
    ONBOARDING_WORKFLOW,
    onboarding_start_metadata,
    onboarding_workflow_id,
)

router = process_router()


class StartOnboarding(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    profile: CustomerProfile
    documents: Documents


@access.customer_scoped("the body's profile.customer_id")
async def _own_onboarding(request: Request, body: StartOnboarding) -> StartOnboarding:
    customer_id = body.profile.customer_id
    require_customer(request, customer_id, f"customer {customer_id}")
    return body


@route(router, START, "/onboardings", "Onboard a customer: wallets and KYC")
async def start_onboarding_route(
    response: Response,
    body: Annotated[StartOnboarding, Depends(_own_onboarding)],
    idempotency: StartKey,
    queues: Queues,
    starter: ProcessStarter,
) -> ProcessRef:
    onboarding = with_queues(
        OnboardingInput(profile=body.profile, documents=body.documents), queues
    )
    return await starter.start(
        response,
        route="onboardings",
        idempotency=idempotency,
        body=body,
        workflow=ONBOARDING_WORKFLOW,
        workflow_id=onboarding_workflow_id(body.profile.customer_id),
        argument=onboarding,
        metadata=onboarding_start_metadata(onboarding),
        customer_id=body.profile.customer_id,
    )


@route(
    router,
    UPDATE,
    "/onboardings/{customer_id}/review",
    "An operator decides an onboarding on hold",
    scope=SCOPE_OPERATIONS,
    program_wide=True,
)
async def review_onboarding_route(
    customer_id: CustomerIdPath,
    body: KycReview,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> dict[str, str]:
    reviewed = partial(review, updates.client, customer_id, body)
    workflow_id = onboarding_workflow_id(customer_id)
    return {
        "result": await updates.send(
            reviewed, idempotency, "onboarding-review", workflow_id, customer_id, body
        )
    }


@route(
    router,
    READ,
    "/onboardings/{customer_id}/documents",
    "The customer resubmits documents after a RETRY verdict",
    method="POST",
    scope=SCOPE_PROCESSES_START,
    status_code=202,
    responses={404: {"model": ErrorBody}},
)
async def resubmit_documents_route(
    customer_id: OwnCustomerId, body: Resubmission, client: TemporalClient
) -> dict[str, str]:
    await steer(resubmit(client, customer_id, body), customer_id)
    return {"result": "documents received"}
