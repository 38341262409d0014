"""The top-up's steps (workflows/topup.py runs them): matching the payer
to a customer, the limits and the day's usage, an operator's review, a firm
FX quote, the credit and its fee as one atomic batch, the collection of a
recorded debt and the receipt; the undo each step registers on the saga; the
top-up's stages, details and result.

Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import TypeVar, get_args

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LedgerActivities
    from activities.providers.quotes import QuoteActivities, QuoteRequest
    from activities.topups import TopupActivities, TopupReceiptActivities
    from schemas import accounts
    from schemas.bank import InboundTransfer
    from schemas.disputes import customer_debt
    from schemas.fx import FxQuote
    from schemas.ledger import TransferBatch, TransferRequest
    from schemas.money import Currency
    from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID
    from schemas.topup import (
        CustomerMatchRequest,
        PendingReview,
        ReceiptRequest,
        ReviewKind,
        TopupInput,
        TopupOutcome,
        TopupResult,
        TopupReview,
        UsageDecision,
        UsageReservation,
        UsageStatus,
        UsageStatusChange,
        describe,
    )
    from schemas.tron import Deposit
    from workflows.process import Finished, ProcessStage, Saga
    from workflows.steps import step, step_key, wait_for


T = TypeVar("T")

STAGE_TRANSFER = "waiting for the transfer"
STAGE_DEPOSIT = "waiting for the deposit"
STAGE_REVIEW = "in operator review"
STAGE_CONFIRMATIONS = "waiting for confirmations"
STAGE_CREDITED = "credited"
# The stages that are their own ProcessStatus: the waits on the outside and
# the ends (the outcomes, spelled with spaces).
SEARCHABLE_STAGES = frozenset(
    {
        STAGE_TRANSFER,
        STAGE_DEPOSIT,
        STAGE_CONFIRMATIONS,
        STAGE_REVIEW,
        "cancelled",
        "failed",
        *(outcome.replace("_", " ") for outcome in get_args(TopupOutcome)),
    }
)
# ProcessStatus while the process runs its own steps: the money's state, not
# each step (those are in the details and the status query).
STATUS_PROCESSING = "processing"
# Top-ups started before debt collection existed replay without it.
TOPUP_DEBT_COLLECTION_PATCH = "topup-collects-debt"


class TopupSteps:
    """The top-up's state and steps; Topup, the workflow, runs them."""

    def __init__(self, request: TopupInput) -> None:
        # Set before any handler runs: the start signal is handled in the same
        # workflow task as the start, before run() begins.
        self._input = request
        # Batched: the attributes are upserted when the process next waits on
        # the outside (a provider, an operator, the chain) or ends, so a stage
        # passed through in between never reaches the history (the details and
        # the status query show every stage).
        self.progress = ProcessStage("starting", self._details, status=self._status, batched=True)
        self._transfer: InboundTransfer | None = None
        self._deposit: Deposit | None = None
        self._amount_minor: int | None = None
        self._currency: Currency | None = None
        self._customer_id: str | None = None
        self._day: date | None = None
        self._pending: PendingReview | None = None
        self._review: TopupReview | None = None
        self._reviewed_by: str | None = None
        self._credit: list[TransferRequest] = []
        self._credited_minor = 0
        self._fee_minor = 0
        self._debt_collected_minor = 0
        self._debt_collection: list[TransferRequest] = []
        # The customer's debt as the match read it (0: nothing to collect).
        self._debt_outstanding_minor = 0
        self._wallet_currency: Currency | None = None
        self._quote: FxQuote | None = None
        self._quotes_taken = 0
        self._usage_reserved = False
        self._missing_accounts: list[str] = []
        self._reversal_failed = False
        self._compensation = ""
        self._outcome: TopupOutcome | None = None
        self._saga = Saga()
        # The step whose activity is awaited, run again to learn its outcome
        # (and register its undo) when a cancellation interrupts it.
        self._interrupted: Callable[[], Awaitable[object]] | None = None

    async def _interruptible(self, action: Callable[[], Awaitable[T]]) -> T:
        """Await `action`; a cancellation while it runs leaves it to run again (_learn)."""
        self._interrupted = action
        result = await action()
        self._interrupted = None
        return result

    # ----- steps ---------------------------------------------------------

    async def _match(self, reference: str, currency: Currency, system: list[str]) -> str:
        """The customer the money belongs to, by match or by an operator; the
        match also says which of the credit's system accounts are not open yet."""
        self.progress.enter("matching the customer")
        match = await step(
            self._input,
            TopupActivities.match_customer,
            CustomerMatchRequest(
                reference=reference[:200], currency=currency, system_accounts=system
            ),
        )
        self._missing_accounts = match.missing_accounts
        self._debt_outstanding_minor = match.debt_outstanding_minor
        customer_id = match.customer_id
        if customer_id is None:
            review = await self._await_review("unmatched", f"unmatched: {match.reason}")
            customer_id = review.customer_id
            assert customer_id is not None  # the validator and handler insist on it
        self._customer_id = customer_id
        self.progress.search(CUSTOMER_ID.value_set(customer_id))
        return customer_id

    async def _check_limits(self, customer_id: str, amount: int, currency: Currency) -> None:
        self.progress.enter("checking limits")
        limits = self._input.policy.limits.get(currency)
        money = describe(amount, currency)
        over: str | None = None
        if limits is None:
            over = f"no top-up limits are set for {currency.value}"
        elif amount < limits.min_minor:
            over = f"{money} is below the minimum of {describe(limits.min_minor, currency)}"
        elif amount > limits.max_minor:
            over = f"{money} is above the maximum of {describe(limits.max_minor, currency)}"
        else:
            decision = await self._interruptible(
                lambda: self._reserve(customer_id, amount, currency, limits.daily_max_minor)
            )
            if not decision.reserved:
                over = decision.over or (
                    f"{money} would take today's top-ups to "
                    f"{describe(decision.used_minor + amount, currency)}, over the daily limit "
                    f"of {describe(decision.daily_max_minor, currency)}"
                )
        if over is not None:
            await self._await_review("limit", over)
            daily_max = limits.daily_max_minor if limits else 0
            await self._interruptible(
                lambda: self._reserve(customer_id, amount, currency, daily_max, force=True)
            )

    async def _reserve(
        self,
        customer_id: str,
        amount: int,
        currency: Currency,
        daily_max_minor: int,
        *,
        force: bool = False,
    ) -> UsageDecision:
        if self._day is None:
            self._day = workflow.now().date()
        decision = await step(
            self._input,
            TopupActivities.reserve_usage,
            UsageReservation(
                topup_id=workflow.info().workflow_id,
                customer_id=customer_id,
                currency=currency,
                amount_minor=amount,
                day=self._day,
                daily_max_minor=daily_max_minor,
                force=force,
                tier_limits=self._input.policy.tier_limits,
            ),
        )
        if decision.reserved and not self._usage_reserved:
            self._usage_reserved = True
            self._saga.done(self._release_usage)
        return decision

    async def _await_review(self, kind: ReviewKind, reason: str) -> TopupReview:
        """An operator's approval; a rejection or no review in time finishes."""
        self._pending = PendingReview(kind=kind, reason=reason)
        self._review = None
        wait_seconds = self._input.policy.review_wait_seconds
        reviewed = await self._wait(STAGE_REVIEW, lambda: self._review is not None, wait_seconds)
        self._pending = None
        if not reviewed or self._review is None:
            raise Finished("expired", f"no review within {wait_seconds}s ({reason})")
        review = self._review
        self._reviewed_by = review.operator
        if review.decision == "reject":
            raise Finished("rejected", f"operator {review.operator}: {review.reason} ({reason})")
        return review

    async def _firm_quote(self, amount: int, currency: Currency) -> FxQuote:
        """A quote with enough life left to post at; expiring ones are replaced."""
        policy = self._input.policy
        for attempt in range(1, policy.quote_attempts_max + 1):
            self.progress.enter("quoting")
            self._quotes_taken = attempt
            self.progress.flush()
            quote = await step(
                self._input,
                QuoteActivities.quote,
                QuoteRequest(
                    key=step_key(f"quote/{attempt}"),
                    sell_currency=Currency.USDT,
                    buy_currency=currency,
                    sell_amount_minor=amount,
                ),
            )
            self._quote = quote
            remaining = quote.expires_at - workflow.now()
            if remaining >= timedelta(seconds=policy.quote_remaining_seconds_min):
                return quote
            if attempt < policy.quote_attempts_max and policy.requote_delay_seconds:
                self.progress.flush()
                await workflow.sleep(policy.requote_delay_seconds)
        raise ApplicationError(
            f"no FX quote lived {policy.quote_remaining_seconds_min}s in "
            f"{policy.quote_attempts_max} attempts; nothing was credited",
            type="NoFirmQuote",
            non_retryable=True,
        )

    def _fee_leg(
        self, wallet: str, fees: str, fee: int, currency: Currency
    ) -> list[TransferRequest]:
        if fee <= 0:
            return []
        return [
            TransferRequest(
                key=step_key("credit/fee"),
                debit=wallet,
                credit=fees,
                amount_minor=fee,
                currency=currency,
            )
        ]

    async def _post_credit(
        self, items: list[TransferRequest], credited: int, fee: int, currency: Currency
    ) -> None:
        """The credit and its fee, all or nothing."""
        self.progress.enter("crediting")
        outcomes = await step(
            self._input, LedgerActivities.submit_batch, TransferBatch(items=items)
        )
        refused = [outcome for outcome in outcomes if not outcome.accepted]
        if refused:
            first = refused[0]
            raise ApplicationError(
                f"the ledger refused the credit: {first.rejection} {first.detail}".strip(),
                type="CreditRefused",
                non_retryable=True,
            )
        self._credit = items
        self._credited_minor, self._fee_minor, self._wallet_currency = credited, fee, currency
        self._saga.done(self._reverse_credit)

    async def _collect_debt(self, customer_id: str, currency: Currency) -> None:
        """Recover the customer's recorded debt in `currency` (a lost dispute's
        shortfall) from this credit: min(debt, credit net of fee), wallet ->
        debt account. The match read the debt, so a customer without any pays
        nothing more here. The debt account's credits may never exceed its
        debits, so two top-ups collecting at once cannot over-collect: the
        ledger rejects the later one, which re-reads and collects what is left."""
        if self._debt_outstanding_minor <= 0:
            return
        if not workflow.patched(TOPUP_DEBT_COLLECTION_PATCH):
            return
        self.progress.enter("collecting debt")
        debt, source = customer_debt(customer_id, currency), accounts.wallet(customer_id, currency)
        net = self._credited_minor - self._fee_minor
        assert net >= 0  # the fee never exceeds the credit (TopupFee.fee_minor)
        outstanding = self._debt_outstanding_minor
        for attempt in range(1, self._input.policy.debt_collection_attempts_max + 1):
            amount = min(outstanding, net)
            if amount > 0 and attempt > 1:
                # A card payment may have spent part of the credit since.
                held = await step(self._input, LedgerActivities.balance, source)
                amount = min(amount, held.available)
            if amount <= 0:
                return
            collection = TransferRequest(
                key=step_key(f"debt/collect/{attempt}"),
                debit=source,
                credit=debt,
                amount_minor=amount,
                currency=currency,
            )
            if await self._interruptible(functools.partial(self._collect, collection)):
                return
            # Another top-up collected first, or the wallet was spent: read again.
            owed = await step(self._input, LedgerActivities.balance, debt)
            outstanding = owed.debits_posted - owed.credits_posted - owed.credits_pending
        # The credit stands either way; what was not collected stays outstanding.
        workflow.logger.warning("the debt on %s was not collected", debt)

    async def _collect(self, collection: TransferRequest) -> bool:
        """Post one debt collection; True (its undo registered) if the ledger took it."""
        outcomes = await step(
            self._input, LedgerActivities.submit_batch, TransferBatch(items=[collection])
        )
        if not outcomes[0].accepted:
            workflow.logger.info("debt collection %s refused: %s", collection.key, outcomes[0])
            return False
        self._debt_collection = [collection]
        self._debt_collected_minor = collection.amount_minor
        self._saga.done(self._reverse_debt_collection)
        self.progress.show()
        return True

    async def _after_credit(self, customer_id: str, currency: Currency) -> None:
        """Record the usage as credited and send the receipt, side by side."""
        self.progress.enter("sending the receipt")
        usage = asyncio.ensure_future(self._set_usage_status("credited"))
        net = describe(self._credited_minor - self._fee_minor, currency)
        fee = describe(self._fee_minor, currency)
        body = f"We credited {net} to your {currency.value} wallet (fee {fee})."
        if self._debt_collected_minor:
            collected = describe(self._debt_collected_minor, currency)
            body += f" {collected} of it repaid what you owed us."
        try:
            self.progress.flush()
            await step(
                self._input,
                TopupReceiptActivities.send_receipt,
                ReceiptRequest(
                    key=step_key("notify/credited"),
                    customer_id=customer_id,
                    subject=f"Your top-up of {net} is in your wallet",
                    body=body,
                    attempts_max=self._input.policy.receipt_attempts_max,
                ),
            )
        finally:
            # A failed receipt is compensated only once the usage is recorded,
            # so its release cannot be overtaken by the "credited" mark.
            await usage

    # ----- compensations ------------------------------------------------

    async def _reverse_credit(self) -> None:
        """Reverse every leg of the credit (fee first), as one atomic batch."""
        reversals = [
            TransferRequest(
                key=f"{leg.key}/reversal",
                debit=leg.credit,
                credit=leg.debit,
                amount_minor=leg.amount_minor,
                currency=leg.currency,
            )
            for leg in reversed(self._credit)
        ]
        self.progress.enter("reversing the credit")
        outcomes = await step(
            self._input, LedgerActivities.submit_batch, TransferBatch(items=reversals)
        )
        refused = [outcome for outcome in outcomes if not outcome.accepted]
        currency = self._wallet_currency
        assert currency is not None and self._customer_id is not None
        net = describe(self._credited_minor - self._fee_minor, currency)
        wallet = accounts.wallet(self._customer_id, currency)
        if refused:
            self._reversal_failed = True
            self._compensation = (
                f"NOT reversed: {wallet} no longer holds the {net} credited "
                f"({refused[0].rejection}); an operator must recover it"
            )
        else:
            self._compensation = (
                f"credit of {describe(self._credited_minor, currency)} and fee of "
                f"{describe(self._fee_minor, currency)} reversed"
            )

    async def _reverse_debt_collection(self) -> None:
        """Give the collected amount back to the wallet (the debt stands again),
        so the credit's own reversal finds the money where it put it."""
        self.progress.enter("reversing the debt collection")
        reversals = [
            TransferRequest(
                key=f"{leg.key}/reversal",
                debit=leg.credit,
                credit=leg.debit,
                amount_minor=leg.amount_minor,
                currency=leg.currency,
            )
            for leg in self._debt_collection
        ]
        outcomes = await step(
            self._input, LedgerActivities.submit_batch, TransferBatch(items=reversals)
        )
        # Debiting the debt account and crediting the wallet have no limit to hit.
        if all(outcome.accepted for outcome in outcomes):
            self._debt_collected_minor = 0

    async def _release_usage(self) -> None:
        # Money the reversal could not take back still counts as credited.
        if not self._reversal_failed:
            await self._set_usage_status("released")

    async def _set_usage_status(self, status: UsageStatus) -> None:
        change = UsageStatusChange(topup_id=workflow.info().workflow_id, status=status)
        await step(self._input, TopupActivities.set_usage_status, change)

    # ----- helpers --------------------------------------------------------

    def _credit_currency(self) -> Currency:
        if self._input.source == "usdt":
            return self._input.wallet_currency
        assert self._currency is not None
        return self._currency

    def _received(self, amount_minor: int, currency: Currency) -> None:
        self._amount_minor, self._currency = amount_minor, currency
        self.progress.search(
            AMOUNT_MINOR.value_set(amount_minor), CURRENCY.value_set(currency.value)
        )

    async def _open_missing_accounts(self) -> None:
        """Open the system accounts the match found missing (the first credit of
        a currency); idempotent, so a race with another top-up is harmless."""
        if self._missing_accounts:
            await step(
                self._input,
                LedgerActivities.open_accounts,
                [accounts.system_account(code) for code in self._missing_accounts],
            )

    def _result(self, outcome: TopupOutcome, reason: str) -> TopupResult:
        request = self._input
        return TopupResult(
            workflow_id=workflow.info().workflow_id,
            source=request.source,
            external_ref=request.external_ref,
            outcome=outcome,
            reason=reason,
            customer_id=self._customer_id,
            amount_minor=self._amount_minor or 0,
            currency=self._currency,
            credited_minor=self._credited_minor,
            fee_minor=self._fee_minor,
            debt_collected_minor=self._debt_collected_minor,
            wallet_currency=self._wallet_currency,
            quote_id=self._quote.id if self._quote else None,
            quotes_taken=self._quotes_taken,
            reviewed_by=self._reviewed_by,
            compensation=self._compensation,
        )

    def _details(self) -> str:
        request = self._input
        details = f"Top-up {request.source} {request.external_ref}: {self.progress.stage}"
        if self._amount_minor is not None and self._currency is not None:
            details += f" | {describe(self._amount_minor, self._currency)}"
        if self._customer_id:
            details += f" for {self._customer_id}"
        if self._deposit is not None and self._outcome is None:
            details += (
                f" | deposit {self._deposit.status}, {self._deposit.confirmations}/"
                f"{request.policy.confirmations_required} confirmations"
            )
        if self._pending is not None:
            details += f" | review: {self._pending.reason}"
        if self._credited_minor and self._wallet_currency is not None:
            details += (
                f" | credited {describe(self._credited_minor, self._wallet_currency)}, fee "
                f"{describe(self._fee_minor, self._wallet_currency)}"
            )
        if self._debt_collected_minor and self._wallet_currency is not None:
            collected = describe(self._debt_collected_minor, self._wallet_currency)
            details += f", debt collected {collected}"
        if self._compensation:
            details += f" | {self._compensation}"
        return details

    def _status(self, stage: str) -> str:
        """A searchable stage (a wait or an outcome) is the ProcessStatus; any
        other is "processing" until the credit is posted and "credited" after."""
        if stage in SEARCHABLE_STAGES:
            return stage
        return STAGE_CREDITED if self._credit else STATUS_PROCESSING

    async def _wait(self, stage: str, condition: Callable[[], bool], seconds: int) -> bool:
        """Wait in `stage` until `condition` (False after `seconds`)."""
        if condition():
            return True
        self.progress.enter(stage)
        self.progress.flush()
        return await wait_for(condition, seconds)
