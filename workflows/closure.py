"""Account closure `closure/{customer_id}`: a customer leaves, and their money
with them.

Steps: mark the account `closing`; freeze every card (no new purchase), then
close each one, which the card refuses while it has open authorizations: it
is asked again every `card_retry_seconds` until they clear, are reversed or
expire. Settle the recorded debt (a lost dispute's shortfall) from the
wallet of its currency. Pay each wallet's balance out through a child
withdrawal to the customer's destination (no fee, no tier limit: a holder of
e-money may always redeem it), waiting for the bank's word and a possible
return. Close the wallets (the ledger closes an account only at zero), mark
the customer `closed` and tell them.

Where it cannot go on by itself (the cards not closable within
`cards_wait_seconds`, a payout that failed or came back) it waits for an
operator's `decide` update: `retry` (the cards again, or the payout, to a
new destination if given) or `abandon` (the account is open again; what was
closed stays closed). A cancellation before the payouts leaves the account
open again.

Every step is keyed by this process: card updates by their update ids,
the debt settlement by currency, each payout by its child's id.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.closures import ClosureActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from schemas import accounts
    from schemas.closures import (
        AccountStatus,
        AccountStatusChange,
        CardChange,
        ClosureDecision,
        ClosureInput,
        ClosureOutcome,
        ClosureResult,
        ClosureStatus,
        CustomerHoldings,
    )
    from schemas.customers import Notification
    from schemas.disputes import customer_debt
    from schemas.ledger import TransferRequest
    from schemas.money import Currency, Money
    from schemas.refusals import Refusal, refused
    from schemas.search import CUSTOMER_ID
    from schemas.withdrawals import (
        Destination,
        WithdrawalInput,
        WithdrawalPolicy,
        WithdrawalResult,
    )
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished, ProcessStage
    from workflows.steps import step, step_key, wait_for
    from workflows.withdrawal import (
        WITHDRAWAL_WORKFLOW,
        withdrawal_start_metadata,
        withdrawal_workflow_id,
    )

CLOSURE_WORKFLOW = "AccountClosure"
DECIDE_UPDATE = "decide"

STAGE_FREEZING = "freezing the cards"
STAGE_CLOSING_CARDS = "closing the cards"
STAGE_SETTLING = "settling debt"
STAGE_PAYING = "paying the balance out"
STAGE_CLOSING = "closing the wallets"
STAGE_OPERATOR = "waiting for an operator"


def closure_workflow_id(customer_id: str) -> str:
    return f"closure/{customer_id}"


def closure_start_metadata(request: ClosureInput) -> StartMetadata:
    return start_metadata(
        f"Closing the account of customer {request.customer_id}",
        {"customer": request.customer_id, "pay out to": request.destination.describe()},
        "the cards' open authorizations to clear; each payout's withdrawal; an operator's"
        " `decide` update where a step cannot go on",
    )


@workflow.defn(name=CLOSURE_WORKFLOW)
class AccountClosure:
    @workflow.init
    def __init__(self, request: ClosureInput) -> None:
        self._input = request
        self.progress = ProcessStage(STAGE_FREEZING, self._details)
        self._outcome: ClosureOutcome | None = None
        self._reason: str | None = None
        self._cards_open: list[str] = []
        self._cards_closed: list[str] = []
        self._settled: dict[Currency, int] = {}
        self._paid: dict[Currency, int] = {}
        self._payouts: dict[Currency, str] = {}
        self._destination: Destination = request.destination
        self._waiting_for: str | None = None
        self._decision: ClosureDecision | None = None
        self._payout_attempts = 0
        self._paying = False

    # ----- platform: outcome --------------------------------------------------

    @workflow.run
    async def run(self, request: ClosureInput) -> ClosureResult:
        self.progress.search(CUSTOMER_ID.value_set(request.customer_id))
        try:
            await self._close(request)
            raise AssertionError("the closure ended without an outcome")
        except Finished as finished:
            outcome: ClosureOutcome = finished.outcome
            reason = finished.reason
        except (Exception, asyncio.CancelledError) as error:
            if not is_cancellation(error) or self._paying:
                self.progress.enter("failed")
                raise
            outcome, reason = "cancelled", "cancelled before the balance was paid out"
        if outcome != "closed":
            await shielded(self._account("open"))
        self._outcome, self._reason = outcome, reason
        self.progress.enter(outcome)
        return ClosureResult(
            customer_id=request.customer_id,
            outcome=outcome,
            reason=reason,
            cards_closed=self._cards_closed,
            settled_debt=self._settled,
            paid_out=self._paid,
            payouts=self._payouts,
        )

    # ----- business steps -----------------------------------------------------

    async def _close(self, request: ClosureInput) -> None:
        await self._account("closing")
        holdings = await step(request, ClosureActivities.holdings, request.customer_id)
        self._cards_open = list(holdings.cards)
        self.progress.enter(STAGE_FREEZING)
        for card_id in holdings.cards:
            await self._card(card_id, "freeze")
        await self._close_cards(request)

        self.progress.enter(STAGE_SETTLING)
        holdings = await step(request, ClosureActivities.holdings, request.customer_id)
        await self._settle_debts(request, holdings)

        self._paying = True
        holdings = await step(request, ClosureActivities.holdings, request.customer_id)
        for currency, balance in sorted(holdings.wallets.items()):
            if balance > 0:
                await shielded(self._pay_out(request, currency, balance))

        self.progress.enter(STAGE_CLOSING)
        for currency in sorted(holdings.wallets):
            await step(
                request,
                LedgerActivities.close_account,
                accounts.wallet(request.customer_id, currency),
            )
        await self._account("closed")
        await self._notify(
            "closed",
            "Your account is closed",
            "Your cards and wallets are closed"
            + (
                f"; your balance was paid out to your {self._destination.describe()}."
                if self._paid
                else "."
            ),
        )
        raise Finished("closed", request.reason)

    async def _close_cards(self, request: ClosureInput) -> None:
        """Close every card; one with open authorizations is asked again until
        they are gone, within the policy's wait, then an operator decides."""
        self.progress.enter(STAGE_CLOSING_CARDS)
        policy = request.policy
        waited = 0
        while True:
            for card_id in list(self._cards_open):
                if await self._card(card_id, "close"):
                    self._cards_open.remove(card_id)
                    self._cards_closed.append(card_id)
            if not self._cards_open:
                return
            if waited >= policy.cards_wait_seconds:
                await self._operator(
                    f"cards {', '.join(self._cards_open)} still have open authorizations"
                )
                waited = 0
                self.progress.enter(STAGE_CLOSING_CARDS)
                continue
            await workflow.sleep(timedelta(seconds=policy.card_retry_seconds))
            waited += policy.card_retry_seconds

    async def _card(self, card_id: str, action: str) -> bool:
        outcome = await step(
            self._input,
            ClosureActivities.change_card,
            CardChange(
                card_id=card_id,
                action="freeze" if action == "freeze" else "close",
                update_id=f"{workflow.info().workflow_id}/{action}/{card_id}",
                reason=f"account closure: {self._input.reason}"[:200],
            ),
        )
        return outcome.done

    async def _settle_debts(self, request: ClosureInput, holdings: CustomerHoldings) -> None:
        for currency, owed in sorted(holdings.debts.items()):
            settled = min(owed, max(0, holdings.wallets.get(currency, 0)))
            if settled == 0:
                continue
            outcome = await step(
                request,
                LedgerActivities.transfer,
                TransferRequest(
                    key=step_key(f"debt/{currency.value}"),
                    debit=accounts.wallet(request.customer_id, currency),
                    credit=customer_debt(request.customer_id, currency),
                    amount_minor=settled,
                    currency=currency,
                ),
            )
            if not outcome.accepted:
                raise RuntimeError(f"the debt settlement was refused: {outcome.detail}")
            self._settled[currency] = settled

    async def _pay_out(self, request: ClosureInput, currency: Currency, balance: int) -> None:
        """The whole balance in `currency` to the destination, through a child
        withdrawal; a failure or a return waits for an operator."""
        while True:
            self._payout_attempts += 1
            request_id = (
                f"closure-{request.customer_id}-{currency.value.lower()}-{self._payout_attempts}"
            )[:64]
            # The payout in progress, named as soon as it starts.
            self._payouts[currency] = request_id
            self.progress.enter(STAGE_PAYING)
            payout = WithdrawalInput(
                request_id=request_id,
                customer_id=request.customer_id,
                amount_minor=balance,
                currency=currency,
                destination=self._destination,
                requested_at=workflow.now(),
                policy=WithdrawalPolicy(
                    fees={},
                    new_destination_cooling_seconds=0,
                    new_destination_review_minor={},
                    return_watch_seconds=request.policy.return_watch_seconds,
                    outcome_poll_seconds=request.policy.outcome_poll_seconds,
                    tier_limits_apply=False,
                ),
                ledger_task_queue=request.ledger_task_queue,
                providers_task_queue=request.providers_task_queue,
            )
            metadata = withdrawal_start_metadata(payout)
            result: WithdrawalResult = await workflow.execute_child_workflow(
                WITHDRAWAL_WORKFLOW,
                payout,
                id=withdrawal_workflow_id(request_id),
                task_queue=request.workflows_task_queue,
                result_type=WithdrawalResult,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=metadata.summary,
                static_details=metadata.details,
            )
            if result.outcome == "paid":
                self._paid[currency] = balance
                return
            await self._operator(
                f"the {currency.value} payout ended {result.outcome}: {result.reason}"
            )

    async def _operator(self, why: str) -> None:
        """Wait for an operator's decision: retry goes on, abandon ends it."""
        self._waiting_for = why
        self._decision = None
        self.progress.enter(STAGE_OPERATOR)
        decided = await wait_for(
            lambda: self._decision is not None, self._input.policy.operator_wait_seconds
        )
        self._waiting_for = None
        if not decided:
            raise Finished("abandoned", f"no operator decided in time: {why}")
        assert self._decision is not None
        if self._decision.action == "abandon":
            raise Finished(
                "abandoned", f"operator {self._decision.operator}: {self._decision.reason}"
            )
        if self._decision.destination is not None:
            self._destination = self._decision.destination

    async def _account(self, status: AccountStatus) -> None:
        await step(
            self._input,
            ClosureActivities.set_account_status,
            AccountStatusChange(customer_id=self._input.customer_id, status=status),
        )

    # ----- messages -----------------------------------------------------------

    @workflow.update(name=DECIDE_UPDATE)
    async def decide(self, decision: ClosureDecision) -> str:
        self._decision = decision
        return f"{decision.action} recorded"

    @decide.validator
    def _validate_decide(self, decision: ClosureDecision) -> None:
        if self._outcome is not None:
            raise refused(Refusal.FINISHED, f"closure already finished ({self._outcome})")
        if self._waiting_for is None or self._decision is not None:
            raise refused(
                Refusal.WRONG_STATE, f"no decision is pending (stage: {self.progress.stage})"
            )

    @workflow.query
    def status(self) -> ClosureStatus:
        return ClosureStatus(
            customer_id=self._input.customer_id,
            stage=self.progress.stage,
            outcome=self._outcome,
            reason=self._reason,
            cards_closed=self._cards_closed,
            cards_open=self._cards_open,
            settled_debt=self._settled,
            payouts=self._payouts,
            waiting_for_operator=self._waiting_for,
        )

    # ----- helpers ------------------------------------------------------------

    def _details(self) -> str:
        lines = [f"Closing {self._input.customer_id}'s account: {self.progress.stage}"]
        if self._cards_open:
            lines.append(f"Cards not closed yet: {', '.join(self._cards_open)}")
        for currency, amount in self._paid.items():
            lines.append(f"Paid out {Money(amount_minor=amount, currency=currency)}")
        if self._waiting_for:
            lines.append(f"An operator decides (`decide`): {self._waiting_for}")
        return "\n".join(lines)

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
            workflow.logger.warning("the customer was not told: %s", error)
