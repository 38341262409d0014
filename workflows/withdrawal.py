"""Withdrawal `withdrawal/{request_id}`: a customer's money paid out of their
wallet to their bank account or a USDT-TRC20 address, exactly once per
request id.

Steps: check the customer (approved, an open wallet) and their KYC tier's
limits, reserving the month's usage in the same transaction; a destination
never paid to before waits `new_destination_cooling_seconds` (the customer is
told and may cancel), or above the policy's threshold an operator's `review`
update. Then the saga: hold the amount and the fee in the ledger (one atomic
batch); ask the bank for the payout (`withdrawals.send_payout`: the bank is
asked for a payout with this reference before one is made, with the
request's key, so a lost answer, a retry or a worker killed anywhere makes
one payout); wait for the bank's word (signal `payout_update`, from its
webhooks), asking the bank when none comes for `outcome_poll_seconds`. Sent:
post both holds, count the usage paid, remember the destination. Failed:
void both holds and release the usage. A sent payout the bank returns later
(watched for `return_watch_seconds`) credits the principal back once, keyed
by the payout.

To a USDT-TRC20 address: a firm quote from the wallet's currency into USDT
first (`fx.quote`); the amount is held into the FX pool; custody is asked
for the send by reference before one is made (`withdrawals.send_usdt`); the
chain's finality posts the holds and then, at the quote, the conversion's
other legs (fx:pool:USDT pays custody, the spread and the rounding) in one
atomic batch; a send that fails voids the holds. A chain send is not
returned.

Compensations (newest first): void the holds, release the usage. They run
when a step fails for good or the process is cancelled before the payout
was asked for; once it was, the money may be on its way, so the rest is
shielded from cancellation and the bank's word decides.

An unknown outcome is never guessed: a payout whose status cannot be read
stays waiting, asking again, with its holds in place.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from activities.providers.quotes import QuoteActivities, QuoteRequest
    from activities.withdrawals import PayoutActivities, WithdrawalActivities
    from schemas import accounts
    from schemas.conversion import conversion_legs
    from schemas.customers import Notification
    from schemas.fx import FxQuote
    from schemas.ledger import HoldRequest, HoldResolution, TransferBatch, TransferRequest
    from schemas.money import Currency, Money
    from schemas.providers import BANK, TRON
    from schemas.refusals import Refusal, refused
    from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROVIDER
    from schemas.withdrawals import (
        ChainSendRequest,
        DestinationUse,
        PayoutRequest,
        PayoutUpdate,
        TronDestination,
        UsageChange,
        WithdrawalCheck,
        WithdrawalInput,
        WithdrawalOutcome,
        WithdrawalResult,
        WithdrawalReview,
        WithdrawalStatus,
    )
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished, ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for

WITHDRAWAL_WORKFLOW = "Withdrawal"
PAYOUT_UPDATE_SIGNAL = "payout_update"
REVIEW_UPDATE = "review"

STAGE_CHECKING = "checking"
STAGE_COOLING = "cooling: new destination"
STAGE_REVIEW = "in operator review"
STAGE_HOLDING = "holding the money"
STAGE_PAYING = "asking for the payout"
STAGE_WAITING = "waiting for the payout's outcome"
STAGE_SENT = "sent: watching for a return"
# The bank's statuses that end the wait for its word.
DECIDED = ("sent", "failed", "returned")


def withdrawal_workflow_id(request_id: str) -> str:
    return f"withdrawal/{request_id}"


def withdrawal_start_metadata(request: WithdrawalInput) -> StartMetadata:
    amount = Money(amount_minor=request.amount_minor, currency=request.currency)
    return start_metadata(
        f"Withdrawal of {amount} for customer {request.customer_id}",
        {
            "request": request.request_id,
            "customer": request.customer_id,
            "to": request.destination.describe(),
        },
        "the bank's or the chain's word on the payout (signal `payout_update`, from their"
        " webhooks); an operator's `review` update for a new destination above the threshold",
    )


def month_of(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"


@workflow.defn(name=WITHDRAWAL_WORKFLOW)
class Withdrawal:
    @workflow.init
    def __init__(self, request: WithdrawalInput) -> None:
        self._input = request
        self.progress = ProcessStage(STAGE_CHECKING, self._details)
        self._saga = Saga()
        self._fee_minor = request.policy.fee_minor(
            request.destination.rail, request.amount_minor, request.currency
        )
        self._quote: FxQuote | None = None
        self._outcome: WithdrawalOutcome | None = None
        self._reason: str | None = None
        self._new_destination = False
        self._cooling_until: datetime | None = None
        self._review: WithdrawalReview | None = None
        self._payout: PayoutUpdate | None = None
        # The latest word of the bank, by payout status (webhooks repeat and
        # reorder: a later status never goes back to an earlier one).
        self._word: PayoutUpdate | None = None
        self._asked_payout = False
        self._paid = False

    # ----- platform: outcome, saga --------------------------------------------

    @workflow.run
    async def run(self, request: WithdrawalInput) -> WithdrawalResult:
        self.progress.search(
            CUSTOMER_ID.value_set(request.customer_id),
            AMOUNT_MINOR.value_set(request.amount_minor),
            CURRENCY.value_set(request.currency.value),
            PROVIDER.value_set(TRON if self._on_chain() else BANK),
        )
        try:
            await self._withdraw(request)
            raise AssertionError("the withdrawal ended without an outcome")
        except Finished as finished:
            outcome: WithdrawalOutcome = finished.outcome
            reason = finished.reason
        except (Exception, asyncio.CancelledError) as error:
            if self._asked_payout:
                # The bank may be paying: the holds stay for an operator, who
                # sees the process failed with its error.
                self.progress.enter("failed")
                raise
            # Before the bank was asked: what was held is released. A
            # cancellation ends the withdrawal `cancelled`.
            await self._saga.compensate()
            if not is_cancellation(error):
                self.progress.enter("failed")
                raise
            outcome, reason = "cancelled", "cancelled before the bank was asked to pay"
        if outcome in ("rejected", "failed"):
            await self._saga.compensate()
        self._outcome, self._reason = outcome, reason
        self.progress.enter(outcome)
        await shielded(self._tell(outcome, reason))
        return WithdrawalResult(
            request_id=request.request_id,
            customer_id=request.customer_id,
            outcome=outcome,
            reason=reason,
            amount_minor=request.amount_minor,
            fee_minor=self._fee_minor,
            currency=request.currency,
            payout_id=self._payout.payout_id if self._payout else None,
        )

    # ----- business steps -----------------------------------------------------

    async def _withdraw(self, request: WithdrawalInput) -> None:
        # Registered first: a check a cancellation interrupts may still
        # reserve the month's usage, and releasing none is a no-op.
        self._saga.done(self._release_usage)
        checked = await step(
            request,
            WithdrawalActivities.check,
            WithdrawalCheck(
                request_id=request.request_id,
                customer_id=request.customer_id,
                amount_minor=request.amount_minor,
                currency=request.currency,
                fingerprint=request.destination.fingerprint,
                month=month_of(request.requested_at),
                policy=request.policy,
            ),
        )
        if checked.refused is not None:
            raise Finished("rejected", checked.refused)
        self._new_destination = checked.new_destination
        if checked.new_destination:
            await self._new_destination_wait(request)

        self.progress.enter(STAGE_HOLDING)
        wallet = accounts.wallet(request.customer_id, request.currency)
        fees = accounts.revenue_fees(request.currency)
        if self._on_chain():
            # The rate is fixed before anything is held: the holds are the
            # wallet's side of that quote.
            self._quote = await step(
                request,
                QuoteActivities.quote,
                QuoteRequest(
                    key=step_key("quote"),
                    sell_currency=request.currency,
                    buy_currency=Currency.USDT,
                    sell_amount_minor=request.amount_minor,
                ),
            )
            paid_into = accounts.fx_pool(request.currency)
            system = [
                paid_into,
                accounts.fx_pool(Currency.USDT),
                accounts.revenue_fx(Currency.USDT),
                accounts.fx_rounding(Currency.USDT),
                accounts.crypto_custody(),
                fees,
            ]
        else:
            paid_into = accounts.bank_outbound(request.currency)
            system = [paid_into, fees]
        await step(
            request,
            LedgerActivities.open_accounts,
            [accounts.system_account(code) for code in system],
        )
        expires_at = request.requested_at + timedelta(seconds=request.policy.hold_seconds)
        holds = [
            HoldRequest(
                key=step_key("hold/amount"),
                debit=wallet,
                credit=paid_into,
                amount_minor=request.amount_minor,
                currency=request.currency,
                expires_at=expires_at,
            )
        ]
        if self._fee_minor:
            holds.append(
                HoldRequest(
                    key=step_key("hold/fee"),
                    debit=wallet,
                    credit=fees,
                    amount_minor=self._fee_minor,
                    currency=request.currency,
                    expires_at=expires_at,
                )
            )
        batch = TransferBatch(items=list(holds))
        try:
            outcomes = await step(request, LedgerActivities.submit_batch, batch)
        except ActivityError as error:
            if is_cancellation(error):
                # The batch runs on and may commit: it is submitted again
                # (the same keys) to learn so, and what it held is released.
                self._saga.done(functools.partial(self._void_interrupted_holds, batch))
            raise
        refusal = next((o for o in outcomes if not o.accepted), None)
        if refusal is not None:
            raise Finished("rejected", f"the wallet cannot cover it: {refusal.detail}")
        self._saga.done(self._void_holds)

        # From here the bank may be paying: a cancellation no longer undoes it.
        self._asked_payout = True
        await shielded(self._pay(request))

    async def _new_destination_wait(self, request: WithdrawalInput) -> None:
        policy = request.policy
        threshold = policy.new_destination_review_minor.get(request.currency)
        destination = request.destination.describe()
        if threshold is not None and request.amount_minor > threshold:
            self.progress.enter(STAGE_REVIEW)
            if not await wait_for(lambda: self._review is not None, policy.review_wait_seconds):
                raise Finished("rejected", f"no review within {policy.review_wait_seconds}s")
            assert self._review is not None
            if self._review.decision == "reject":
                raise Finished(
                    "rejected", f"operator {self._review.operator}: {self._review.reason}"
                )
            return
        seconds = policy.new_destination_cooling_seconds
        if seconds == 0:
            return
        self._cooling_until = workflow.now() + timedelta(seconds=seconds)
        self.progress.enter(STAGE_COOLING)
        await self._notify(
            "new-destination",
            "A withdrawal to a new account",
            f"{self._money(request.amount_minor)} goes to your {destination} after a wait."
            " If this was not you, contact us now.",
        )
        await workflow.sleep(timedelta(seconds=seconds))

    async def _ask_payout(self, request: WithdrawalInput) -> PayoutUpdate:
        """The bank's payout or custody's send of this request: one, asked for
        by reference before it is made."""
        destination = request.destination
        if isinstance(destination, TronDestination):
            assert self._quote is not None
            return await step(
                request,
                PayoutActivities.send_usdt,
                ChainSendRequest(
                    key=step_key("payout"),
                    reference=request.request_id,
                    amount_minor=self._quote.buy_amount_minor,
                    address=destination.address,
                ),
            )
        return await step(
            request,
            PayoutActivities.send_payout,
            PayoutRequest(
                key=step_key("payout"),
                reference=request.request_id,
                amount_minor=request.amount_minor,
                currency=request.currency,
                iban=destination.iban,
                name=destination.name,
            ),
        )

    async def _pay(self, request: WithdrawalInput) -> None:
        self.progress.enter(STAGE_PAYING)
        payer = "custody" if self._on_chain() else "the bank"
        try:
            payout = await self._ask_payout(request)
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.non_retryable:
                # The payer refused the payout itself: nothing was sent.
                raise Finished("failed", f"{payer} refused the payout: {cause.message}") from None
            raise
        self._payout = payout
        self._heard(payout)
        word = await self._bank_decides(request, payout.payout_id)
        if word.status == "failed":
            raise Finished("failed", f"{payer} could not pay: {word.reason or 'no reason'}")
        await self._post_holds()
        if self._quote is not None:
            await self._convert(request, self._quote)
        await step(
            request,
            WithdrawalActivities.set_usage,
            UsageChange(request_id=request.request_id, status="paid"),
        )
        await step(
            request,
            WithdrawalActivities.remember_destination,
            DestinationUse(
                customer_id=request.customer_id,
                fingerprint=request.destination.fingerprint,
                request_id=request.request_id,
            ),
        )
        if self._on_chain():
            raise Finished("paid", "the chain finalized the send")
        self.progress.enter(STAGE_SENT)
        if word.status != "returned":
            await wait_for(self._returned, request.policy.return_watch_seconds)
        if self._returned():
            assert self._word is not None
            await self._credit_return(request)
            raise Finished("returned", f"the bank returned it: {self._word.reason or 'no reason'}")
        raise Finished("paid", "the bank sent the payout")

    async def _bank_decides(self, request: WithdrawalInput, payout_id: str) -> PayoutUpdate:
        """The bank's final word on the payout: its webhook, or its answer when
        asked after `outcome_poll_seconds` of silence. Never a guess."""
        self.progress.enter(STAGE_WAITING)
        while not await wait_for(self._decided, request.policy.outcome_poll_seconds):
            if self._on_chain():
                self._heard(await step(request, PayoutActivities.send_status, payout_id))
            else:
                self._heard(await step(request, PayoutActivities.payout_status, payout_id))
        assert self._word is not None
        return self._word

    async def _post_holds(self) -> None:
        request = self._input
        await step(
            request,
            LedgerActivities.resolve_hold,
            HoldResolution(
                key=step_key("post/amount"), hold_key=step_key("hold/amount"), action="post"
            ),
        )
        if self._fee_minor:
            await step(
                request,
                LedgerActivities.resolve_hold,
                HoldResolution(
                    key=step_key("post/fee"), hold_key=step_key("hold/fee"), action="post"
                ),
            )
        # Posted: nothing is to be undone any more.
        self._saga.clear()
        self._paid = True

    async def _convert(self, request: WithdrawalInput, quote: FxQuote) -> None:
        """The conversion's legs after the sale the holds posted: fx:pool:USDT
        pays custody what was sent, the spread and the rounding; one batch."""
        legs = conversion_legs(
            step_key("convert"),
            quote,
            debit=accounts.wallet(request.customer_id, request.currency),
            credit=accounts.crypto_custody(),
        )
        bought = [leg for leg in legs.transfers if not leg.key.endswith("/sell")]
        outcomes = await step(request, LedgerActivities.submit_batch, TransferBatch(items=bought))
        refusal = next((o for o in outcomes if not o.accepted), None)
        if refusal is not None:
            raise RuntimeError(f"the conversion's legs were refused: {refusal.detail}")

    async def _credit_return(self, request: WithdrawalInput) -> None:
        """The principal back into the wallet, once per payout (the fee stays)."""
        assert self._payout is not None
        await step(
            request,
            LedgerActivities.transfer,
            TransferRequest(
                key=f"{step_key('return')}/{self._payout.payout_id}",
                debit=accounts.bank_outbound(request.currency),
                credit=accounts.wallet(request.customer_id, request.currency),
                amount_minor=request.amount_minor,
                currency=request.currency,
            ),
        )

    # ----- compensations ------------------------------------------------------

    async def _void_holds(self) -> None:
        request = self._input
        for leg in ("amount", "fee") if self._fee_minor else ("amount",):
            await step(
                request,
                LedgerActivities.resolve_hold,
                HoldResolution(
                    key=step_key(f"void/{leg}"), hold_key=step_key(f"hold/{leg}"), action="void"
                ),
            )

    async def _void_interrupted_holds(self, batch: TransferBatch) -> None:
        outcomes = await step(self._input, LedgerActivities.submit_batch, batch)
        if all(outcome.accepted for outcome in outcomes):
            await self._void_holds()

    async def _release_usage(self) -> None:
        await step(
            self._input,
            WithdrawalActivities.set_usage,
            UsageChange(request_id=self._input.request_id, status="released"),
        )

    # ----- messages -----------------------------------------------------------

    @workflow.signal(name=PAYOUT_UPDATE_SIGNAL)
    def payout_update(self, update: PayoutUpdate) -> None:
        """The bank's webhook, late, twice or out of order: kept only if it is
        this payout's and further along than what is known."""
        if self._payout is not None and update.payout_id != self._payout.payout_id:
            return
        self._heard(update)

    @workflow.update(name=REVIEW_UPDATE)
    async def review(self, review: WithdrawalReview) -> str:
        self._review = review
        return f"{review.decision} recorded"

    @review.validator
    def _validate_review(self, review: WithdrawalReview) -> None:
        if self._outcome is not None:
            raise refused(Refusal.FINISHED, f"withdrawal already finished ({self._outcome})")
        if self.progress.stage != STAGE_REVIEW:
            raise refused(
                Refusal.WRONG_STATE, f"no review is pending (stage: {self.progress.stage})"
            )
        if self._review is not None:
            raise refused(Refusal.ALREADY_DONE, "this withdrawal was already reviewed")

    @workflow.query
    def status(self) -> WithdrawalStatus:
        request = self._input
        return WithdrawalStatus(
            request_id=request.request_id,
            customer_id=request.customer_id,
            stage=self.progress.stage,
            outcome=self._outcome,
            reason=self._reason,
            amount_minor=request.amount_minor,
            fee_minor=self._fee_minor,
            currency=request.currency,
            new_destination=self._new_destination,
            cooling_until=self._cooling_until,
            payout_id=self._payout.payout_id if self._payout else None,
            payout_status=self._word.status if self._word else None,
            paid=self._paid,
        )

    # ----- helpers ------------------------------------------------------------

    def _heard(self, update: PayoutUpdate) -> None:
        order = ("accepted", "sent", "failed", "returned")
        if self._word is None or order.index(update.status) > order.index(self._word.status):
            self._word = update

    def _on_chain(self) -> bool:
        return isinstance(self._input.destination, TronDestination)

    def _decided(self) -> bool:
        return self._word is not None and self._word.status in DECIDED

    def _returned(self) -> bool:
        return self._word is not None and self._word.status == "returned"

    def _money(self, amount_minor: int) -> str:
        return str(Money(amount_minor=amount_minor, currency=self._input.currency))

    def _details(self) -> str:
        request = self._input
        lines = [
            f"Withdrawal of {self._money(request.amount_minor)} (fee"
            f" {self._money(self._fee_minor)}): {self.progress.stage}"
        ]
        if self._payout is not None:
            known = self._word.status if self._word else "asked"
            lines.append(f"Payout {self._payout.payout_id}: {known}")
        if self._reason:
            lines.append(self._reason)
        return "\n".join(lines)

    async def _tell(self, outcome: WithdrawalOutcome, reason: str) -> None:
        """Tell the customer how it ended (best effort: the money is settled)."""
        amount = self._money(self._input.amount_minor)
        subjects = {
            "paid": (
                "Your withdrawal is on its way",
                f"{amount} was sent to your {self._input.destination.describe()}.",
            ),
            "returned": (
                "Your withdrawal came back",
                f"Your bank returned {amount}; it is back in your wallet. {reason}",
            ),
            "rejected": (
                "Your withdrawal was not made",
                f"{amount} stays in your wallet. {reason}",
            ),
            "failed": ("Your withdrawal failed", f"{amount} stays in your wallet. {reason}"),
            "cancelled": ("Your withdrawal was cancelled", f"{amount} stays in your wallet."),
        }
        subject, body = subjects[outcome]
        try:
            await self._notify(f"outcome-{outcome}", subject, body)
        except ActivityError as error:
            workflow.logger.warning("the customer was not told: %s", error)

    async def _notify(self, occasion: str, subject: str, body: str) -> None:
        request = self._input
        await step(
            request,
            ProviderActivities.notify_customer,
            Notification(
                key=step_key(f"notify/{occasion}"),
                customer_id=request.customer_id,
                subject=subject,
                body=body,
            ),
        )
