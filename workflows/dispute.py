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
"""

from __future__ import annotations

import asyncio
import functools
import math
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.disputes import DisputeLedgerActivities, DisputeProviderActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from schemas.accounts import disputes_provisional, issuer_settlement, system_account, wallet
    from schemas.customers import Notification
    from schemas.disputes import (
        DISPUTABLE_KINDS,
        EVIDENCE_ITEMS_MAX,
        DisputedTransaction,
        DisputeInput,
        DisputeOutcome,
        DisputeResult,
        DisputeStatusView,
        DisputeSubmission,
        EvidenceItem,
        IssuerDisputeEvent,
        IssuerDisputeRequest,
        OperatorAction,
        WithdrawRequest,
        customer_debt,
        customer_debt_spec,
        missing_evidence,
    )
    from schemas.issuer import DisputeStatus
    from schemas.ledger import TransferBatch, TransferRequest
    from schemas.money import Money
    from schemas.providers import ISSUER
    from schemas.refusals import Refusal, refused
    from schemas.search import (
        AMOUNT_MINOR,
        CARD_ID,
        CURRENCY,
        CUSTOMER_ID,
        PROVIDER,
    )
    from workflows.cancellation import is_cancellation
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for

DISPUTE_WORKFLOW = "Dispute"
ADD_EVIDENCE_SIGNAL = "add_evidence"
ISSUER_EVENT_SIGNAL = "issuer_event"
SUBMIT_UPDATE = "submit"
WITHDRAW_UPDATE = "withdraw"
OPERATOR_UPDATE = "operator_action"

# Stages (ProcessStatus) an operator filters on.
WAITING_FOR_EVIDENCE = "waiting for evidence"
SUBMITTED = "submitted"
REPRESENTMENT = "representment"
PRE_ARBITRATION = "pre-arbitration"

# A dispute started before this patch replays as it ran: an evidence call the
# issuer refused failed the process. Since, a refusal because the network has
# decided meanwhile is read as that decision.
DISPUTE_DECIDED_ON_THE_WAY_PATCH = "dispute-decided-while-evidence-sent"
# Since this patch, an escalation the issuer refused (the dispute still in
# representment there) can be asked again by an operator, and the passed
# deadline of a representment already answered no longer wakes the dispute
# every second until the network decides.
DISPUTE_ESCALATION_REFUSED_PATCH = "dispute-escalation-refused-asked-again"
# The issuer's answer when the dispute's state refuses a call (e.g. it is decided).
PROVIDER_CONFLICT = "ProviderConflict"

# How far along the issuer's dispute is; an event never moves it backwards.
_RANK: dict[DisputeStatus, int] = {
    DisputeStatus.OPEN: 0,
    DisputeStatus.REPRESENTMENT: 1,
    DisputeStatus.PRE_ARBITRATION: 2,
    DisputeStatus.WON: 3,
    DisputeStatus.LOST: 3,
    DisputeStatus.WITHDRAWN: 3,
}
_DECIDED = frozenset({DisputeStatus.WON, DisputeStatus.LOST, DisputeStatus.WITHDRAWN})
_STAGE_OF: dict[DisputeStatus, str] = {
    DisputeStatus.OPEN: SUBMITTED,
    DisputeStatus.REPRESENTMENT: REPRESENTMENT,
    DisputeStatus.PRE_ARBITRATION: PRE_ARBITRATION,
}


def _refused_by_state(error: ActivityError) -> bool:
    """The issuer refused the call because of the dispute's state (a 409)."""
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.type == PROVIDER_CONFLICT


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
class DisputeWorkflow:
    @workflow.init
    def __init__(self, request: DisputeInput) -> None:
        self._input = request
        self.progress = ProcessStage("starting", self._details)
        self._final = False
        self._transaction: DisputedTransaction | None = None
        self._evidence: list[EvidenceItem] = []
        self._add_evidence(request.evidence)
        # Evidence items the issuer already has (a prefix of self._evidence).
        self._sent = 0
        self._submitted = False
        self._answer_requested = False
        self._escalated = False
        self._withdraw: WithdrawRequest | None = None
        self._credit_now = False
        self._issuer_id: str | None = None
        self._issuer_status: DisputeStatus | None = None
        self._deadline_at: datetime | None = None
        self._credit_at: datetime | None = None
        self._credit_refused = False
        self._credited_minor = 0
        self._reversed_minor = 0
        self._debt_minor = 0
        self._final_credit_minor = 0
        self._saga = Saga()

    # ----- platform: search attributes, compensations, handlers ----------------

    @workflow.run
    async def run(self, request: DisputeInput) -> DisputeResult:
        self.progress.search(
            CUSTOMER_ID.value_set(request.customer_id), PROVIDER.value_set(ISSUER)
        )
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

    def _refusal(self, transaction: DisputedTransaction | None) -> str | None:
        request = self._input
        if transaction is None or transaction.customer_id != request.customer_id:
            return f"transaction {request.transaction_id} is not a settled transaction of yours"
        if transaction.kind not in DISPUTABLE_KINDS:
            return f"a {transaction.kind} cannot be disputed; only clearings and force posts"
        if request.amount_minor is not None and request.amount_minor > transaction.amount_minor:
            return f"amount_minor exceeds the transaction's {transaction.amount_minor}"
        window = timedelta(seconds=request.policy.filing_window_seconds)
        if workflow.now() > transaction.occurred_at + window:
            return (
                f"the filing window closed at {(transaction.occurred_at + window).isoformat()}"
                f" ({request.policy.filing_window_seconds} s after the transaction settled)"
            )
        return None

    async def _open_at_issuer(self, transaction: DisputedTransaction) -> str | None:
        """Open the dispute at the issuer; the issuer's refusal, if it refused."""
        self.progress.enter("submitting")
        request = self._input
        evidence = list(self._evidence)
        opening = IssuerDisputeRequest(
            key=step_key("issuer/open"),
            transaction_id=transaction.transaction_id,
            reason=request.reason,
            amount_minor=request.amount_minor,
            evidence=evidence,
        )
        # Registered before the call: a cancellation may interrupt it after the issuer opened it.
        self._saga.done(functools.partial(self._withdraw_opened, opening))
        try:
            dispute = await step(request, DisputeProviderActivities.issuer_open, opening)
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the process is being cancelled: its compensations run
            return f"the issuer refused the dispute: {error.cause or error}"
        self._sent = len(evidence)
        self._issuer_id = dispute.id
        self._apply(dispute.status)
        return None

    async def _withdraw_opened(self, opening: IssuerDisputeRequest) -> None:
        """Compensation: withdraw the dispute at the issuer. Not knowing its id
        (the opening was interrupted), ask again with the same key: the issuer
        answers the first outcome."""
        if self._issuer_id is None:
            dispute = await step(self._input, DisputeProviderActivities.issuer_open, opening)
            self._issuer_id = dispute.id
            self._apply(dispute.status)
        await self._withdraw_at_issuer()

    async def _await_decision(self) -> DisputeStatus | None:
        """The issuer's final status (None: undecided in time), crediting,
        answering and withdrawing along the way."""
        policy = self._input.policy
        give_up_at = workflow.now() + timedelta(seconds=policy.decision_wait_seconds_max)
        poll_at = workflow.now() + timedelta(seconds=policy.issuer_poll_seconds)
        while True:
            status = self._issuer_status
            if status in _DECIDED:
                return status
            now = workflow.now()
            if self._withdraw is not None:
                await self._withdraw_at_issuer()
                if self._issuer_status in _DECIDED:
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

    async def _credit(self) -> None:
        """Credit the wallet provisionally, once."""
        transaction = self._transaction
        assert transaction is not None
        self.progress.enter("crediting provisionally")
        self._credit_now = False
        provisional = disputes_provisional(transaction.currency)
        await step(self._input, LedgerActivities.open_accounts, [system_account(provisional)])
        amount = self._amount_minor()
        crediting = TransferRequest(
            key=step_key("provisional-credit"),
            debit=provisional,
            credit=wallet(self._input.customer_id, transaction.currency),
            amount_minor=amount,
            currency=transaction.currency,
        )
        # Registered before the transfer: a cancellation may interrupt it after it posted.
        self._saga.done(functools.partial(self._undo_credit, crediting))
        outcome = await step(self._input, LedgerActivities.transfer, crediting)
        if not outcome.accepted:
            # E.g. a closed wallet: an operator credits by hand; never retried here.
            workflow.logger.error("provisional credit refused: %s", outcome.rejection)
            self._credit_refused = True
        else:
            self._credited_minor = amount
            await self._notify(
                "provisional-credit",
                f"We credited {self._money(amount)} while your dispute is reviewed",
                "The credit is provisional until the card network decides.",
            )
        self.progress.enter(self._issuer_stage())

    async def _undo_credit(self, crediting: TransferRequest) -> None:
        """Compensation: take the provisional credit back. Not knowing whether it
        posted (the transfer was interrupted), ask the ledger again with the same
        key: it answers the first outcome."""
        if not self._credited_minor:
            outcome = await step(self._input, LedgerActivities.transfer, crediting)
            if not outcome.accepted:
                return
            self._credited_minor = crediting.amount_minor
        await self._reverse("compensation")

    async def _escalate(self) -> None:
        """Answer the merchant's representment: send new evidence, go to pre-arbitration."""
        self.progress.enter("answering the representment")
        await self._send_new_evidence()
        self._escalated = True
        self._answer_requested = False
        try:
            dispute = await step(
                self._input,
                DisputeProviderActivities.issuer_escalate,
                IssuerDisputeRequest(
                    key=step_key("issuer/escalate"), dispute_id=self._issuer_id or ""
                ),
            )
            self._apply(dispute.status)
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the process is being cancelled: its compensations run
            # The network decided first: read where it stands.
            workflow.logger.warning("pre-arbitration refused: %s", error.cause or error)
            await self._refresh()
        self.progress.enter(self._issuer_stage())

    async def _send_new_evidence(self) -> None:
        sent = self._sent
        new = self._evidence[sent:]
        if not new or self._issuer_id is None:
            return
        try:
            dispute = await step(
                self._input,
                DisputeProviderActivities.issuer_add_evidence,
                IssuerDisputeRequest(
                    key=step_key(f"issuer/evidence/{sent}"),
                    dispute_id=self._issuer_id,
                    evidence=new,
                ),
            )
        except ActivityError as error:
            if is_cancelled_exception(error) or not _refused_by_state(error):
                raise
            if not workflow.patched(DISPUTE_DECIDED_ON_THE_WAY_PATCH):
                raise
            # The network decided while the evidence was on its way: the
            # decision is the outcome, read as its webhook would bring it.
            await self._refresh()
            if self._issuer_status not in _DECIDED:
                raise
            return
        self._sent = sent + len(new)
        self._apply(dispute.status)

    async def _withdraw_at_issuer(self) -> None:
        if self._issuer_id is None or self._issuer_status in _DECIDED:
            return
        try:
            dispute = await step(
                self._input,
                DisputeProviderActivities.issuer_withdraw,
                IssuerDisputeRequest(key=step_key("issuer/withdraw"), dispute_id=self._issuer_id),
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the process is being cancelled: its compensations run
            workflow.logger.warning("the issuer refused the withdrawal: %s", error.cause or error)
            return
        self._apply(dispute.status)

    async def _refresh(self) -> None:
        if self._issuer_id is None:
            return
        dispute = await step(self._input, DisputeProviderActivities.issuer_get, self._issuer_id)
        self._apply(dispute.status)

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

    async def _settle_won(self, transaction: DisputedTransaction) -> None:
        """The issuer pays the chargeback: it settles the provisional credit,
        or credits the wallet now when nothing was credited."""
        currency = transaction.currency
        settlement = issuer_settlement(currency)
        provisional = disputes_provisional(currency)
        await step(
            self._input,
            LedgerActivities.open_accounts,
            [system_account(settlement), system_account(provisional)],
        )
        amount = self._amount_minor()
        credited = self._credited_minor
        items = (
            [
                TransferRequest(
                    key=step_key("won/settle-provisional"),
                    debit=settlement,
                    credit=provisional,
                    amount_minor=credited,
                    currency=currency,
                )
            ]
            if credited
            else []
        )
        if amount > credited:
            items.append(
                TransferRequest(
                    key=step_key("won/credit"),
                    debit=settlement,
                    credit=wallet(self._input.customer_id, currency),
                    amount_minor=amount - credited,
                    currency=currency,
                )
            )
        outcomes = await step(
            self._input, LedgerActivities.submit_batch, TransferBatch(items=items, atomic=True)
        )
        refused = [outcome for outcome in outcomes if not outcome.accepted]
        if refused:
            raise RuntimeError(f"the ledger refused the chargeback: {refused[0].rejection}")
        self._final_credit_minor = amount

    async def _reverse(self, why: str) -> None:
        """Take the provisional credit back: from the wallet what it covers
        (pending holds included), the rest as the customer's debt."""
        transaction = self._transaction
        assert transaction is not None
        currency = transaction.currency
        customer_id = self._input.customer_id
        owed = self._credited_minor - self._reversed_minor - self._debt_minor
        if owed <= 0:
            return
        source = wallet(customer_id, currency)
        provisional = disputes_provisional(currency)
        debt = customer_debt(customer_id, currency)
        attempts = self._input.policy.reversal_attempts_max
        for attempt in range(attempts + 1):
            covered = 0
            if attempt < attempts:
                balance = await step(self._input, LedgerActivities.balance, source)
                covered = min(owed, max(0, balance.available))
            # The last attempt records it all as debt, which always succeeds.
            shortfall = owed - covered
            items: list[TransferRequest] = []
            if covered:
                items.append(
                    TransferRequest(
                        key=step_key(f"{why}/wallet/{attempt}"),
                        debit=source,
                        credit=provisional,
                        amount_minor=covered,
                        currency=currency,
                    )
                )
            if shortfall:
                await step(
                    self._input,
                    LedgerActivities.open_accounts,
                    [customer_debt_spec(customer_id, currency)],
                )
                items.append(
                    TransferRequest(
                        key=step_key(f"{why}/debt/{attempt}"),
                        debit=debt,
                        credit=provisional,
                        amount_minor=shortfall,
                        currency=currency,
                    )
                )
            outcomes = await step(
                self._input, LedgerActivities.submit_batch, TransferBatch(items=items, atomic=True)
            )
            if all(outcome.accepted for outcome in outcomes):
                self._reversed_minor += covered
                self._debt_minor += shortfall
                # Invariant: exactly the provisional credit is taken back, no more.
                assert self._reversed_minor + self._debt_minor == self._credited_minor
                return
            # A card payment took the wallet between the read and the debit: read again.
        raise RuntimeError("the provisional credit could not be reversed")

    async def _notify(self, occasion: str, subject: str, body: str) -> None:
        try:
            await step(
                self._input,
                ProviderActivities.notify_customer,
                Notification(
                    key=step_key(f"notify/{occasion}"),
                    customer_id=self._input.customer_id,
                    subject=subject,
                    body=body,
                ),
            )
        except ActivityError as error:
            if is_cancelled_exception(error):
                raise  # the process is being cancelled: its compensations run
            workflow.logger.warning("the dispute notification failed: %s", error)

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
        if self._issuer_status is None and event.status not in _DECIDED:
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
        if self._final or self._issuer_status in _DECIDED:
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
        if self._final or self._issuer_status is None or self._issuer_status in _DECIDED:
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

    # ----- helpers ------------------------------------------------------------

    def _add_evidence(self, items: list[EvidenceItem]) -> None:
        for item in items:
            # Signals may be delivered twice: the same item counts once.
            if item in self._evidence:
                continue
            if len(self._evidence) >= EVIDENCE_ITEMS_MAX:
                workflow.logger.warning("evidence ignored: %s items already", EVIDENCE_ITEMS_MAX)
                return
            self._evidence.append(item)

    def _apply(self, status: DisputeStatus) -> None:
        current = self._issuer_status
        if current is not None and _RANK[status] <= _RANK[current]:
            return  # a repeated or late event
        self._issuer_status = status
        if status == DisputeStatus.REPRESENTMENT:
            self._deadline_at = workflow.now() + timedelta(
                seconds=self._input.policy.representment_response_seconds
            )
        elif status != DisputeStatus.OPEN:
            self._deadline_at = None
        if not self._final and status in _STAGE_OF:
            self.progress.enter(_STAGE_OF[status])

    def _issuer_stage(self) -> str:
        if self._issuer_status is None:
            return self.progress.stage
        return _STAGE_OF.get(self._issuer_status, self._issuer_status.value)

    def _amount_minor(self) -> int:
        if self._input.amount_minor is not None:
            return self._input.amount_minor
        return self._transaction.amount_minor if self._transaction else 0

    def _money(self, amount_minor: int) -> str:
        assert self._transaction is not None
        return str(Money(amount_minor=amount_minor, currency=self._transaction.currency))

    def _details(self) -> str:
        request = self._input
        transaction = self._transaction
        lines = [
            f"Dispute of {request.transaction_id} ({request.reason.value}): {self.progress.stage}"
        ]
        if transaction is not None:
            lines.append(
                f"disputed {self._money(self._amount_minor())} of the "
                f"{transaction.kind} at {transaction.merchant_name or '-'} on card "
                f"{transaction.card_id}, settled {transaction.occurred_at.isoformat()}"
            )
        lines.append(
            "evidence: "
            + (", ".join(item.type.value for item in self._evidence) or "none")
            + (
                f"; missing {', '.join(missing)}"
                if (missing := missing_evidence(request.reason, self._evidence))
                else ""
            )
        )
        if self._issuer_id is not None:
            status = self._issuer_status.value if self._issuer_status else "-"
            lines.append(f"issuer dispute {self._issuer_id}: {status}")
        if self._deadline_at is not None and not self._final:
            lines.append(f"deadline {self._deadline_at.isoformat()}")
        if transaction is not None:
            if self._credited_minor:
                lines.append(f"provisionally credited {self._money(self._credited_minor)}")
            elif self._credit_at is not None and not self._final:
                lines.append(f"provisional credit due {self._credit_at.isoformat()}")
            if self._reversed_minor or self._debt_minor:
                lines.append(
                    f"taken back {self._money(self._reversed_minor)} from the wallet; "
                    f"DEBT {self._money(self._debt_minor)} recorded on the customer"
                )
            if self._final_credit_minor:
                lines.append(f"final credit {self._money(self._final_credit_minor)}")
        return "\n".join(lines)
