"""Dispute `dispute/{transaction_id}`: the customer's chargeback of a cleared card transaction.

Steps:

1. The transaction is looked up where the card recorded it (card_transactions):
   it must be the customer's own clearing or force post, settled no longer than
   `filing_window_seconds` ago; otherwise the dispute is refused with the reason.
2. "waiting for evidence": evidence arrives with the input, by the signal
   `add_evidence`, or with the update `submit`, whose validator refuses a
   submission lacking what the reason requires (schemas/disputes.py
   REQUIRED_EVIDENCE), naming the missing types. Not submitted within
   `evidence_window_seconds`, the dispute lapses ("expired").
3. "submitted": the dispute is opened at the issuer with its evidence. Still
   undecided `provisional_credit_after_seconds` later (0: at once), the wallet
   is credited provisionally from `disputes:provisional:{CCY}`.
4. The issuer's decisions arrive by webhook (the signal `issuer_event`; late,
   repeated or out-of-order events never move the dispute backwards), and the
   issuer is asked every `issuer_poll_seconds` without news in case one was lost:
   - representment: the merchant contests; the customer may add evidence and
     `submit` their answer until `representment_response_seconds`; then (or
     at the answer, or an operator's `escalate`) the evidence is sent and the
     dispute taken to pre-arbitration;
   - won: the issuer pays the chargeback into `disputes:provisional` (or
     straight to the wallet when nothing was credited provisionally);
   - lost / withdrawn (the update `withdraw`, by the customer or an operator):
     the provisional credit is taken back from the wallet, and whatever the
     wallet cannot cover is recorded as the customer's debt
     (`customer:{id}:debt:{CCY}`); a wallet never goes below zero.
   Undecided after `decision_wait_seconds_max`, the process ends "undecided"
   for an operator, with any provisional credit left in place.
   The network may decide while a call of ours is on its way (new evidence,
   pre-arbitration, a withdrawal): the issuer refuses the call (409) because
   the dispute is decided, and that decision, read from the issuer, is the
   outcome, as if its webhook had arrived first: never a failure.

Compensations (failure or cancellation before a decision, shielded): the
provisional credit is reversed, and the dispute withdrawn at the issuer.
The ledger legs are documented in schemas/disputes.py.

This module holds the workflow: its run, the flow to a decision and its
close, and its messages; its steps, undo steps, stages and details are
DisputeSteps, workflows/dispute_steps.py.
"""

from __future__ import annotations

import asyncio
import functools
import math
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.disputes import DisputeLedgerActivities
    from schemas.disputes import (
        DisputeInput,
        DisputeOutcome,
        DisputeResult,
        DisputeStatusView,
        DisputeSubmission,
        EvidenceItem,
        IssuerDisputeEvent,
        OperatorAction,
        WithdrawRequest,
        missing_evidence,
    )
    from schemas.issuer import DisputeStatus
    from schemas.providers import ISSUER
    from schemas.refusals import Refusal, refused
    from schemas.search import AMOUNT_MINOR, CARD_ID, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation
    from workflows.dispute_steps import (
        DECIDED_STATUSES,
        DISPUTE_ESCALATION_REFUSED_PATCH,
        WAITING_FOR_EVIDENCE,
        DisputeSteps,
    )
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.steps import step, wait_for

DISPUTE_WORKFLOW = "Dispute"
ADD_EVIDENCE_SIGNAL = "add_evidence"
ISSUER_EVENT_SIGNAL = "issuer_event"
SUBMIT_UPDATE = "submit"
WITHDRAW_UPDATE = "withdraw"
OPERATOR_UPDATE = "operator_action"


def dispute_workflow_id(transaction_id: str) -> str:
    return f"dispute/{transaction_id}"


def dispute_start_metadata(request: DisputeInput) -> StartMetadata:
    return start_metadata(
        f"Dispute of {request.transaction_id} ({request.reason.value})"
        f" by customer {request.customer_id}",
        {
            "transaction": request.transaction_id,
            "customer": request.customer_id,
            "reason": request.reason.value,
            "amount (minor units)": request.amount_minor or "the whole transaction",
        },
        "the evidence (signal `add_evidence`, update `submit`), then the issuer's decision"
        " by webhook; operators' `operator_action` update",
    )


