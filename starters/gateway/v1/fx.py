"""FX conversions `fx/{request_id}`: a firm quote, confirmed before it expires."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response
from pydantic import Field

from schemas.fx import (
    FxConversionInput,
    FxConversionRequest,
    FxConversionResult,
    FxQuoteOffer,
    FxStatus,
)
from starters.fx import cancel as cancel_fx
from starters.fx import confirm as confirm_fx
from starters.fx import status as fx_status
from starters.fx import wait_quote as wait_fx_quote
from starters.fx import with_queues as with_fx_queues
from starters.gateway import access
from starters.gateway.errors import ErrorBody
from starters.gateway.state import Queues, TemporalClient
from starters.gateway.v1.idempotency import ProcessStarter, StartKey
from starters.gateway.v1.ownership import request_process_owner, require_customer
from starters.gateway.v1.shared import (
    READ,
    START,
    START_RESPONSES,
    UPDATE,
    ProcessRef,
    process_router,
    route,
    steer,
)
from workflows.fx import FX_WORKFLOW, fx_start_metadata, fx_workflow_id

router = process_router()


class FxQuoteStarted(ProcessRef):
    offer: FxQuoteOffer = Field(description="Confirm it before offer.expires_at")


@access.customer_scoped("the body's customer_id")
async def _own_fx_body(request: Request, body: FxConversionRequest) -> FxConversionRequest:
    require_customer(request, body.customer_id, f"customer {body.customer_id}")
    return body


OwnFxId = Annotated[str, Depends(request_process_owner(fx_workflow_id, "FX", "FX conversion"))]


@route(
    router,
    START,
    "/fx/quotes",
    "Start a conversion and answer its firm quote (offer.request_id names it)",
    response_model=FxQuoteStarted,
    responses={
        **START_RESPONSES,
        409: {"model": ErrorBody, "description": "Refused (the reason), or a reused key"},
        503: {"model": ErrorBody},
    },
)
async def fx_quote_route(
    response: Response,
    body: Annotated[FxConversionRequest, Depends(_own_fx_body)],
    idempotency: StartKey,
    client: TemporalClient,
    queues: Queues,
    starter: ProcessStarter,
) -> FxQuoteStarted:
    conversion = with_fx_queues(
        FxConversionInput(request_id=idempotency.request_id, **body.model_dump()), queues
    )
    started = await starter.start(
        response,
        route="fx-quotes",
        idempotency=idempotency,
        body=body,
        workflow=FX_WORKFLOW,
        workflow_id=fx_workflow_id(conversion.request_id),
        argument=conversion,
        metadata=fx_start_metadata(conversion),
        customer_id=body.customer_id,
    )
    # A request remembered before ids were digests has the id it was started with.
    started.request_id = started.workflow_id.removeprefix(fx_workflow_id(""))
    offer = await steer(wait_fx_quote(client, started.request_id), started.request_id)
    return FxQuoteStarted(**started.model_dump(), offer=offer)


@route(
    router,
    UPDATE,
    "/fx/{request_id}/confirm",
    "Convert at the quote; 409 with the reason when expired, cancelled or declined",
    response_model=FxConversionResult,
)
async def fx_confirm_route(request_id: OwnFxId, client: TemporalClient) -> FxConversionResult:
    return await steer(confirm_fx(client, request_id), request_id)


@route(router, UPDATE, "/fx/{request_id}/cancel", "Drop an unconfirmed quote; nothing is converted")
async def fx_cancel_route(request_id: OwnFxId, client: TemporalClient) -> dict[str, str]:
    return {"result": await steer(cancel_fx(client, request_id), request_id)}


@route(
    router,
    READ,
    "/fx/{request_id}",
    "A conversion's stage, quote, amounts and expiry",
    response_model=FxStatus,
)
async def fx_status_route(request_id: OwnFxId, client: TemporalClient) -> FxStatus:
    return await steer(fx_status(client, request_id), request_id)
