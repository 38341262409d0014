"""The issuer's real-time 3-D Secure requests.

Signed like its webhooks and authorization requests (Standard Webhooks, the
issuer's secrets). A body that is not a well-formed `authentication.request`
is a 422 naming each wrong field. The gateway hands the question to the
card's workflow as the `authenticate` update (its id the authentication's,
so the same request again is answered as first decided) and answers the
issuer within its budget (CARDFLOW_AUTHENTICATION_BUDGET_MS, default 2,000 ms
of the issuer's 3,000): {"decision": "frictionless" | "challenge" |
"decline", "reason"}. Past the budget, or when the card cannot be asked, it
declines: a purchase that could not be authenticated is not let through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from standardwebhooks import WebhookVerificationError
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from schemas.authentication import AuthenticationAnswer, AuthenticationRequest
from schemas.providers import ISSUER
from schemas.refusals import Refusal
from starters.gateway.errors import ApiError, GatewayCode
from starters.gateway.realtime import REALTIME_BODY_BYTES_MAX
from starters.gateway.server import arrived_at
from starters.gateway.state import GatewaySettings, Metrics, Secrets, TemporalClient
from starters.gateway.webhooks import verify
from starters.updates import execute_update
from workflows.cards import CardEntity, card_workflow_id

log = logging.getLogger("cardflow.gateway.realtime")

REALTIME_AUTHENTICATION_PATH = f"/realtime/{ISSUER}/authentication"

router = APIRouter(tags=["issuer real-time"])


class AuthenticationRequestEvent(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    type: Literal["authentication.request"]
    created_at: AwareDatetime
    data: AuthenticationRequest


def authenticate_update_id(event: AuthenticationRequestEvent) -> str:
    """One update per authentication: the same question again, whatever its
    envelope, gets the first answer."""
    return f"authenticate/{event.data.authentication_id}"


# The issuer takes a reason of at most this many characters.
REASON_CHARS_MAX = 200


def _answer(decision: str, reason: str) -> JSONResponse:
    return JSONResponse({"decision": decision, "reason": reason[:REASON_CHARS_MAX]})


@router.post(REALTIME_AUTHENTICATION_PATH, include_in_schema=False)
async def authenticate(
    request: Request,
    secrets: Secrets,
    settings: GatewaySettings,
    metrics: Metrics,
    client: TemporalClient,
) -> JSONResponse:
    started = arrived_at(request.scope)
    issuer_secrets = secrets.get(ISSUER)
    if not issuer_secrets:
        raise ApiError(GatewayCode.UNKNOWN_PROVIDER, "no issuer secret configured")
    body = await request.body()
    if len(body) > REALTIME_BODY_BYTES_MAX:
        raise ApiError(GatewayCode.BODY_TOO_LARGE, "request body too large")
    try:
        verify(body, dict(request.headers), issuer_secrets)
    except WebhookVerificationError as error:
        log.warning("refused a real-time authentication request: %s", error)
        metrics.rejected(ISSUER, "signature")
        raise ApiError(GatewayCode.INVALID_SIGNATURE, f"invalid signature: {error}") from None
    try:
        event = AuthenticationRequestEvent.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        raise ApiError(Refusal.INVALID_REQUEST, [dict(found) for found in errors]) from None
    question = event.data.model_copy(update={"requested_at": event.created_at})
    handle = client.get_workflow_handle(card_workflow_id(question.card_id))
    budget_seconds = settings.authentication_budget_ms / 1000 - (time.monotonic() - started)
    try:
        async with asyncio.timeout(max(budget_seconds, 0)):
            answer: AuthenticationAnswer = await execute_update(
                handle, CardEntity.authenticate, question, id=authenticate_update_id(event)
            )
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError from None
        log.warning(
            "authentication %s: no decision within the %d ms budget, declined",
            question.authentication_id,
            settings.authentication_budget_ms,
        )
        return _answer("decline", "stand-in decline: no decision within the budget")
    except WorkflowUpdateFailedError as error:
        return _answer("decline", f"refused: {error.cause}")
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            return _answer("decline", f"card {question.card_id} is not active here")
        log.error("authentication %s: %s", question.authentication_id, error)
        return _answer("decline", "stand-in decline: the card could not be asked")
    except Exception:  # noqa: BLE001 - e.g. no connection to Temporal
        log.exception("authentication %s", question.authentication_id)
        return _answer("decline", "stand-in decline: the card could not be asked")
    return _answer(answer.decision, answer.reason)
