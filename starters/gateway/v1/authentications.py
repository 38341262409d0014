"""3-D Secure challenges `authentication/{authentication_id}`: the customer
answers with the code they were sent (the app, or the bot through this same
API), reads a challenge, and lists the challenges waiting for a code."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from activities.api_keys import SCOPE_CUSTOMERS_READ
from activities.authentication import pending_challenges
from schemas.authentication import (
    AUTHENTICATION_ID_PATTERN,
    CODE_PATTERN,
    ChallengeAnswer,
    ChallengeReply,
    ChallengeStatus,
    PendingChallenge,
    authentication_workflow_id,
)
from schemas.edge import EdgeModel
from schemas.refusals import Refusal
from starters.authentication import answer_challenge, challenge_status
from starters.gateway.errors import ApiError
from starters.gateway.state import DatabasePool, TemporalClient
from starters.gateway.v1.cards import OwnCardId
from starters.gateway.v1.idempotency import ProcessUpdates, UpdateKey
from starters.gateway.v1.ownership import OwnCustomerId
from starters.gateway.v1.shared import READ, UPDATE, process_router, route, steer

router = process_router()

AuthenticationIdPath = Annotated[str, Path(pattern=AUTHENTICATION_ID_PATTERN)]


class AnswerBody(EdgeModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=CODE_PATTERN, description="The one-time code the customer was sent")


class PendingChallenges(BaseModel):
    data: list[PendingChallenge]


@route(
    router,
    UPDATE,
    "/cards/{card_id}/authentications/{authentication_id}/answer",
    "Answer a 3-D Secure challenge with the code the customer was sent",
)
async def answer_route(
    card_id: OwnCardId,
    authentication_id: AuthenticationIdPath,
    body: AnswerBody,
    idempotency: UpdateKey,
    updates: ProcessUpdates,
) -> ChallengeReply:
    answer = ChallengeAnswer(card_id=card_id, code=body.code)
    answered = partial(answer_challenge, updates.client, authentication_id, answer)
    workflow_id = authentication_workflow_id(authentication_id)
    route_name = "authentication-answer"
    return await updates.send(
        answered, idempotency, route_name, workflow_id, authentication_id, body
    )


@route(
    router,
    READ,
    "/cards/{card_id}/authentications/{authentication_id}",
    "A 3-D Secure challenge: its stage, outcome, attempts and deadline",
)
async def challenge_route(
    card_id: OwnCardId, authentication_id: AuthenticationIdPath, client: TemporalClient
) -> ChallengeStatus:
    found = await steer(challenge_status(client, authentication_id), authentication_id)
    if found.card_id != card_id:
        raise ApiError(
            Refusal.NOT_FOUND, f"no authentication {authentication_id} of card {card_id}"
        )
    return found


@route(
    router,
    READ,
    "/customers/{customer_id}/authentications",
    "The customer's 3-D Secure challenges waiting for a code, newest first",
    scope=SCOPE_CUSTOMERS_READ,
)
async def pending_route(customer_id: OwnCustomerId, pool: DatabasePool) -> PendingChallenges:
    return PendingChallenges(data=await pending_challenges(pool, customer_id))
