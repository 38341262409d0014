"""The FX conversion's steps (workflows/fx.py runs them): the customer's
and the amount's checks, the firm quote, the conversion posted as one atomic
batch and the completion notice; the conversion's stages (ProcessStatus),
its outcome, the refusal that answers a confirm or cancel after it, and its
details.

Deterministic: for use inside the workflow only.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.customers import CustomerActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from activities.providers.http import NON_RETRYABLE_ERROR_TYPES
    from activities.providers.quotes import QuoteActivities, QuoteRequest
    from schemas import accounts
    from schemas.conversion import ConversionLegs, conversion_accounts, conversion_legs
    from schemas.customers import KycStatus, Notification
    from schemas.fx import (
        FxConversionInput,
        FxConversionResult,
        FxCurrencyTerms,
        FxOutcome,
        FxQuote,
        FxQuoteOffer,
        conversion_fee_minor,
    )
    from schemas.ledger import AccountSpec, Rejection, TransferBatch, TransferRequest
    from schemas.money import Money
    from schemas.refusals import Refusal
    from schemas.search import AMOUNT_MINOR
    from workflows.process import Finished, ProcessStage
    from workflows.steps import step, step_key, wait_for

# Stages (also the ProcessStatus search attribute); the outcomes are FxOutcome.
STAGE_STARTING = "starting"
STAGE_CHECKING = "checking the customer"
STAGE_QUOTING = "quoting"
STAGE_AWAITING = "awaiting confirmation"
STAGE_CONVERTING = "converting"
STAGE_NOTIFYING = "notifying"
STAGE_FAILED = "failed"
# A cancellation while the completion notice is sent stops that wait only and
# the conversion ends converted; runs recorded before it ended cancelled there.
NOTICE_CANCELLATION_PATCH = "fx-cancellation-after-posting-keeps-converted"


class FxSteps:
    """The conversion's state and steps; FxConversion, the workflow, runs them."""

    def __init__(self, request: FxConversionInput) -> None:
        # Set before any handler or query runs.
        self._input: FxConversionInput | None = request
        self.progress = ProcessStage(STAGE_STARTING, self._details)
        self._quote: FxQuote | None = None
        self._offer: FxQuoteOffer | None = None
        self._fee_minor: int | None = None
        self._expires_at: datetime | None = None
        self._confirmed = False
        self._cancel_requested = False
        self._result: FxConversionResult | None = None
        # Set when the process fails or is cancelled without an outcome.
        self._failure: str | None = None
        # Why the ledger declined the conversion, once it did.
        self._declined_as: Refusal | None = None

    # ----- steps -----------------------------------------------------------

    async def _check_customer(self, request: FxConversionInput) -> FxCurrencyTerms:
        self.progress.enter(STAGE_CHECKING)
        terms = request.policy.terms.get(request.sell_currency)
        if terms is None:
            raise Finished(
                FxOutcome.REFUSED, f"selling {request.sell_currency.value} is not offered"
            )
        if request.sell_amount_minor is not None:
            self._check_limits(request.sell_amount_minor, request, terms)
        kyc = await step(request, CustomerActivities.get_kyc_status, request.customer_id)
        if kyc is not KycStatus.APPROVED:
            raise Finished(
                FxOutcome.REFUSED,
                f"customer {request.customer_id} cannot convert: onboarding is "
                f"{kyc.value if kyc else 'not started'}",
            )
        sell_wallet = accounts.wallet(request.customer_id, request.sell_currency)
        try:
            await step(request, LedgerActivities.balance, sell_wallet)
        except ActivityError as error:
            if _error_type(error) == "AccountNotFound":
                raise Finished(
                    FxOutcome.REFUSED,
                    f"customer {request.customer_id} has no {request.sell_currency.value} wallet",
                ) from None
            raise
        return terms

    def _check_limits(
        self, sell_amount_minor: int, request: FxConversionInput, terms: FxCurrencyTerms
    ) -> None:
        currency = request.sell_currency
        if sell_amount_minor < terms.sell_amount_min_minor:
            raise Finished(
                FxOutcome.REFUSED,
                f"sell amount {Money(amount_minor=sell_amount_minor, currency=currency)} is"
                " below the minimum"
                f" {Money(amount_minor=terms.sell_amount_min_minor, currency=currency)}",
            )
        if sell_amount_minor > terms.sell_amount_max_minor:
            raise Finished(
                FxOutcome.REFUSED,
                f"sell amount {Money(amount_minor=sell_amount_minor, currency=currency)} is"
                " above the maximum"
                f" {Money(amount_minor=terms.sell_amount_max_minor, currency=currency)}",
            )

    async def _get_quote(self, request: FxConversionInput, terms: FxCurrencyTerms) -> FxQuote:
        self.progress.enter(STAGE_QUOTING)
        asking = asyncio.ensure_future(
            step(
                request,
                QuoteActivities.quote,
                QuoteRequest(
                    key=step_key("quote"),
                    sell_currency=request.sell_currency,
                    buy_currency=request.buy_currency,
                    sell_amount_minor=request.sell_amount_minor,
                    buy_amount_minor=request.buy_amount_minor,
                ),
            )
        )
        seconds = request.policy.quote_wait_seconds
        if not await wait_for(asking.done, seconds):
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError, ActivityError):
                await asking
            raise Finished(FxOutcome.FAILED, f"the rate source gave no quote within {seconds}s")
        try:
            quote = asking.result()
        except ActivityError as error:
            if _error_type(error) in NON_RETRYABLE_ERROR_TYPES:
                raise Finished(
                    FxOutcome.REFUSED, f"the rate source refused the quote: {_message(error)}"
                ) from None
            raise
        self._check_quote_matches(request, quote)
        self._quote = quote
        self.progress.search(AMOUNT_MINOR.value_set(quote.sell_amount_minor))
        self._check_limits(quote.sell_amount_minor, request, terms)
        self._fee_minor = conversion_fee_minor(
            quote.sell_amount_minor, terms, request.policy.fee_bps
        )
        self._expires_at = min(
            quote.expires_at,
            workflow.now() + timedelta(seconds=request.policy.confirm_wait_seconds_max),
        )
        self._offer = FxQuoteOffer(
            request_id=request.request_id,
            quote=quote,
            fee_minor=self._fee_minor,
            total_debit_minor=quote.sell_amount_minor + self._fee_minor,
            expires_at=self._expires_at,
        )
        return quote

    def _check_quote_matches(self, request: FxConversionInput, quote: FxQuote) -> None:
        # A quote for another pair or amount would convert what nobody asked for.
        fixed = (
            quote.sell_amount_minor == request.sell_amount_minor
            if request.sell_amount_minor is not None
            else quote.buy_amount_minor == request.buy_amount_minor
        )
        if (
            quote.sell_currency is not request.sell_currency
            or quote.buy_currency is not request.buy_currency
            or quote.fixed_side is not request.fixed_side
            or not fixed
        ):
            raise ApplicationError(
                f"the rate source quoted {quote.model_dump_json()} for another request",
                type="FxQuoteMismatch",
                non_retryable=True,
            )

    async def _post(self, request: FxConversionInput, quote: FxQuote) -> ConversionLegs:
        self.progress.enter(STAGE_CONVERTING)
        sell_wallet = accounts.wallet(request.customer_id, quote.sell_currency)
        buy_wallet = accounts.wallet(request.customer_id, quote.buy_currency)
        fees = accounts.revenue_fees(quote.sell_currency)
        # The buy wallet with onboarding's spec (a no-op if it is open), and the
        # system accounts the batch touches.
        await step(
            request,
            LedgerActivities.open_accounts,
            [
                AccountSpec(
                    code=buy_wallet,
                    currency=quote.buy_currency,
                    kind="wallet",
                    owner_id=request.customer_id,
                    debits_must_not_exceed_credits=True,
                ),
                *(accounts.system_account(code) for code in (*conversion_accounts(quote), fees)),
            ],
        )
        key = step_key("conversion")
        legs = conversion_legs(key, quote, debit=sell_wallet, credit=buy_wallet)
        items = list(legs.transfers)
        if self._fee_minor:
            items.append(
                TransferRequest(
                    key=f"{key}/fee",
                    debit=sell_wallet,
                    credit=fees,
                    amount_minor=self._fee_minor,
                    currency=quote.sell_currency,
                )
            )
        outcomes = await step(
            request, LedgerActivities.submit_batch, TransferBatch(items=items, atomic=True)
        )
        rejected = next((outcome for outcome in outcomes if not outcome.accepted), None)
        if rejected is not None:
            assert rejected.rejection is not None
            # Atomic: every item carries the one reason and none was posted.
            assert not any(outcome.accepted for outcome in outcomes)
            self._declined_as = (
                Refusal.INSUFFICIENT_FUNDS
                if rejected.rejection is Rejection.INSUFFICIENT_FUNDS
                else Refusal.DECLINED
            )
            raise Finished(
                FxOutcome.DECLINED,
                f"declined: {rejected.rejection.value.replace('_', ' ')} ({rejected.detail})",
            )
        return legs

    async def _notify_converted(
        self, request: FxConversionInput, result: FxConversionResult
    ) -> bool:
        """Tell the customer; True when sent. Never raises: the conversion stands."""
        self.progress.enter(STAGE_NOTIFYING)
        sell, buy = result.sell_currency, result.buy_currency
        sending = asyncio.ensure_future(
            step(
                request,
                ProviderActivities.notify_customer,
                Notification(
                    key=step_key("notify/converted"),
                    customer_id=request.customer_id,
                    subject=f"You converted {sell.value} to {buy.value}",
                    body=(
                        "You sold"
                        f" {Money(amount_minor=result.sold_amount_minor, currency=sell)}"
                        f" (fee {Money(amount_minor=result.fee_minor, currency=sell)}) and"
                        f" received {Money(amount_minor=result.bought_amount_minor, currency=buy)}"
                        f" at {result.rate} {buy.value} per {sell.value}."
                    ),
                ),
            )
        )
        try:
            sent = await wait_for(sending.done, request.policy.notification_wait_seconds)
        except asyncio.CancelledError:
            if not workflow.patched(NOTICE_CANCELLATION_PATCH):
                raise
            # The money moved: a cancellation now only ends the wait for the notice.
            sent = False
        if not sent:
            sending.cancel()
        try:
            await sending
        except (ActivityError, asyncio.CancelledError):
            workflow.logger.warning("the conversion notice was not sent; the conversion stands")
            return False
        return True

    # ----- helpers --------------------------------------------------------

    def _decided(self) -> bool:
        return self._confirmed or self._cancel_requested

    def _ended_without_offer(self) -> bool:
        return self._failure is not None or (self._result is not None and self._offer is None)

    def _end_refusal(self) -> Refusal:
        """The code a request refused because the process ended is answered."""
        if self._result is None:
            return (
                Refusal.CANCELLED
                if self.progress.stage == FxOutcome.CANCELLED.value
                else Refusal.FINISHED
            )
        return self._result.refusal()

    def _end_reason(self) -> str:
        """How the process ended, starting with the outcome's word."""
        if self._result is not None:
            return self._result.summary()
        return self._failure or self.progress.stage

    def _conclude(
        self, outcome: FxOutcome, reason: str, legs: ConversionLegs | None = None
    ) -> FxConversionResult:
        request = self._input
        assert request is not None
        quote = self._quote
        converted = outcome is FxOutcome.CONVERTED
        assert not converted or (quote is not None and legs is not None)
        result = FxConversionResult(
            request_id=request.request_id,
            customer_id=request.customer_id,
            outcome=outcome,
            reason=reason,
            sell_currency=request.sell_currency,
            buy_currency=request.buy_currency,
            quote_id=quote.id if quote else None,
            rate=quote.rate if quote else None,
            mid_rate=quote.mid_rate if quote else None,
            spread_bps=quote.spread_bps if quote else None,
            sold_amount_minor=quote.sell_amount_minor if quote and converted else 0,
            bought_amount_minor=quote.buy_amount_minor if quote and converted else 0,
            fee_minor=(self._fee_minor or 0) if converted else 0,
            spread_minor=legs.spread_minor if legs else 0,
            rounding_minor=legs.rounding_minor if legs else 0,
            expires_at=self._expires_at,
            declined_as=self._declined_as if outcome is FxOutcome.DECLINED else None,
        )
        self._result = result
        if not converted:
            self.progress.enter(outcome.value)
        return result

    def _details(self) -> str:
        request = self._input
        assert request is not None
        details = (
            f"FX {request.sell_currency.value} -> {request.buy_currency.value}"
            f" for {request.customer_id}: {self.progress.stage}"
        )
        quote = self._quote
        if quote is not None:
            sell = Money(amount_minor=quote.sell_amount_minor, currency=quote.sell_currency)
            buy = Money(amount_minor=quote.buy_amount_minor, currency=quote.buy_currency)
            fee = Money(amount_minor=self._fee_minor or 0, currency=quote.sell_currency)
            details += f" | quote {quote.id}: sell {sell} (fee {fee}) buy {buy} at {quote.rate}"
        if self._expires_at is not None:
            details += f" | expires {self._expires_at.isoformat()}"
        if self._result is not None and self._result.outcome is not FxOutcome.CONVERTED:
            details += f" | {self._result.reason}"
        return details


def _error_type(error: ActivityError) -> str | None:
    cause = error.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def _message(error: ActivityError) -> str:
    cause = error.cause
    return cause.message if isinstance(cause, ApplicationError) else str(error)
