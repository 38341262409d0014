"""The dispute's steps (workflows/dispute.py runs them): the checks of the
disputed transaction, opening the dispute at the issuer, waiting for its
decision (webhooks, polls, the provisional credit, representment and
escalation), sending new evidence, and closing: the chargeback paid in on a
win, the provisional credit taken back (and any shortfall recorded as the
customer's debt) on a loss or withdrawal; the undo steps they register; the
dispute's stages (ProcessStatus), details and notices.

Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.disputes import DisputeProviderActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from schemas.accounts import disputes_provisional, issuer_settlement, system_account, wallet
    from schemas.customers import Notification
    from schemas.disputes import (
        DISPUTABLE_KINDS,
        EVIDENCE_ITEMS_MAX,
        DisputedTransaction,
        DisputeInput,
        EvidenceItem,
        IssuerDisputeRequest,
        WithdrawRequest,
        customer_debt,
        customer_debt_spec,
        missing_evidence,
    )
    from schemas.issuer import DisputeStatus
    from schemas.ledger import TransferBatch, TransferRequest
    from schemas.money import Money
    from workflows.process import ProcessStage, Saga
    from workflows.steps import step, step_key

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
DECIDED_STATUSES = frozenset({DisputeStatus.WON, DisputeStatus.LOST, DisputeStatus.WITHDRAWN})
_STAGE_OF: dict[DisputeStatus, str] = {
    DisputeStatus.OPEN: SUBMITTED,
    DisputeStatus.REPRESENTMENT: REPRESENTMENT,
    DisputeStatus.PRE_ARBITRATION: PRE_ARBITRATION,
}


def _refused_by_state(error: ActivityError) -> bool:
    """The issuer refused the call because of the dispute's state (a 409)."""
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.type == PROVIDER_CONFLICT


class DisputeSteps:
    """The dispute's state and steps; DisputeWorkflow, the workflow, runs them."""

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

    # ----- steps -------------------------------------------------------------

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
            if self._issuer_status not in DECIDED_STATUSES:
                raise
            return
        self._sent = sent + len(new)
        self._apply(dispute.status)

    async def _withdraw_at_issuer(self) -> None:
        if self._issuer_id is None or self._issuer_status in DECIDED_STATUSES:
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
