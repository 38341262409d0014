"""Top-up `topup/{source}/{external_ref}`: a bank transfer (source `bank`,
ref = the bank's transfer id) or a USDT-TRC20 deposit (source `usdt`, ref =
the transaction hash) credited to a customer's wallet.

The gateway starts it with signal-with-start from the provider's webhook (a
starter can do the same from a transfer record); the signal carries the
transfer, or the deposit as the chain saw it. Deposit webhooks arrive in any
order and any number of times: the workflow keeps the most advanced snapshot.

Bank: match the payer's reference to a customer; check the limits; credit
the wallet from `bank:inbound:{CCY}` and charge the fee, one atomic batch.
USDT: wait for the confirmations (a reorg before finality ends it with
nothing credited); match the address's owner; check the limits; take a firm
FX quote into the wallet's currency (a new one if it is about to expire);
post custody -> FX pools -> wallet, spread, rounding and fee as one atomic
batch. Both then collect the customer's recorded debt in that currency (a
lost dispute's shortfall) from the credit net of fee, record the day's usage
as credited and send the customer a receipt.

An unmatched payment or one over a limit waits for an operator's `review`
update (approve, assigning a customer if unmatched, or reject); no review in
time ends it uncredited. Saga: the usage reservation and the credit register
their undo as they succeed; a step after them that fails for good reverses
the credit and fee with reversing transfers (keys derived from this
workflow's) and releases the usage; if the wallet no longer holds the money,
the result and status say so for an operator. A cancellation does the same
and ends the top-up `cancelled`, wherever it reaches it. A step it
interrupted (the reservation, the credit, a debt collection: the activity
runs on and may commit) is first submitted again with its key and payload,
and its undo registered if the answer says it took effect.

The workflow id, the REJECT_DUPLICATE id-reuse policy of every start and the
ledger keys from step_key make sure one external reference credits once.

For operators: ProcessStatus is the money's state ("processing", a wait such
as "waiting for confirmations" or "in operator review", "credited", then the
outcome), upserted with CustomerId, AmountMinor, Currency and Provider when
the process waits on the outside or ends; the details and the `status`
query follow every step.

This module holds the workflow: its run (outcome, saga, interrupted steps),
the bank and USDT flows and its messages; its steps, stages, details and
result are TopupSteps, workflows/topup_steps.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.topups import TopupActivities
    from schemas import accounts
    from schemas.bank import InboundTransfer
    from schemas.conversion import conversion_legs
    from schemas.ledger import TransferRequest
    from schemas.money import Currency
    from schemas.refusals import Refusal, refused
    from schemas.search import PROVIDER
    from schemas.topup import (
        SOURCE_PROVIDER,
        CustomerMatchRequest,
        TopupInput,
        TopupOutcome,
        TopupResult,
        TopupReview,
        TopupSource,
        TopupStatus,
        deposit_rank,
        describe,
    )
    from schemas.tron import Deposit
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished
    from workflows.steps import step, step_key
    from workflows.topup_steps import STAGE_CONFIRMATIONS, STAGE_DEPOSIT, STAGE_TRANSFER, TopupSteps

TOPUP_WORKFLOW = "Topup"
BANK_TRANSFER_SIGNAL = "bank_transfer"
DEPOSIT_SIGNAL = "deposit_update"
REVIEW_UPDATE = "review"
# A cancellation that interrupts a step which may still take effect (the
# usage reservation, the credit, a debt collection) submits it again to learn
# so, and registers its undo before compensating; older runs did not.
TOPUP_INTERRUPTED_STEP_PATCH = "topup-interrupted-step-learned"


def topup_workflow_id(source: TopupSource | str, external_ref: str) -> str:
    return f"topup/{source}/{external_ref}"


def topup_start_metadata(request: TopupInput) -> StartMetadata:
    source = "bank transfer" if request.source == "bank" else "USDT-TRC20 deposit"
    arrival = (
        "the bank's transfer record (signal `bank_transfer`)"
        if request.source == "bank"
        else "the chain's confirmations (signal `deposit_update`)"
    )
    return start_metadata(
        f"Top-up by {source} {request.external_ref}",
        {
            "source": request.source,
            "reference": request.external_ref,
            "provider": SOURCE_PROVIDER[request.source],
            "wallet currency": request.wallet_currency.value,
        },
        f"{arrival}; an operator's `review` update when the payer is unmatched or the"
        " amount is outside the limits",
    )


def failure_reason(error: BaseException) -> str:
    """The innermost message of an activity failure: what actually went wrong."""
    while isinstance(error, ActivityError) and error.cause is not None:
        error = error.cause
    return str(error) or type(error).__name__


@workflow.defn(name=TOPUP_WORKFLOW)
class Topup(TopupSteps):
    @workflow.init
    def __init__(self, request: TopupInput) -> None:
        super().__init__(request)

    # ----- platform: outcome, saga --------------------------------------

    @workflow.run
    async def run(self, request: TopupInput) -> TopupResult:
        self.progress.search(PROVIDER.value_set(SOURCE_PROVIDER[request.source]))
        try:
            await self._topup(request)
            raise AssertionError("the top-up ended without an outcome")
        except Finished as finished:
            outcome: TopupOutcome = finished.outcome
            reason = finished.reason
            if outcome != "credited":
                await self._saga.compensate()
        # Failures and cancellation, but not the SDK's eviction of a cached
        # workflow, which must never run compensations.
        except (Exception, asyncio.CancelledError) as error:
            cancelled = is_cancellation(error)
            if (
                cancelled
                and self._interrupted is not None
                and workflow.patched(TOPUP_INTERRUPTED_STEP_PATCH)
            ):
                await shielded(self._learn(self._interrupted))
            credited = bool(self._credit)
            self.progress.enter("compensating")
            await self._saga.compensate()
            if cancelled or not credited:
                # Nothing reached the wallet (or it was cancelled): the
                # failure itself is the outcome an operator sees.
                self.progress.enter("cancelled" if cancelled else "failed")
                self.progress.flush()
                raise
            outcome = "reversal_failed" if self._reversal_failed else "reversed"
            reason = failure_reason(error)
        # No message is lost: an operator's review in flight finishes first.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._outcome = outcome
        self.progress.enter(outcome.replace("_", " "))
        self.progress.flush()
        return self._result(outcome, reason)

    async def _learn(self, interrupted: Callable[[], Awaitable[object]]) -> None:
        """Run an interrupted step again: the ledger (or the usage table) answers
        its first outcome, and the step registers its undo if it took effect."""
        self._interrupted = None
        try:
            await interrupted()
        except ActivityError as error:
            workflow.logger.error("an interrupted step's outcome is unknown: %s", error)
        except ApplicationError:
            pass  # refused: it took no effect, nothing to undo

    # ----- business steps -------------------------------------------------

    async def _topup(self, request: TopupInput) -> None:
        if request.source == "bank":
            await self._bank(request)
        else:
            await self._usdt(request)
        assert self._wallet_currency is not None
        raise Finished(
            "credited",
            f"credited {describe(self._credited_minor, self._wallet_currency)}, fee "
            f"{describe(self._fee_minor, self._wallet_currency)}",
        )

    async def _bank(self, request: TopupInput) -> None:
        if not await self._wait(
            STAGE_TRANSFER,
            lambda: self._transfer is not None,
            request.policy.source_wait_seconds,
        ):
            raise Finished("expired", "no bank transfer record arrived")
        transfer = self._transfer
        assert transfer is not None
        currency = transfer.currency
        self._received(transfer.amount_minor, currency)
        inbound, fees = accounts.bank_inbound(currency), accounts.revenue_fees(currency)
        customer_id = await self._match(transfer.reference, currency, [inbound, fees])
        await self._check_limits(customer_id, transfer.amount_minor, currency)
        await self._open_missing_accounts()

        wallet = accounts.wallet(customer_id, currency)
        fee = request.policy.fee_minor("bank", transfer.amount_minor, currency)
        items = [
            TransferRequest(
                key=step_key("credit/principal"),
                debit=inbound,
                credit=wallet,
                amount_minor=transfer.amount_minor,
                currency=currency,
            )
        ]
        items += self._fee_leg(wallet, fees, fee, currency)
        await self._interruptible(
            lambda: self._post_credit(items, transfer.amount_minor, fee, currency)
        )
        await self._collect_debt(customer_id, currency)
        await self._after_credit(customer_id, currency)

    async def _usdt(self, request: TopupInput) -> None:
        policy = request.policy
        if not await self._wait(
            STAGE_DEPOSIT, lambda: self._deposit is not None, policy.source_wait_seconds
        ):
            raise Finished("expired", "no deposit snapshot arrived")
        assert self._deposit is not None
        amount = self._deposit.amount_minor
        self._received(amount, Currency.USDT)

        if not await self._wait(
            STAGE_CONFIRMATIONS, self._deposit_settled, policy.confirmation_wait_seconds
        ):
            confirmations = self._deposit.confirmations
            raise Finished(
                "expired",
                f"the deposit was not final within {policy.confirmation_wait_seconds}s "
                f"({confirmations} confirmations)",
            )
        if self._deposit.status == "dropped":
            raise Finished("dropped", "a chain reorganization dropped the deposit before finality")

        currency = request.wallet_currency
        custody, fees = accounts.crypto_custody(), accounts.revenue_fees(currency)
        system = [
            custody,
            accounts.fx_pool(Currency.USDT),
            accounts.fx_pool(currency),
            accounts.revenue_fx(currency),
            accounts.fx_rounding(currency),
            fees,
        ]
        customer_id = await self._match(self._deposit.customer_id, currency, system)
        await self._check_limits(customer_id, amount, Currency.USDT)
        await self._open_missing_accounts()

        wallet = accounts.wallet(customer_id, currency)
        quote = await self._firm_quote(amount, currency)
        legs = conversion_legs(step_key("credit"), quote, debit=custody, credit=wallet)
        fee = policy.fee_minor("usdt", quote.buy_amount_minor, currency)
        items = [*legs.transfers, *self._fee_leg(wallet, fees, fee, currency)]
        await self._interruptible(
            lambda: self._post_credit(items, quote.buy_amount_minor, fee, currency)
        )
        await self._collect_debt(customer_id, currency)
        await self._after_credit(customer_id, currency)

    def _deposit_settled(self) -> bool:
        deposit = self._deposit
        assert deposit is not None
        return (
            deposit.status in ("finalized", "dropped")
            or deposit.confirmations >= self._input.policy.confirmations_required
        )

    # ----- messages -------------------------------------------------------

    @workflow.signal(name=BANK_TRANSFER_SIGNAL)
    def bank_transfer(self, transfer: InboundTransfer) -> None:
        # A redelivered webhook carries the same transfer: the first is kept.
        if self._input.source != "bank" or transfer.id != self._input.external_ref:
            workflow.logger.warning("ignored bank transfer %s", transfer.id)
            return
        if self._transfer is None:
            self._transfer = transfer

    @workflow.signal(name=DEPOSIT_SIGNAL)
    def deposit_update(self, deposit: Deposit) -> None:
        # Snapshots repeat and reorder: only a more advanced one replaces ours.
        if self._input.source != "usdt" or deposit.tx_hash != self._input.external_ref:
            workflow.logger.warning("ignored deposit %s", deposit.tx_hash)
            return
        if self._deposit is None or deposit_rank(deposit) > deposit_rank(self._deposit):
            self._deposit = deposit
            self.progress.show()

    @workflow.update(name=REVIEW_UPDATE)
    async def review(self, decided: TopupReview) -> str:
        """An operator's decision (the Web UI's update form sends it as JSON; a
        malformed one is refused naming its fields before the validator runs)."""
        pending = self._pending
        assert pending is not None
        debt_outstanding_minor = None
        if pending.kind == "unmatched" and decided.decision == "approve":
            assert decided.customer_id is not None and self._currency is not None
            match = await step(
                self._input,
                TopupActivities.match_customer,
                CustomerMatchRequest(
                    reference=decided.customer_id, currency=self._credit_currency()
                ),
            )
            if match.customer_id is None:
                # Fails this update only; the review stays pending.
                raise refused(Refusal.NOT_FOUND, f"customer_id: {match.reason}")
            debt_outstanding_minor = match.debt_outstanding_minor
        # The match took a moment: another review, or the wait's end, may
        # have come first. A review refused here changes nothing (the debt
        # collected is the chosen customer's, never the loser's).
        if self._review is not None:
            raise refused(Refusal.ALREADY_DONE, "this review was already decided")
        if self._pending is not pending:
            raise refused(
                Refusal.WRONG_STATE,
                f"the review is no longer pending (stage: {self.progress.stage})",
            )
        if debt_outstanding_minor is not None:
            self._debt_outstanding_minor = debt_outstanding_minor
        self._review = decided
        assigned = f" to {decided.customer_id}" if decided.customer_id else ""
        return f"{decided.decision}{assigned} recorded"

    @review.validator
    def _validate_review(self, decided: TopupReview) -> None:
        if self._outcome is not None:
            raise refused(Refusal.FINISHED, f"the top-up already finished ({self._outcome})")
        if self._pending is None:
            raise refused(
                Refusal.WRONG_STATE, f"no review is pending (stage: {self.progress.stage})"
            )
        if self._review is not None:
            raise refused(Refusal.ALREADY_DONE, "this review was already decided")
        if self._pending.kind == "unmatched":
            if decided.decision == "approve" and decided.customer_id is None:
                raise refused(
                    Refusal.INVALID_REQUEST,
                    "customer_id: approving an unmatched payment assigns it; name the customer",
                )
        elif decided.customer_id is not None:
            raise refused(
                Refusal.INVALID_REQUEST,
                "customer_id: only an unmatched payment is assigned to a customer",
            )

    @workflow.query
    def status(self) -> TopupStatus:
        deposit = self._deposit
        usdt = self._input.source == "usdt"
        return TopupStatus(
            workflow_id=workflow.info().workflow_id,
            source=self._input.source,
            external_ref=self._input.external_ref,
            stage=self.progress.stage,
            customer_id=self._customer_id,
            amount_minor=self._amount_minor,
            currency=self._currency,
            confirmations=deposit.confirmations if deposit else None,
            confirmations_required=self._input.policy.confirmations_required if usdt else None,
            pending_review=self._pending,
            credited_minor=self._credited_minor,
            fee_minor=self._fee_minor,
            debt_collected_minor=self._debt_collected_minor,
            outcome=self._outcome,
            compensation=self._compensation,
        )
