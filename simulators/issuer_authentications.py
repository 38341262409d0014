"""3-D Secure authentications (Lithic's 3DS decisioning style).

A merchant's checkout asks the issuer to authenticate the cardholder
(`POST /v1/simulate/authentications`). The issuer declines on its own a card
that is not open; otherwise it asks cardflow's gateway in real time, signed
like an authorization request, at {gateway_url}/realtime/issuer/authentication
with {"id", "type": "authentication.request", "created_at", "data"}, and
cardflow answers {"decision": "frictionless" | "challenge" | "decline",
"reason"} within `authentication_deadline_ms`. Without a usable answer the
stand-in decision applies (`authentication_stand_in`, default "decline").

- frictionless: authenticated at once;
- challenge: pending_challenge until the program reports the cardholder's
  answer (`POST /v1/authentications/{id}/challenge_response` with outcome
  authenticated, failed or timed_out), or until the challenge window
  (`challenge_window_seconds`) passes: timed_out;
- decline: declined.

The merchant's authorization that follows carries the authentication's id
(`authentication_id` of /v1/simulate/authorize), as the network carries the
3-D Secure result in the authorization; an id of another card is refused.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter

from simulators.issuer_models import (
    AuthenticateIn,
    Authentication,
    AuthenticationDecision,
    AuthenticationGatewayAnswer,
    AuthenticationRequestData,
    AuthenticationStatus,
    ChallengeResponseIn,
    DecidedBy,
)
from simulators.issuer_realtime import ask_signed
from simulators.issuer_state import (
    CARDS,
    NAME,
    Collection,
    IssuerState,
    conflict,
    convert_minor,
    network_rate,
    unprocessable,
)

AUTHENTICATIONS = Collection("issuer.authentications", "3ds", "authentication", Authentication)
REALTIME_AUTHENTICATION_PATH = f"/realtime/{NAME}/authentication"
AUTHENTICATION_DEADLINE_MS_DEFAULT = 3_000
AUTHENTICATION_DEADLINE_MS_MAX = 30_000
CHALLENGE_WINDOW_SECONDS_DEFAULT = 600
CHALLENGE_WINDOW_SECONDS_MAX = 3_600
STAND_IN_DECISIONS: frozenset[str] = frozenset({"frictionless", "decline"})
STATUS_OF_DECISION: dict[AuthenticationDecision, AuthenticationStatus] = {
    "frictionless": "authenticated",
    "challenge": "pending_challenge",
    "decline": "declined",
}


def _timed_out_if_due(state: IssuerState, authentication: Authentication) -> Authentication:
    """A challenge past its window is timed out (checked whenever it is read)."""
    if (
        authentication.status == "pending_challenge"
        and authentication.challenge_expires_at is not None
        and state.now() >= datetime.fromisoformat(authentication.challenge_expires_at)
    ):
        stamp = state.now_iso()
        authentication.status = "timed_out"
        authentication.updated_at = stamp
        authentication.completed_at = stamp
        state.save(AUTHENTICATIONS, authentication)
    return authentication


def require_authentication_of(state: IssuerState, authentication_id: str, card_id: str) -> None:
    """A 422 naming the field unless the authentication is this card's."""
    found = state.find(AUTHENTICATIONS, authentication_id)
    if found is None or found.card_id != card_id:
        unprocessable(
            ["body", "authentication_id"],
            f"no authentication {authentication_id} of card {card_id}",
            authentication_id,
        )