@workflow.defn(name=DISPUTE_WORKFLOW)
class DisputeWorkflow(DisputeSteps):
    @workflow.init
    def __init__(self, request: DisputeInput) -> None:
        super().__init__(request)

    # ----- platform: search attributes, compensations, handlers ----------------

    @workflow.run
    async def run(self, request: DisputeInput) -> DisputeResult:
        self.progress.search(CUSTOMER_ID.value_set(request.customer_id), PROVIDER.value_set(ISSUER))
        try:
            outcome, reason = await self._dispute(request)
        except (Exception, asyncio.CancelledError) as error:
            # A failing undo step is logged and the next one runs.
            await self._saga.compensate(keep_going=True)
            self._final = True
            self.progress.enter("cancelled" if is_cancellation(error) else "failed")
            raise
        self._final = True
        # Every update and signal is handled before the result is final.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.progress.enter(outcome)
        transaction = self._transaction
        return DisputeResult(
            transaction_id=request.transaction_id,
            outcome=outcome,
            reason=reason,
            issuer_dispute_id=self._issuer_id,
            amount_minor=self._amount_minor(),
            currency=transaction.currency if transaction else None,
            provisional_credit_minor=self._credited_minor,
            reversed_minor=self._reversed_minor,
            debt_minor=self._debt_minor,
            final_credit_minor=self._final_credit_minor,
        )

    # ----- business steps -----------------------------------------------------

    async def _dispute(self, request: DisputeInput) -> tuple[DisputeOutcome, str]:
        self.progress.enter("checking")
        transaction = await step(
            request, DisputeLedgerActivities.load_transaction, request.transaction_id
        )
        refusal = self._refusal(transaction)
        if refusal is not None:
            return "refused", refusal
        assert transaction is not None
        self._transaction = transaction
        self.progress.search(
            CARD_ID.value_set(transaction.card_id),
            AMOUNT_MINOR.value_set(self._amount_minor()),
            CURRENCY.value_set(transaction.currency.value),
        )

        self._deadline_at = workflow.now() + timedelta(
            seconds=request.policy.evidence_window_seconds
        )
        self.progress.enter(WAITING_FOR_EVIDENCE)
        submitted = await wait_for(
            lambda: self._submitted or self._withdraw is not None,
            request.policy.evidence_window_seconds,
        )
        if self._withdraw is not None and not self._submitted:
            return "withdrawn", f"withdrawn by the {self._withdraw.by} before submission"
        if not submitted:
            return "expired", "the evidence was not submitted in time"

        opened = await self._open_at_issuer(transaction)
        if opened is not None:
            return "refused", opened
        self._credit_at = workflow.now() + timedelta(
            seconds=request.policy.provisional_credit_after_seconds
        )
        decided = await self._await_decision()
        # A decision is final: nothing left to compensate, and its ledger legs
        # complete even if the process is cancelled meanwhile.
        self._saga.clear()
        closing = asyncio.ensure_future(self._close(decided))
        try:
            return await asyncio.shield(closing)
        except asyncio.CancelledError:
            await closing
            raise

    async def _await_decision(self) -> DisputeStatus | None:
        """The issuer's final status (None: undecided in time), crediting,
        answering and withdrawing along the way."""
        policy = self._input.policy
        give_up_at = workflow.now() + timedelta(seconds=policy.decision_wait_seconds_max)
        poll_at = workflow.now() + timedelta(seconds=policy.issuer_poll_seconds)
        while True:
            status = self._issuer_status
            if status in DECIDED_STATUSES:
                return status
            now = workflow.now()
            if self._withdraw is not None:
                await self._withdraw_at_issuer()
                if self._issuer_status in DECIDED_STATUSES:
                    continue
                # The issuer refused (it decided meanwhile): read it and go on.
                self._withdraw = None
                await self._refresh()
                continue
            if self._credit_due(now):
                await self._credit()
                continue
            if status == DisputeStatus.REPRESENTMENT and not self._escalated:
                assert self._deadline_at is not None
                if self._answer_requested or now >= self._deadline_at:
                    await self._escalate()
                    continue
            elif self._answer_requested:
                await self._send_new_evidence()
                self._answer_requested = False
            if now >= give_up_at:
                return None
            wakes = [give_up_at, poll_at]
            if self._credit_at is not None and not self._credited_minor:
                wakes.append(self._credit_at)
            if (
                status == DisputeStatus.REPRESENTMENT
                and self._deadline_at is not None
                # Answered already: its deadline has nothing left to wake for.
                and not (self._escalated and workflow.patched(DISPUTE_ESCALATION_REFUSED_PATCH))
            ):
                wakes.append(self._deadline_at)
            seconds = max(1, math.ceil((min(wakes) - now).total_seconds()))
            news = await wait_for(functools.partial(self._has_news, status), seconds)
            if news:
                poll_at = workflow.now() + timedelta(seconds=policy.issuer_poll_seconds)
            elif workflow.now() >= poll_at:
                await self._refresh()
                poll_at = workflow.now() + timedelta(seconds=policy.issuer_poll_seconds)

    def _has_news(self, seen: DisputeStatus | None) -> bool:
        return (
            self._issuer_status != seen
            or self._withdraw is not None
            or (self._credit_now and not self._credited_minor and not self._credit_refused)
            or self._answer_requested
        )

    def _credit_due(self, now: datetime) -> bool:
        if self._credited_minor or self._credit_refused or self._credit_at is None:
            return False
        return self._credit_now or now >= self._credit_at

    async def _close(self, decided: DisputeStatus | None) -> tuple[DisputeOutcome, str]:
        transaction = self._transaction
        assert transaction is not None
        amount = self._amount_minor()
        if decided is None:
            return "undecided", "the network did not decide in time; an operator takes over"
        if decided == DisputeStatus.WON:
            self.progress.enter("settling the chargeback")
            await self._settle_won(transaction)
            await self._notify(
                "won", "You won your dispute", f"{self._money(amount)} is yours to keep."
            )
            return "won", "the card network decided for the customer"
        if self._credited_minor:
            self.progress.enter("reversing the provisional credit")
            await self._reverse("reversal")
        if decided == DisputeStatus.LOST:
            await self._notify(
                "lost",
                "Your dispute was not successful",
                "The card network decided for the merchant"
                + (
                    f"; {self._money(self._credited_minor)} was taken back."
                    if self._credited_minor
                    else "."
                ),
            )
            return "lost", "the card network decided for the merchant"
        by = self._withdraw.by if self._withdraw is not None else "issuer"
        return "withdrawn", f"withdrawn by the {by}"

    # ----- messages -----------------------------------------------------------

    @workflow.signal(name=ADD_EVIDENCE_SIGNAL)
    def add_evidence(self, item: EvidenceItem) -> None:
        if self._final:
            return
        self._add_evidence([item])

    @workflow.signal(name=ISSUER_EVENT_SIGNAL)
    def issuer_event(self, event: IssuerDisputeEvent) -> None:
        if event.transaction_id != self._input.transaction_id:
            return
        if self._issuer_id is not None and event.dispute_id != self._issuer_id:
            return
        if self._issuer_status is None and event.status not in DECIDED_STATUSES:
            # Before the dispute is open here, only a decision is news.
            return
        self._apply(event.status)

    @workflow.update(name=SUBMIT_UPDATE)
    async def submit(self, submission: DisputeSubmission) -> DisputeStatusView:
        self._add_evidence(submission.evidence)
        if not self._submitted:
            self._submitted = True
        else:
            self._answer_requested = True
        return self.status()

    @submit.validator
    def _validate_submit(self, submission: DisputeSubmission) -> None:
        if self._final or self._withdraw is not None:
            raise refused(
                Refusal.WRONG_STATE,
                f"the dispute is {self.progress.stage}; nothing can be submitted",
            )
        if not self._submitted:
            # Submitted while the transaction is still being checked counts too.
            missing = missing_evidence(self._input.reason, self._evidence + submission.evidence)
            if missing:
                raise refused(
                    Refusal.EVIDENCE_MISSING,
                    f"evidence missing for reason {self._input.reason.value}: "
                    + ", ".join(missing),
                )
        elif self._issuer_status is None:
            raise refused(Refusal.WRONG_STATE, "the dispute is being submitted to the issuer")

    @workflow.update(name=WITHDRAW_UPDATE)
    async def withdraw(self, request: WithdrawRequest) -> DisputeStatusView:
        self._withdraw = request
        return self.status()

    @withdraw.validator
    def _validate_withdraw(self, request: WithdrawRequest) -> None:
        if self._final or self._issuer_status in DECIDED_STATUSES:
            raise refused(
                Refusal.WRONG_STATE,
                f"the dispute is {self.progress.stage}; it can no longer be withdrawn",
            )
        if self._withdraw is not None:
            raise refused(Refusal.ALREADY_DONE, "the dispute is already being withdrawn")

    @workflow.update(name=OPERATOR_UPDATE)
    async def operator_action(self, action: OperatorAction) -> DisputeStatusView:
        workflow.logger.info("operator %s: %s (%s)", action.operator, action.action, action.note)
        if action.action == "credit_now":
            self._credit_now = True
        else:
            self._answer_requested = True
            if self._escalated and workflow.patched(DISPUTE_ESCALATION_REFUSED_PATCH):
                # Still in representment (the validator's word): the issuer
                # refused the last escalation, so this one goes to it again.
                self._escalated = False
        return self.status()

    @operator_action.validator
    def _validate_operator(self, action: OperatorAction) -> None:
        if self._final or self._issuer_status is None or self._issuer_status in DECIDED_STATUSES:
            raise refused(
                Refusal.WRONG_STATE,
                f"the dispute is {self.progress.stage}; no operator action applies",
            )
        if action.action == "credit_now" and (self._credited_minor or self._credit_refused):
            raise refused(
                Refusal.ALREADY_DONE, "the provisional credit was already given (or refused)"
            )
        if action.action == "escalate" and self._issuer_status != DisputeStatus.REPRESENTMENT:
            raise refused(Refusal.WRONG_STATE, "only a representment can be escalated")

    @workflow.query
    def status(self) -> DisputeStatusView:
        transaction = self._transaction
        return DisputeStatusView(
            transaction_id=self._input.transaction_id,
            stage=self.progress.stage,
            reason=self._input.reason,
            customer_id=self._input.customer_id,
            card_id=transaction.card_id if transaction else None,
            amount_minor=self._amount_minor() if transaction else None,
            currency=transaction.currency if transaction else None,
            evidence=list(self._evidence),
            missing_evidence=missing_evidence(self._input.reason, self._evidence),
            issuer_dispute_id=self._issuer_id,
            issuer_status=self._issuer_status,
            provisional_credit_minor=self._credited_minor,
            reversed_minor=self._reversed_minor,
            debt_minor=self._debt_minor,
            final_credit_minor=self._final_credit_minor,
            deadline_at=self._deadline_at,
            provisional_credit_at=None if self._credited_minor else self._credit_at,
        )
