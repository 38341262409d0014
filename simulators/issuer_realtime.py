"""Real-time authorization decisions: the issuer's own refusals (a card that
is not open; a request above the program's prefunded balance, declined with
the reason "program_underfunded"), the signed request to cardflow's gateway,
and the stand-in decision when cardflow's answer does not come in time or
cannot be used.

The request is a POST to {gateway_url}/realtime/issuer/authorization of
{"id", "type": "authorization.request", "created_at", "data"}, signed with
Standard Webhooks headers and the issuer's webhook secret. cardflow answers
{"decision": "approve" | "decline", "approved_amount_minor": int | null,
"reason": str}; a null amount approves all that was asked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError
from standardwebhooks import Webhook

from simulators.issuer_models import (
    AuthorizationRequestData,
    Card,
    DecidedBy,
    Decision,
    DecisionOutcome,
    GatewayAnswer,
)
from simulators.issuer_program import UNDERFUNDED_REASON, available_minor
from simulators.issuer_state import NAME, IssuerState

AnswerT = TypeVar("AnswerT", bound=BaseModel)

REALTIME_AUTHORIZATION_PATH = f"/realtime/{NAME}/authorization"
AUTHORIZATION_DEADLINE_MS_DEFAULT = 2_000
AUTHORIZATION_DEADLINE_MS_MAX = 30_000
STAND_IN_DECISION_DEFAULT: DecisionOutcome = "decline"
STAND_IN_DECISIONS: frozenset[str] = frozenset({"approve", "decline"})
# A gateway answer is three small fields; anything much larger is not one.
GATEWAY_ANSWER_BYTES_MAX = 16 * 1024


@dataclass(frozen=True)
class GatewayOutcome:
    """cardflow's answer, or why there is none usable."""

    answer: GatewayAnswer | None
    failure: str
    latency_ms: int | None


async def ask_gateway(state: IssuerState, request: AuthorizationRequestData) -> GatewayOutcome:
    """Sends the signed real-time request and waits up to the deadline."""
    deadline_ms = state.option_int(
        "authorization_deadline_ms",
        AUTHORIZATION_DEADLINE_MS_DEFAULT,
        1,
        AUTHORIZATION_DEADLINE_MS_MAX,
    )
    answer, failure, latency_ms = await ask_signed(
        state,
        REALTIME_AUTHORIZATION_PATH,
        "authorization.request",
        request,
        deadline_ms,
        GatewayAnswer,
    )
    return GatewayOutcome(answer, failure, latency_ms)


async def ask_signed(
    state: IssuerState,
    path: str,
    event_type: str,
    data: BaseModel,
    deadline_ms: int,
    answer_type: type[AnswerT],
) -> tuple[AnswerT | None, str, int | None]:
    """Put `data` to cardflow's gateway at `path` as a signed `event_type`
    request and wait up to `deadline_ms`: the answer, or why there is none
    usable, and the latency when an answer came."""
    target = state.context.outbox.targets.get(NAME)
    if target is None:
        return None, "no signing secret configured for cardflow's gateway", None
    deadline_seconds = deadline_ms / 1000
    event_id = f"evt_{secrets.token_hex(12)}"
    stamp = datetime.now(UTC)
    body = json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "created_at": stamp.isoformat(),
            "data": data.model_dump(mode="json"),
        }
    )
    # Signed exactly like a webhook, so the gateway verifies both the same way.
    headers = {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(target.secret).sign(event_id, stamp, body),
    }
    url = f"{state.context.gateway_url.rstrip('/')}{path}"
    started = time.monotonic()
    try:
        # The whole exchange, connection included, must fit the deadline.
        async with asyncio.timeout(deadline_seconds):
            response = await state.gateway_http().post(
                url, content=body, headers=headers, timeout=deadline_seconds
            )
    except (TimeoutError, httpx.TimeoutException):
        return None, f"no answer within the {deadline_ms} ms deadline", None
    except httpx.HTTPError as error:
        return None, f"gateway unreachable ({type(error).__name__})", None
    latency_ms = round((time.monotonic() - started) * 1000)
    if not 200 <= response.status_code < 300:
        return None, f"gateway answered HTTP {response.status_code}", latency_ms
    if len(response.content) > GATEWAY_ANSWER_BYTES_MAX:
        return None, "malformed gateway answer: too large", latency_ms
    try:
        answer = answer_type.model_validate_json(response.content)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return None, f"malformed gateway answer: {where}: {first['msg']}", latency_ms
    return answer, "", latency_ms


def _issuer_refusal(
    state: IssuerState, card: Card, request: AuthorizationRequestData
) -> str | None:
    """Why the issuer declines on its own, without asking cardflow."""
    if card.state == "closed":
        return f"card {card.id} is closed"
    if card.state == "paused":
        return f"card {card.id} is paused"
    if card.state != "open":
        return f"card {card.id} is not activated ({card.state})"
    # The issuer pays the network from the program's prefunded balance: it
    # will not approve (nor let cardflow approve) what that cannot cover.
    if request.amount_minor > available_minor(state, request.currency):
        return UNDERFUNDED_REASON
    return None


async def decide(state: IssuerState, card: Card, request: AuthorizationRequestData) -> Decision:
    """The decision on one request: the issuer's own refusal, cardflow's
    answer, or the stand-in decision when cardflow's answer is unusable."""
    requested_minor = request.amount_minor

    def decision(
        outcome: DecisionOutcome,
        approved_minor: int,
        decided_by: DecidedBy,
        reason: str,
        latency_ms: int | None = None,
    ) -> Decision:
        return Decision(
            kind=request.kind,
            requested_amount_minor=requested_minor,
            approved_amount_minor=approved_minor,
            outcome=outcome,
            decided_by=decided_by,
            reason=reason,
            latency_ms=latency_ms,
            decided_at=state.now_iso(),
        )

    refusal = _issuer_refusal(state, card, request)
    if refusal is not None:
        return decision("decline", 0, "issuer", refusal)
    gateway = await ask_gateway(state, request)
    failure, latency_ms = gateway.failure, gateway.latency_ms
    answer = gateway.answer
    if answer is not None:
        if answer.decision == "decline":
            return decision("decline", 0, "cardflow", answer.reason, latency_ms)
        approved_minor = answer.approved_amount_minor
        if approved_minor is None or approved_minor == requested_minor:
            return decision("approve", requested_minor, "cardflow", answer.reason, latency_ms)
        if 0 < approved_minor < requested_minor:
            if request.partial_approval_capable:
                return decision("approve", approved_minor, "cardflow", answer.reason, latency_ms)
            # The network cannot carry a partial approval to this merchant:
            # all or nothing, so nothing.
            reason = (
                f"cardflow approved {approved_minor} of {requested_minor}, "
                "but the merchant cannot take a partial approval"
            )
            return decision("decline", 0, "cardflow", reason, latency_ms)
        failure = f"malformed gateway answer: approved {approved_minor} of {requested_minor}"
    option = state.option_str("stand_in_decision", STAND_IN_DECISION_DEFAULT, STAND_IN_DECISIONS)
    stand_in: DecisionOutcome = "approve" if option == "approve" else "decline"
    stand_in_minor = requested_minor if stand_in == "approve" else 0
    reason = f"stand-in {stand_in}: {failure}"
    return decision(stand_in, stand_in_minor, "stand_in", reason, latency_ms)
