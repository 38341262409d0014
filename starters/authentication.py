"""3-D Secure challenges: a client function per action, for the gateway's
routes, the bot (through the API) and tests."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError

from schemas.authentication import (
    ChallengeAnswer,
    ChallengeReply,
    ChallengeStatus,
    authentication_workflow_id,
)
from schemas.refusals import Refusal
from starters.updates import UPDATE_RPC_TIMEOUT, ended_result, execute_update, refuse
from workflows.authentication import Authentication


async def answer_challenge(
    client: Client,
    authentication_id: str,
    answer: ChallengeAnswer,
    *,
    update_id: str | None = None,
    rpc_timeout: timedelta | None = None,
) -> ChallengeReply:
    """The customer's code for the challenge; what it did (right, wrong,
    the attempts left, the outcome)."""
    handle = client.get_workflow_handle(
        authentication_workflow_id(authentication_id), result_type=ChallengeStatus
    )
    try:
        return await execute_update(
            handle,
            Authentication.answer,
            answer,
            id=update_id,
            rpc_timeout=rpc_timeout or UPDATE_RPC_TIMEOUT,
        )
    except RPCError as error:
        # An ended challenge is refused as finished, with its outcome.
        ended = await ended_result(handle, error, "authentication")
        refuse(Refusal.FINISHED, f"the authentication is {ended.outcome}")


async def challenge_status(client: Client, authentication_id: str) -> ChallengeStatus:
    handle = client.get_workflow_handle(authentication_workflow_id(authentication_id))
    return await handle.query(Authentication.status)
