"""The card's part of 3-D Secure, inside its entity `card/{card_id}`.

The gateway sends the issuer's question as the `authenticate` update; the
card decides (schemas/authentication.py `authentication_decision`), and a
challenge starts its own process `authentication/{authentication_id}`
(workflows/authentication.py), which sends the code, takes the answers and
reports the outcome: the card's history gets the question and, later, the
outcome's signal, never the challenge's steps. The card remembers every
outcome (bounded), and an authorization that carries the id of one that was
not authenticated is declined with `authentication_failed`.

Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from schemas.authentication import (
        FINISHED_OUTCOMES,
        AuthenticationAnswer,
        AuthenticationRecord,
        AuthenticationRequest,
        AuthenticationResult,
        ChallengeInput,
        authentication_decision,
        authentication_workflow_id,
        challenge_deadline,
        remember,
        remembered,
    )
    from schemas.card_rules import authentication_by_rules
    from schemas.cards import (
        AuthorizationAnswer,
        AuthorizationRequest,
        CardInput,
        DeclineReason,
    )
    from workflows.authentication import Authentication, authentication_start_metadata

# New commands in the card's authorizations (none for one without an
# authentication id), behind a patch all the same.
CARD_AUTHENTICATIONS_PATCH = "card-3ds-authentications"


async def authenticate(state: CardInput, request: AuthenticationRequest) -> AuthenticationAnswer:
    """The card's answer to the issuer's 3-D Secure question; the same
    question again gets the answer it got, and starts nothing more."""
    known = remembered(state.authentications, request.authentication_id)
    if known is not None:
        return _answer(known)
    now = workflow.now()
    decision, reason = authentication_decision(state, request, now)
    if decision != "decline":
        # The card's active rules (a decline rule, then a challenge rule)
        # decide before its 3-D Secure policy.
        by_rules = authentication_by_rules(state, request, request.requested_at or now)
        if by_rules is not None:
            decision, reason = by_rules
    policy = state.policy.authentication
    record = AuthenticationRecord(
        authentication_id=request.authentication_id,
        decision=decision,
        reason=reason,
        outcome=(
            "authenticated"
            if decision == "frictionless"
            else "declined"
            if decision == "decline"
            else "pending"
        ),
        amount_minor=request.amount_minor,
        merchant_name=request.merchant.name,
        decided_at=request.requested_at or workflow.now(),
    )
    if decision == "challenge":
        record.challenge_expires_at = challenge_deadline(policy, request)
    # Remembered before the challenge starts: a repeat arriving meanwhile
    # answers the same and starts nothing.
    remember(state.authentications, record, policy.remembered_max)
    if decision == "challenge":
        assert record.challenge_expires_at is not None
        challenge = ChallengeInput(
            authentication_id=request.authentication_id,
            card_id=state.card_id,
            customer_id=state.customer_id,
            amount_minor=request.amount_minor,
            currency=request.currency,
            merchant_name=request.merchant.name,
            expires_at=record.challenge_expires_at,
            code_attempts_max=policy.code_attempts_max,
            ledger_task_queue=state.ledger_task_queue,
            providers_task_queue=state.providers_task_queue,
        )
        metadata = authentication_start_metadata(challenge)
        try:
            await workflow.start_child_workflow(
                Authentication.run,
                challenge,
                id=authentication_workflow_id(request.authentication_id),
                task_queue=state.workflows_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                # The challenge outlives the card's run (it continues as new).
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=metadata.summary,
                static_details=metadata.details,
            )
        except WorkflowAlreadyStartedError:
            pass  # started for this question already (the card forgot it since)
    return _answer(record)


def take_outcome(state: CardInput, result: AuthenticationResult) -> None:
    """A challenge's outcome: what is finished stays finished."""
    known = remembered(state.authentications, result.authentication_id)
    if known is None or known.outcome in FINISHED_OUTCOMES:
        return
    known.outcome = result.outcome
    known.reason = result.reason or known.reason


async def authorized(
    state: CardInput,
    request: AuthorizationRequest,
    decide: Callable[[AuthorizationRequest], Awaitable[AuthorizationAnswer]],
) -> AuthorizationAnswer:
    """The card's answer to an authorization (`decide`), after its
    authentication: declined when that was not authenticated; an approval
    following an authenticated one names it in the card's decision."""
    if request.authentication_id is None or not workflow.patched(CARD_AUTHENTICATIONS_PATCH):
        return await decide(request)
    refused = authentication_refusal(state, request)
    if refused is not None:
        return AuthorizationAnswer(
            decision="decline", approved_amount_minor=0, reason=refused.value
        )
    answer = await decide(request)
    record = state.authorizations.get(request.authorization_id)
    if record is not None:
        for decision in record.decisions:
            if decision.request_id == request.request_id:
                decision.authentication_id = request.authentication_id
    return answer


def authentication_refusal(state: CardInput, request: AuthorizationRequest) -> DeclineReason | None:
    """Why an authorization is declined for the authentication it carries:
    one the card remembers that was not authenticated (failed, timed out,
    declined, or still waiting for its code). An id the card does not know
    (another card's, long forgotten) changes nothing."""
    if request.authentication_id is None:
        return None
    known = remembered(state.authentications, request.authentication_id)
    if known is None or known.outcome == "authenticated":
        return None
    return DeclineReason.AUTHENTICATION_FAILED


def _answer(record: AuthenticationRecord) -> AuthenticationAnswer:
    return AuthenticationAnswer(
        decision=record.decision,
        reason=record.reason,
        challenge_expires_at=record.challenge_expires_at,
    )