def router(state: IssuerState) -> APIRouter:
    api = state.context.router()

    @api.post("/v1/simulate/authentications", status_code=201)
    async def simulate_authentication(body: AuthenticateIn) -> Authentication:
        """Sandbox: a merchant's checkout asks to authenticate the cardholder
        (3-D Secure); cardflow decides in real time."""
        card = state.load(CARDS, body.card_id)
        rate = network_rate(body.currency, card.currency)
        amount_minor = convert_minor(body.amount_minor, body.currency, card.currency, rate)
        if amount_minor == 0:
            unprocessable(
                ["body", "amount_minor"],
                f"converts to nothing in the card's currency {card.currency}",
                body.amount_minor,
            )
        now = state.now()
        window_seconds = state.option_int(
            "challenge_window_seconds",
            CHALLENGE_WINDOW_SECONDS_DEFAULT,
            1,
            CHALLENGE_WINDOW_SECONDS_MAX,
        )
        request = AuthenticationRequestData(
            authentication_id=state.new_id(AUTHENTICATIONS),
            card_id=card.id,
            cardholder_id=card.cardholder_id,
            amount_minor=amount_minor,
            currency=card.currency,
            merchant_amount_minor=body.amount_minor,
            merchant_currency=body.currency,
            conversion_rate=rate,
            merchant=body.merchant,
            challenge_expires_at=(now + timedelta(seconds=window_seconds)).isoformat(),
        )
        decision: AuthenticationDecision
        decided_by: DecidedBy
        latency_ms: int | None = None
        if card.state != "open":
            decision, decided_by, reason = "decline", "issuer", f"card {card.id} is {card.state}"
        else:
            deadline_ms = state.option_int(
                "authentication_deadline_ms",
                AUTHENTICATION_DEADLINE_MS_DEFAULT,
                1,
                AUTHENTICATION_DEADLINE_MS_MAX,
            )
            answer, failure, latency_ms = await ask_signed(
                state,
                REALTIME_AUTHENTICATION_PATH,
                "authentication.request",
                request,
                deadline_ms,
                AuthenticationGatewayAnswer,
            )
            if answer is not None:
                decision, decided_by, reason = answer.decision, "cardflow", answer.reason
            else:
                option = state.option_str("authentication_stand_in", "decline", STAND_IN_DECISIONS)
                decision = "frictionless" if option == "frictionless" else "decline"
                decided_by, reason = "stand_in", f"stand-in {decision}: {failure}"
        stamp = state.now_iso()
        status = STATUS_OF_DECISION[decision]
        authentication = Authentication(
            id=request.authentication_id,
            card_id=card.id,
            cardholder_id=card.cardholder_id,
            status=status,
            merchant=body.merchant,
            merchant_amount_minor=body.amount_minor,
            merchant_currency=body.currency,
            conversion_rate=rate,
            currency=card.currency,
            amount_minor=amount_minor,
            decision=decision,
            decided_by=decided_by,
            decision_reason=reason,
            latency_ms=latency_ms,
            challenge_expires_at=request.challenge_expires_at if decision == "challenge" else None,
            created_at=stamp,
            updated_at=stamp,
            completed_at=None if decision == "challenge" else stamp,
        )
        return state.save(AUTHENTICATIONS, authentication)

    @api.get("/v1/authentications/{authentication_id}")
    async def get_authentication(authentication_id: str) -> Authentication:
        return _timed_out_if_due(state, state.load(AUTHENTICATIONS, authentication_id))

    @api.post("/v1/authentications/{authentication_id}/challenge_response")
    async def challenge_response(
        authentication_id: str, body: ChallengeResponseIn
    ) -> Authentication:
        """The program reports the cardholder's answer to a challenge. The
        same outcome again is answered as it stands; another one, or any
        after the challenge ended otherwise (its window passed), is a 409."""
        authentication = _timed_out_if_due(state, state.load(AUTHENTICATIONS, authentication_id))
        if authentication.status == body.outcome:
            return authentication
        if authentication.status != "pending_challenge":
            conflict(
                f"authentication {authentication_id} is {authentication.status}, "
                "not waiting for a challenge's outcome"
            )
        stamp = state.now_iso()
        authentication.status = body.outcome
        authentication.updated_at = stamp
        authentication.completed_at = stamp
        return state.save(AUTHENTICATIONS, authentication)

    return api
