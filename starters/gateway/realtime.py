"""The issuer's real-time authorization requests.

Signed like its webhooks (Standard Webhooks, the issuer's secrets). The
gateway hands the question to the card's workflow as the `authorize` update
and answers the issuer within its budget (default 1,500 ms of the issuer's
2,000 ms). Past the budget, or when the card cannot be asked, it answers with
the configured stand-in decision; the card still decides, and the issuer's
`authorization.*` webhook later reconciles the card's holds with what the
issuer actually did.

Admission: at most CARDFLOW_AUTHORIZATION_IN_FLIGHT_MAX decisions are
awaited at once by a gateway process. A request beyond that is answered with
the stand-in at once: under a burst the card's decisions would otherwise
queue behind each other until every answer came past the issuer's deadline.
A decision answered by the stand-in past the budget counts until the card
has taken it: the card's time is spent on it all the same.

Each answer is counted by its decision and its source: `card` (the card's
own), `timeout` (the stand-in, the card not deciding within the budget),
`shed` (the stand-in, the gateway at its limit of decisions in flight),
`stand_in` (the stand-in, the card could not be asked), `refused` (the card
refused the update) or `unknown_card`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from standardwebhooks import WebhookVerificationError
from temporalio.client import (
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.metrics import GatewayMetrics
from schemas.cards import AuthorizationAnswer, AuthorizationRequest
from schemas.providers import ISSUER
from starters.gateway.errors import ApiError, GatewayCode
from starters.gateway.server import arrived_at
from starters.gateway.state import (
    GatewaySettings,
    Metrics,
    Secrets,
    TemporalClient,
)
from starters.gateway.webhooks import malformed, verify
from workers.settings import Settings
from workflows.cards import AUTHORIZE_UPDATE, card_workflow_id

log = logging.getLogger("cardflow.gateway.realtime")

REALTIME_AUTHORIZATION_PATH = f"/realtime/{ISSUER}/authorization"
REALTIME_BODY_BYTES_MAX = 64 * 1024

router = APIRouter(tags=["issuer real-time"])


# A place held for a decision the card takes after its answer went out is
# freed after this at the latest, decided or not (a card whose worker is away
# may not decide for much longer; its questions are then shed meanwhile).
DECISION_PLACE_HELD_SECONDS_MAX = 30.0


class InFlight:
    """The decisions this gateway process awaits, up to its limit. (One event
    loop: a plain counter is exact.) A question answered by the stand-in past
    the budget keeps its place until the card has decided it: the card still
    spends its time on it, so a burst is shed while the cards catch up rather
    than piling more questions behind them."""

    def __init__(
        self, limit: int, held_seconds_max: float = DECISION_PLACE_HELD_SECONDS_MAX
    ) -> None:
        self.limit = limit
        self.count = 0
        self.held_seconds_max = held_seconds_max
        self._late: set[asyncio.Task[None]] = set()

    def enter(self) -> bool:
        """Take a place, if one is free."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1

    def leave_once_decided(self, decided: Awaitable[object]) -> None:
        """Free the place when `decided` (the card's decision) completes,
        however it completes, or after held_seconds_max."""

        async def hold() -> None:
            try:
                async with asyncio.timeout(self.held_seconds_max):
                    await decided
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any end of it frees the place
                log.debug("a late decision ended without an answer: %r", error)
            finally:
                self.leave()

        task = asyncio.get_running_loop().create_task(hold())
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def aclose(self) -> None:
        """Stop waiting for late decisions (the gateway stopping)."""
        for task in list(self._late):
            task.cancel()
        await asyncio.gather(*self._late, return_exceptions=True)


async def decisions_in_flight(request: Request) -> InFlight:
    found = request.app.state.decisions_in_flight
    assert isinstance(found, InFlight), "made by create_app"
    return found


DecisionsInFlight = Annotated[InFlight, Depends(decisions_in_flight)]


class AuthorizationRequestEvent(BaseModel):
    # The issuer's id of this request: a resend of the request carries it again.
    id: str = Field(min_length=1, max_length=200)
    type: Literal["authorization.request"]
    # When the issuer asked.
    created_at: AwareDatetime
    data: AuthorizationRequest


def card_question(event: AuthorizationRequestEvent) -> AuthorizationRequest:
    """The question as the card is asked it, carrying the issuer's own time of
    asking (the envelope's, whatever the data says): the card derives what it
    holds from the request alone, never from its own clock."""
    return event.data.model_copy(update={"requested_at": event.created_at, "request_id": event.id})


