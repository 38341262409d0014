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

This module holds the workflow: its run (outcome, shielding), the wait for a
decision and its messages; its steps, stages, outcome and details are
FxSteps, workflows/fx_steps.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributeUpdate

with workflow.unsafe.imports_passed_through():
    from schemas.conversion import ConversionLegs
    from schemas.fx import (
        FxConversionInput,
        FxConversionResult,
        FxOutcome,
        FxQuote,
        FxQuoteOffer,
        FxQuoteStatus,
        FxStatus,
    )
    from schemas.money import Money
    from schemas.providers import FX
    from schemas.refusals import Refusal, refused
    from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID, PROVIDER
    from workflows.cancellation import is_cancellation, shielded
    from workflows.fx_steps import STAGE_AWAITING, STAGE_FAILED, FxSteps
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished
    from workflows.steps import wait_for

FX_WORKFLOW = "FxConversion"
WAIT_QUOTE_UPDATE = "wait_quote"
CONFIRM_UPDATE = "confirm"
CANCEL_UPDATE = "cancel"
# The update ids the client functions send: a repeat with the same id gets
# Temporal's stored answer for the first, so a retried confirm never races.
CONFIRM_UPDATE_ID = "confirm"
CANCEL_UPDATE_ID = "cancel"


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
class FxConversion(FxSteps):
    @workflow.init
    def __init__(self, request: FxConversionInput) -> None:
        super().__init__(request)

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
