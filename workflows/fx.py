"""FX conversion `fx/{request_id}`: a firm quote, the customer's confirm, one
atomic ledger batch.

Steps: refuse a customer whose onboarding is not approved or who has no wallet
in the sell currency, and an amount outside the policy; ask the rate source for
a firm quote fixing the sell or the buy amount (`fx.quote`, retried through
5xx and 429, bounded by the policy); offer it with the fee (update
`wait_quote` answers the offer) and wait for the `confirm` update until the
quote expires (its expires_at, or the policy's maximum wait, whichever comes
first). A confirm after that is refused by the validator with the reason; the
process ends `expired` and stays open `late_confirm_window_seconds` so late
confirms get that answer. `cancel` ends it `cancelled`. Nothing is posted on
any of these paths, nor when the process is cancelled before the confirm,
wherever the cancellation reaches it (a wait, or a ledger or rate-source call
in flight): it ends `cancelled`, never `failed`.

On confirm: ONE atomic batch (`ledger.submit_batch`): the customer's sell
wallet pays fx:pool:{sell} and the fee to revenue:fees:{sell}; fx:pool:{buy}
pays the buy wallet, the spread to revenue:fx:{buy} and the rounding remainder
to fx:rounding:{buy} (schemas/conversion.py). The buy wallet is opened if the
customer has none yet. A rejected batch (insufficient funds, a closed wallet)
posts nothing: the confirm update fails with "declined: ..." and the process
ends `declined`.

Compensations: there are none to register. The batch is all-or-nothing and is
the last step that can change money; the quote needs no undo (it lapses at
the rate source). Once confirmed, the posting is shielded from cancellation:
the customer was promised the conversion, so a cancellation that arrives
during it is recorded and the conversion completes. The completion notice
after it is best-effort: a failure (or no answer within the policy, or a
cancellation arriving while it is sent) is recorded as `notified=False`,
never undoing the conversion, which ends `converted`.

Duplicate confirms are idempotent: every confirm accepted before the outcome
(or after a conversion) answers the same result, and the batch is keyed by
this workflow's step key, so it posts once. Confirms after any other outcome
are refused with that outcome's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate
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
        FxQuoteStatus,
        FxStatus,
        conversion_fee_minor,
    )
    from schemas.ledger import (
        AccountSpec,
        Rejection,
        TransferBatch,
        TransferRequest,
    )
    from schemas.money import Money
    from schemas.providers import FX
    from schemas.refusals import Refusal, refused
    from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished, ProcessStage
    from workflows.steps import step, step_key, wait_for

FX_WORKFLOW = "FxConversion"
WAIT_QUOTE_UPDATE = "wait_quote"
CONFIRM_UPDATE = "confirm"
CANCEL_UPDATE = "cancel"
# The update ids the client functions send: a repeat with the same id gets
# Temporal's stored answer for the first, so a retried confirm never races.
CONFIRM_UPDATE_ID = "confirm"
CANCEL_UPDATE_ID = "cancel"

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


def fx_workflow_id(request_id: str) -> str:
    return f"fx/{request_id}"


def fx_start_metadata(request: FxConversionInput) -> StartMetadata:
    if request.sell_amount_minor is not None:
        sold = Money(amount_minor=request.sell_amount_minor, currency=request.sell_currency)
        amount = f"sell {sold}"
    else:
        bought = Money(amount_minor=request.buy_amount_minor or 0, currency=request.buy_currency)
        amount = f"buy {bought}"
    return start_metadata(
        f"{request.sell_currency.value} -> {request.buy_currency.value}"
        f" for customer {request.customer_id}",
        {"request": request.request_id, "customer": request.customer_id, "amount": amount},
        "the `confirm` (or `cancel`) update before the firm quote expires",
    )


@workflow.defn(name=FX_WORKFLOW)
class FxConversion:
    @workflow.init
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

    # ----- platform: outcome, shielding, handlers --------------------------

    @workflow.run
    async def run(self, request: FxConversionInput) -> FxConversionResult:
        attributes: list[SearchAttributeUpdate[Any]] = [
            CUSTOMER_ID.value_set(request.customer_id),
            CURRENCY.value_set(request.sell_currency.value),
            # The rate source (added to an upsert issued here already: older
            # histories still replay).
            PROVIDER.value_set(FX),
        ]
        if request.sell_amount_minor is not None:
            attributes.append(AMOUNT_MINOR.value_set(request.sell_amount_minor))
        self.progress.search(*attributes)
        try:
            try:
                result = await self._convert(request)
            except Finished as finished:
                result = self._conclude(finished.outcome, finished.reason)
                if finished.outcome is FxOutcome.EXPIRED:
                    await self._refuse_late_confirms(request.policy.late_confirm_window_seconds)
        # Failures and cancellation, but not the SDK's eviction of a cached
        # workflow. Nothing was posted on any path that gets here: the posting
        # itself is shielded (see _post_shielded).
        except (Exception, asyncio.CancelledError) as error:
            cancelled = is_cancellation(error)
            self._failure = "the conversion was cancelled" if cancelled else str(error)
            self.progress.enter(FxOutcome.CANCELLED.value if cancelled else STAGE_FAILED)
            raise
        # Confirm, cancel and wait_quote calls in flight get their answers.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _refuse_late_confirms(self, seconds: int) -> None:
        """Stay open a while after expiring, so the confirm validator answers
        late confirms with the reason; cancelling this wait changes nothing."""
        if seconds > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await workflow.sleep(timedelta(seconds=seconds))

    async def _post_shielded(self, request: FxConversionInput, quote: FxQuote) -> ConversionLegs:
        """Post the confirmed conversion even if the workflow is cancelled meanwhile."""
        # The customer confirmed a firm quote: finish what was promised.
        return await shielded(self._post(request, quote))

    # ----- business steps -------------------------------------------------

    async def _convert(self, request: FxConversionInput) -> FxConversionResult:
        terms = await self._check_customer(request)
        quote = await self._get_quote(request, terms)
        await self._await_decision(request, quote)
        legs = await self._post_shielded(request, quote)
        fee = self._fee_minor or 0
        result = self._conclude(
            FxOutcome.CONVERTED,
            f"sold {Money(amount_minor=quote.sell_amount_minor, currency=quote.sell_currency)}"
            f" (fee {Money(amount_minor=fee, currency=quote.sell_currency)}) for"
            f" {Money(amount_minor=quote.buy_amount_minor, currency=quote.buy_currency)}"
            f" at {quote.rate}",
            legs=legs,
        )
        notified = await self._notify_converted(request, result)
        self._result = result = result.model_copy(update={"notified": notified})
        self.progress.enter(FxOutcome.CONVERTED.value)
        return result

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

    async def _await_decision(self, request: FxConversionInput, quote: FxQuote) -> None:
        assert self._expires_at is not None
        self.progress.enter(STAGE_AWAITING)
        remaining = (self._expires_at - workflow.now()).total_seconds()
        if quote.status is FxQuoteStatus.OPEN and remaining > 0 and not self._decided():
            # Whole seconds, rounded up: the validator refuses confirms from
            # expires_at on, so the timer firing a little later changes nothing.
            await wait_for(self._decided, math.ceil(remaining))
        # A confirm the validator accepted before expiry stands even if the
        # timer fired in the same workflow task.
        if self._confirmed:
            return
        if self._cancel_requested:
            raise Finished(FxOutcome.CANCELLED, "cancelled by the customer; nothing was converted")
        raise Finished(
            FxOutcome.EXPIRED,
            f"quote {quote.id} expired at {self._expires_at.isoformat()} unconfirmed;"
            " nothing was converted",
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

    # ----- messages -------------------------------------------------------

    @workflow.update(name=WAIT_QUOTE_UPDATE)
    async def wait_quote(self) -> FxQuoteOffer:
        """The offer, once the quote is there; fails with the reason if the
        process ended without one."""
        await workflow.wait_condition(
            lambda: self._offer is not None or self._ended_without_offer()
        )
        if self._offer is not None:
            return self._offer
        raise refused(self._end_refusal(), self._end_reason())

    @workflow.update(name=CONFIRM_UPDATE)
    async def confirm(self) -> FxConversionResult:
        """Convert at the quote; answers the result once posted, or fails with
        "declined: ..." when the ledger rejects the batch."""
        self._confirmed = True
        await workflow.wait_condition(lambda: self._result is not None or self._failure is not None)
        if self._result is not None and self._result.outcome is FxOutcome.CONVERTED:
            return self._result
        raise refused(self._end_refusal(), self._end_reason())

    @confirm.validator
    def _validate_confirm(self) -> None:
        if self._result is not None:
            if self._result.outcome is FxOutcome.CONVERTED:
                return  # idempotent: answers the same result
            raise refused(self._end_refusal(), self._end_reason())
        if self._failure is not None:
            raise refused(self._end_refusal(), self._failure)
        if self._confirmed:
            return  # idempotent: answers once the batch is posted
        if self._cancel_requested:
            raise refused(Refusal.CANCELLED, "the conversion was cancelled")
        if self._quote is None or self._expires_at is None:
            raise refused(
                Refusal.WRONG_STATE,
                f"there is no quote to confirm yet (stage: {self.progress.stage})",
            )
        if workflow.now() >= self._expires_at:
            raise refused(
                Refusal.QUOTE_EXPIRED,
                f"quote {self._quote.id} expired at {self._expires_at.isoformat()}",
            )

    @workflow.update(name=CANCEL_UPDATE)
    async def cancel(self) -> str:
        """End the conversion with nothing posted, before it is confirmed."""
        self._cancel_requested = True
        await workflow.wait_condition(lambda: self._result is not None or self._failure is not None)
        return self._end_reason()

    @cancel.validator
    def _validate_cancel(self) -> None:
        if self._result is not None:
            if self._result.outcome is FxOutcome.CANCELLED:
                return  # idempotent
            raise refused(
                self._end_refusal(),
                f"the conversion already ended {self._result.outcome.value}",
            )
        if self._failure is not None:
            raise refused(self._end_refusal(), self._failure)
        if self._confirmed:
            raise refused(Refusal.WRONG_STATE, "the conversion is already confirmed")
        if self._expires_at is not None and workflow.now() >= self._expires_at:
            assert self._quote is not None
            raise refused(
                Refusal.QUOTE_EXPIRED,
                f"quote {self._quote.id} expired at {self._expires_at.isoformat()}",
            )

    @workflow.query
    def status(self) -> FxStatus:
        request = self._input
        assert request is not None
        quote = self._quote
        return FxStatus(
            request_id=request.request_id,
            customer_id=request.customer_id,
            stage=self.progress.stage,
            outcome=self._result.outcome if self._result else None,
            reason=self._result.reason if self._result else (self._failure or ""),
            sell_currency=request.sell_currency,
            buy_currency=request.buy_currency,
            fixed_side=request.fixed_side,
            sell_amount_minor=quote.sell_amount_minor if quote else request.sell_amount_minor,
            buy_amount_minor=quote.buy_amount_minor if quote else request.buy_amount_minor,
            fee_minor=self._fee_minor,
            quote=quote,
            expires_at=self._expires_at,
            confirmed=self._confirmed,
        )

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
