"""A 3-D Secure challenge `authentication/{authentication_id}`, started by
the card that decided to challenge (workflows/card_authentication.py).

It sends the customer a one-time code on their channels (the code is made,
hashed and sent inside one activity: it never enters a workflow history),
takes the customer's answers through its `answer` update (the API's route
and the bot's) until the deadline, each checked against the stored hash by
an activity that counts the attempts in the database (a wrong code
`code_attempts_max` times fails the challenge), then reports the outcome to
the issuer and tells the card (signal `authentication_outcome`), which
remembers it for the authorization that follows.

Outcomes: authenticated, failed (too many wrong codes), timed_out (no right
code by the deadline). Nothing is compensated: a challenge moves no money.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.authentication import (
        AuthenticationLedgerActivities,
        AuthenticationProviderActivities,
    )
    from schemas.authentication import (
        ANSWER_UPDATE,
        AUTHENTICATION_OUTCOME_SIGNAL,
        AUTHENTICATION_WORKFLOW,
        AuthenticationOutcome,
        AuthenticationResult,
        ChallengeAnswer,
        ChallengeClosing,
        ChallengeInput,
        ChallengeReply,
        ChallengeStatus,
        CodeCheck,
        CodeRequest,
        OutcomeReport,
    )
    from schemas.refusals import Refusal, refused
    from schemas.search import CARD_ID, CUSTOMER_ID
    from workflows.cancellation import is_cancellation
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step, step_key

STAGE_SENDING = "sending the code"
STAGE_WAITING = "waiting for the code"
STAGE_REPORTING = "reporting the outcome"
# The card's workflow id; spelled here so the challenge needs nothing of the card's module.
CARD_WORKFLOW_ID_PREFIX = "card/"


def authentication_start_metadata(challenge: ChallengeInput) -> StartMetadata:
    return start_metadata(
        f"3-D Secure challenge {challenge.authentication_id}: card {challenge.card_id}"
        f" at {challenge.merchant_name}",
        {
            "authentication": challenge.authentication_id,
            "card": challenge.card_id,
            "customer": challenge.customer_id,
            "amount": f"{challenge.amount_minor} {challenge.currency.value} (minor units)",
            "deadline": challenge.expires_at.isoformat(),
        },
        "the customer's code: update `answer` (the API or the bot), until the deadline",
    )


@workflow.defn(name=AUTHENTICATION_WORKFLOW)
class Authentication:
    """One challenge: a code sent, answers checked, the outcome reported."""

    @workflow.init
    def __init__(self, challenge: ChallengeInput) -> None:
        self._input = challenge
        self.progress = ProcessStage(STAGE_SENDING, self._details)
        self._outcome: AuthenticationOutcome = "pending"
        self._attempts = 0
        self._answers = 0
        self._checking = False
        self._reported = False
        self._sent = False

    # ----- platform ---------------------------------------------------------------

    @workflow.run
    async def run(self, challenge: ChallengeInput) -> ChallengeStatus:
        self.progress.enter(
            STAGE_SENDING,
            CARD_ID.value_set(challenge.card_id),
            CUSTOMER_ID.value_set(challenge.customer_id),
        )
        await self._challenge(challenge)
        self.progress.enter(self._outcome)
        # An answer still being told its outcome finishes first.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    # ----- business steps -----------------------------------------------------------

    async def _challenge(self, challenge: ChallengeInput) -> None:
        await step(
            challenge,
            AuthenticationProviderActivities.send_code,
            CodeRequest(
                authentication_id=challenge.authentication_id,
                customer_id=challenge.customer_id,
                card_id=challenge.card_id,
                amount_minor=challenge.amount_minor,
                currency=challenge.currency,
                merchant_name=challenge.merchant_name,
                expires_at=challenge.expires_at,
                attempts_max=challenge.code_attempts_max,
            ),
        )
        self._sent = True
        self.progress.enter(STAGE_WAITING)
        remaining_seconds = (challenge.expires_at - workflow.now()).total_seconds()
        try:
            await workflow.wait_condition(
                lambda: self._outcome != "pending", timeout=max(remaining_seconds, 0.001)
            )
        except TimeoutError:
            # An answer being checked at the deadline counts.
            await workflow.wait_condition(lambda: not self._checking)
        if self._outcome == "pending":
            self._outcome = "timed_out"
            await step(
                challenge,
                AuthenticationLedgerActivities.close_challenge,
                ChallengeClosing(
                    authentication_id=challenge.authentication_id, outcome="timed_out"
                ),
            )
        self.progress.enter(STAGE_REPORTING)
        await step(
            challenge,
            AuthenticationProviderActivities.report_outcome,
            OutcomeReport(
                key=step_key("report"),
                authentication_id=challenge.authentication_id,
                outcome=self._outcome,
            ),
        )
        self._reported = True
        await self._tell_the_card(challenge)

    async def _tell_the_card(self, challenge: ChallengeInput) -> None:
        card = workflow.get_external_workflow_handle(
            f"{CARD_WORKFLOW_ID_PREFIX}{challenge.card_id}"
        )
        try:
            await card.signal(
                AUTHENTICATION_OUTCOME_SIGNAL,
                AuthenticationResult(
                    authentication_id=challenge.authentication_id,
                    outcome=self._outcome,
                    reason=f"challenge {self._outcome}",
                ),
            )
        except Exception as error:
            if is_cancellation(error):
                raise
            # The card's process has ended (closed long ago): nothing follows.
            workflow.logger.warning("the card was not told: %s", error)

    # ----- messages ------------------------------------------------------------------

    @workflow.update(name=ANSWER_UPDATE)
    async def answer(self, answer: ChallengeAnswer) -> ChallengeReply:
        """The customer's code; answers are checked one at a time, once the
        code's sending is recorded (a quick customer may answer before)."""
        await workflow.wait_condition(lambda: self._sent and not self._checking)
        challenge = self._input
        if self._outcome != "pending":
            return self._reply(correct=False)
        self._checking = True
        try:
            self._answers += 1
            checked = await step(
                challenge,
                AuthenticationLedgerActivities.check_code,
                CodeCheck(
                    authentication_id=challenge.authentication_id,
                    code=answer.code,
                    answer_number=self._answers,
                ),
            )
        finally:
            self._checking = False
        self._attempts = checked.attempts
        if checked.outcome != "pending" and self._outcome == "pending":
            self._outcome = checked.outcome
        self.progress.show()
        return self._reply(correct=checked.correct)

    @answer.validator
    def _validate_answer(self, answer: ChallengeAnswer) -> None:
        if answer.card_id != self._input.card_id:
            raise refused(
                Refusal.NOT_FOUND,
                f"authentication {self._input.authentication_id} is not of card {answer.card_id}",
            )
        if self._outcome != "pending":
            raise refused(Refusal.FINISHED, f"the authentication is {self._outcome}")
        if workflow.now() >= self._input.expires_at:
            raise refused(Refusal.FINISHED, "the authentication's time is up")

    def _reply(self, *, correct: bool) -> ChallengeReply:
        return ChallengeReply(
            authentication_id=self._input.authentication_id,
            outcome=self._outcome,
            correct=correct,
            attempts_left=max(self._input.code_attempts_max - self._attempts, 0),
        )

    @workflow.query
    def status(self) -> ChallengeStatus:
        return ChallengeStatus(
            authentication_id=self._input.authentication_id,
            card_id=self._input.card_id,
            stage=self.progress.stage,
            outcome=self._outcome,
            attempts=self._attempts,
            attempts_max=self._input.code_attempts_max,
            expires_at=self._input.expires_at,
            reported=self._reported,
        )

    def _details(self) -> str:
        challenge = self._input
        return (
            f"3-D Secure challenge {challenge.authentication_id} for card {challenge.card_id}:"
            f" {self.progress.stage} | {self._attempts} of {challenge.code_attempts_max}"
            f" wrong codes | until {challenge.expires_at.isoformat()}"
        )


__all__ = ["Authentication", "authentication_start_metadata"]