def authorize_update_id(event: AuthorizationRequestEvent) -> str:
    """The update of one issuer request. A resend of it (the same request id)
    gets the first answer; any other request is decided on its own, even one
    asking the same amount at the same pending amount as an earlier one."""
    return f"authorize/{event.data.authorization_id}/{event.id}"


def _answer(
    metrics: GatewayMetrics,
    started: float,
    source: str,
    decision: str,
    approved_minor: int | None,
    reason: str,
) -> JSONResponse:
    """The answer to the issuer, counted by decision and by where it came from
    (the module's docstring names the sources)."""
    metrics.authorization(decision, source, timedelta(seconds=time.monotonic() - started))
    return JSONResponse(
        {"decision": decision, "approved_amount_minor": approved_minor, "reason": reason}
    )


def _stand_in(
    settings: Settings,
    metrics: GatewayMetrics,
    started: float,
    request: AuthorizationRequest,
    source: str,
    why: str,
) -> JSONResponse:
    decision = settings.authorization_stand_in
    approved = request.amount_minor if decision == "approve" else 0
    return _answer(metrics, started, source, decision, approved, f"stand-in {decision}: {why}")


@router.post(REALTIME_AUTHORIZATION_PATH, include_in_schema=False)
async def authorize(
    request: Request,
    secrets: Secrets,
    settings: GatewaySettings,
    metrics: Metrics,
    client: TemporalClient,
    in_flight: DecisionsInFlight,
) -> JSONResponse:
    # The budget runs from the request's arrival, not from this handler's
    # start: time spent waiting for the event loop is the issuer's time too.
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
        log.warning("refused a real-time request: %s", error)
        metrics.rejected(ISSUER, "signature")
        raise ApiError(GatewayCode.INVALID_SIGNATURE, f"invalid signature: {error}") from None
    try:
        event = AuthorizationRequestEvent.model_validate_json(body)
    except ValidationError as error:
        raise malformed(error) from None
    question = card_question(event)
    if not in_flight.enter():
        why = f"the gateway awaits {in_flight.limit} decisions already"
        return _stand_in(settings, metrics, started, question, "shed", why)
    handle = client.get_workflow_handle(card_workflow_id(question.card_id))
    update_id = authorize_update_id(event)
    still_deciding = False
    try:
        response, still_deciding = await _ask_the_card(
            question, handle, update_id, settings, metrics, started
        )
        return response
    finally:
        if still_deciding:
            in_flight.leave_once_decided(handle.get_update_handle(update_id).result())
        else:
            in_flight.leave()


async def _ask_the_card(
    question: AuthorizationRequest,
    handle: WorkflowHandle[Any, Any],
    update_id: str,
    settings: Settings,
    metrics: GatewayMetrics,
    started: float,
) -> tuple[JSONResponse, bool]:
    """The answer to the issuer, and whether the card may still be deciding
    (answered by the stand-in past the budget)."""
    budget_seconds = settings.authorization_budget_ms / 1000 - (time.monotonic() - started)
    try:
        async with asyncio.timeout(max(budget_seconds, 0)):
            answer: AuthorizationAnswer = await handle.execute_update(
                AUTHORIZE_UPDATE, question, id=update_id, result_type=AuthorizationAnswer
            )
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # The budget expired. Cancelled by it mid-call, the SDK raises its own
        # timeout-or-cancelled error rather than letting asyncio.timeout turn
        # the cancellation into a TimeoutError. An expected outcome under
        # load: one line, no traceback.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # Not the budget: this request itself is being cancelled (the
            # gateway stopping), and stays cancelled.
            raise asyncio.CancelledError from None
        log.warning(
            "authorization %s: no decision within the %d ms budget, answered the stand-in %s",
            question.authorization_id,
            settings.authorization_budget_ms,
            settings.authorization_stand_in,
        )
        why = "no decision within the budget"
        return _stand_in(settings, metrics, started, question, "timeout", why), True
    except WorkflowUpdateFailedError as error:
        refused = f"refused: {error.cause}"
        return _answer(metrics, started, "refused", "decline", 0, refused), False
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            reason = f"card {question.card_id} is not active here"
            return _answer(metrics, started, "unknown_card", "decline", 0, reason), False
        log.error("authorization %s: %s", question.authorization_id, error)
        why = "the card could not be asked"
        return _stand_in(settings, metrics, started, question, "stand_in", why), False
    except Exception:  # noqa: BLE001 - e.g. no connection to Temporal
        log.exception("authorization %s", question.authorization_id)
        why = "the card could not be asked"
        return _stand_in(settings, metrics, started, question, "stand_in", why), False
    return _answer(
        metrics, started, "card", answer.decision, answer.approved_amount_minor, answer.reason
    ), False
