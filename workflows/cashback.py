"""Cashback `cashback/{transaction_id}`: reward a cleared purchase, claw it back on refunds.

The card process records the purchase in card_transactions and starts this
workflow as a child (ParentClosePolicy.ABANDON); a merchant refund naming
the purchase arrives as the signal `refund`.

Steps: gather the evaluator's data in one ledger-queue activity (campaigns in
force at the purchase, the customer's segment, recent purchase counts);
evaluate the rules (schemas/cashback.py, pure); pay every reward from
`expense:cashback:{CCY}` to the customer's wallet in the purchase's currency,
in one atomic batch keyed per (transaction, campaign), so retries and
re-starts pay each reward once; tell the customer (a failed notification
never undoes the reward); then stay open for refunds until
`clawback_window_seconds` after the reward, or until the purchase is refunded
in full. No reward: the process ends at once.

Clawback rule: each refund (once per refund_id) makes due, in total, the
reward times the amount refunded so far over the purchase amount, rounded
down (all of it once the whole purchase is refunded), and the process takes
from the wallet whatever of that is not taken yet. The wallet never goes
below zero (pending holds included): when it cannot cover the clawback, the
process takes what the wallet holds and records the rest as the shortfall,
in the status, the result, the details and the search attribute
ProcessStatus = "shortfall", for an operator. A later refund tries to take the
outstanding shortfall again.

There is nothing to compensate: the rewards post in one atomic batch, and a
paid reward is only ever taken back by a refund. A cancellation (an operator
closing the window early) still claws back the refunds already received,
shielded from the cancellation, wherever it reaches the process (a timer, a
wait, a ledger call in flight). A ledger call it interrupted may still post:
the process submits it again with the same key and payload, and the ledger's
answer (the first outcome) says whether the reward was paid, or how much of a
refund was taken, before the refunds are settled.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from typing import NamedTuple

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.cashback import CashbackActivities
    from activities.ledger.activities import LedgerActivities
    from activities.providers.activities import ProviderActivities
    from schemas.accounts import expense_cashback, system_account, wallet
    from schemas.cashback import (
        CashbackContextRequest,
        CashbackDecision,
        CashbackInput,
        CashbackOutcome,
        CashbackRefund,
        CashbackResult,
        CashbackStatus,
        PurchaseFacts,
        RefundRecord,
        clawback_target_minor,
        evaluate,
    )
    from schemas.customers import Notification
    from schemas.ledger import (
        Rejection,
        TransferBatch,
        TransferOutcome,
        TransferRequest,
    )
    from schemas.money import Money
    from schemas.search import AMOUNT_MINOR, CARD_ID, CURRENCY, CUSTOMER_ID
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step, step_key, wait_for

CASHBACK_WORKFLOW = "Cashback"
REFUND_SIGNAL = "refund"
# ProcessStatus while (and after) a clawback could not be covered in full.
SHORTFALL_STATUS = "shortfall"
# A cancellation that interrupts a ledger call (it arrives as an ActivityError
# caused by CancelledError) settles the refunds and learns the interrupted
# payment's outcome, as one at a timer or a wait always did; runs recorded
# before it end "failed" there, with nothing settled.
CANCELLATION_SETTLES_PATCH = "cashback-cancellation-in-a-ledger-call-settles"


# The stages before the reward is paid: a process in one of them is pending.
UNPAID_STAGES = ("starting", "evaluating", "paying")
# The steps that move money, each under the process's id in its ledger keys.
REWARD_STEP = "reward"
CLAWBACK_STEP = "clawback"


def cashback_workflow_id(transaction_id: str) -> str:
    return f"cashback/{transaction_id}"


def reward_step(campaign_id: str) -> str:
    """The step paying one campaign's reward on the purchase."""
    return f"{REWARD_STEP}/{campaign_id}"


def clawback_step(refund_id: str, attempt: int = 0) -> str:
    """The step taking back what one refund makes due (attempt 0), or what the
    wallet holds of it when it could not cover it (attempts 1, 2...)."""
    return f"{CLAWBACK_STEP}/{refund_id}" + (f"/{attempt}" if attempt else "")


class CashbackTransferKey(NamedTuple):
    transaction_id: str
    step: str
    # The campaign of a reward, the refund of a clawback.
    subject: str


def cashback_transfer_key(key: str) -> CashbackTransferKey | None:
    """What a ledger key this process wrote names: the purchase, the step
    (REWARD_STEP or CLAWBACK_STEP) and its campaign or refund; None for
    any other key. Transaction, campaign and refund ids hold no "/"."""
    prefix = cashback_workflow_id("")
    if not key.startswith(prefix):
        return None
    parts = key.removeprefix(prefix).split("/")
    if len(parts) < 3 or parts[1] not in (REWARD_STEP, CLAWBACK_STEP):
        return None
    return CashbackTransferKey(transaction_id=parts[0], step=parts[1], subject=parts[2])


def cashback_start_metadata(request: CashbackInput) -> StartMetadata:
    return start_metadata(
        f"Cashback on purchase {request.transaction_id}",
        {
            "transaction": request.transaction_id,
            "customer": request.customer_id,
            "card": request.card_id,
            "purchase": Money(amount_minor=request.amount_minor, currency=request.currency),
            "MCC": request.mcc,
        },
        "refunds of the purchase from the card (signal `refund`) until the refund window closes",
    )


@workflow.defn(name=CASHBACK_WORKFLOW)
class Cashback:
    @workflow.init
    def __init__(self, request: CashbackInput) -> None:
        # Set before any handler runs: a refund may arrive with the start.
        self._input = request
        self.progress = ProcessStage("starting", self._details, status=self._status_label)
        self._decision = CashbackDecision()
        self._reward_minor = 0
        # The reward batch while its posting is awaited: a cancellation then
        # leaves its outcome to learn.
        self._paying: TransferBatch | None = None
        self._window_closes_at: datetime | None = None
        self._notified = False
        self._pending: list[CashbackRefund] = []
        self._refund_ids: set[str] = set()
        self._refunds: list[RefundRecord] = []
        self._refunded_minor = 0
        self._clawed_back_minor = 0
        self._shortfall_minor = 0
        # Every clawback amount submitted, by key: a clawback a cancellation
        # interrupted is settled again with the very same payloads.
        self._clawbacks_submitted: dict[str, int] = {}

    # ----- platform: search attributes, cancellation, handlers ----------------

    @workflow.run
    async def run(self, request: CashbackInput) -> CashbackResult:
        self.progress.search(
            CUSTOMER_ID.value_set(request.customer_id),
            CARD_ID.value_set(request.card_id),
            AMOUNT_MINOR.value_set(request.amount_minor),
            CURRENCY.value_set(request.currency.value),
        )
        try:
            outcome, reason = await self._cashback(request)
        # Failures and cancellation, but not the SDK's eviction of a cached workflow.
        except (Exception, asyncio.CancelledError) as error:
            if not self._cancelled(error):
                self.progress.enter("failed")
                raise
            # Refunds already received are the customer's money back: their
            # clawback still runs, shielded from the cancellation.
            await shielded(self._settle_after_cancel())
            self.progress.enter("cancelled")
            raise
        # Every refund signal is handled before the result is final.
        await workflow.wait_condition(workflow.all_handlers_finished)
        self.progress.enter(_FINAL_STAGES[outcome])
        return CashbackResult(
            transaction_id=request.transaction_id,
            outcome=outcome,
            currency=request.currency,
            reason=reason,
            rewards=self._decision.rewards if self._reward_minor else [],
            verdicts=self._decision.verdicts,
            reward_minor=self._reward_minor,
            refunded_minor=self._refunded_minor,
            clawed_back_minor=self._clawed_back_minor,
            shortfall_minor=self._shortfall_minor,
            refunds=self._refunds,
            notified=self._notified,
        )

    def _cancelled(self, error: BaseException) -> bool:
        if isinstance(error, asyncio.CancelledError):
            return True
        return is_cancellation(error) and workflow.patched(CANCELLATION_SETTLES_PATCH)

    async def _settle_after_cancel(self) -> None:
        try:
            if self._paying is not None:
                # The payment was in flight: submitted again, the ledger answers
                # its first outcome (or posts it now, if it never got there).
                await self._submit_rewards(self._paying)
            if self._reward_minor:
                await self._settle_refunds()
        except (Exception, asyncio.CancelledError) as error:
            workflow.logger.error("refunds left unsettled on cancellation: %s", error)

    # ----- business steps -----------------------------------------------------

    async def _cashback(self, request: CashbackInput) -> tuple[CashbackOutcome, str]:
        self.progress.enter("evaluating")
        context = await step(
            request,
            CashbackActivities.load_context,
            CashbackContextRequest(
                customer_id=request.customer_id,
                transaction_id=request.transaction_id,
                occurred_at=request.occurred_at,
            ),
        )
        self._decision = evaluate(
            context.campaigns,
            PurchaseFacts(
                amount_minor=request.amount_minor,
                currency=request.currency,
                mcc=request.mcc,
                occurred_at=request.occurred_at,
                segment=context.segment,
                recent=context.recent,
            ),
            total_basis_points_max=request.policy.total_basis_points_max,
        )
        if not self._decision.rewards:
            return "no_reward", f"no campaign matched ({len(context.campaigns)} in force)"

        rejected = await self._pay(request)
        if rejected is not None:
            return "not_paid", rejected

        notifying = asyncio.ensure_future(self._notify_reward(request))
        try:
            reason = await self._refund_window(request)
        finally:
            # The notification runs alongside the window; one still retrying
            # when the process ends is given up, and the reward stays.
            if not notifying.done():
                notifying.cancel()
            await workflow.wait([notifying])
        return "completed", reason

    async def _pay(self, request: CashbackInput) -> str | None:
        """Pay every reward in one atomic batch; the rejection, if the ledger refused it."""
        self.progress.enter("paying")
        expense = expense_cashback(request.currency)
        await step(request, LedgerActivities.open_accounts, [system_account(expense)])
        credit = wallet(request.customer_id, request.currency)
        return await self._submit_rewards(
            TransferBatch(
                items=[
                    TransferRequest(
                        # One key per (transaction, campaign): paid once whatever repeats.
                        key=step_key(reward_step(line.campaign_id)),
                        debit=expense,
                        credit=credit,
                        amount_minor=line.amount_minor,
                        currency=request.currency,
                    )
                    for line in self._decision.rewards
                ],
                atomic=True,
            )
        )

    async def _submit_rewards(self, batch: TransferBatch) -> str | None:
        """Submit the reward batch and record the outcome; the rejection, if refused."""
        self._paying = batch
        outcomes = await step(self._input, LedgerActivities.submit_batch, batch)
        self._paying = None
        refused = [outcome for outcome in outcomes if not outcome.accepted]
        if refused:
            first = refused[0]
            rejection = first.rejection.value if first.rejection else "rejected"
            return f"the ledger refused the reward: {rejection} {first.detail}".strip()
        self._reward_minor = self._decision.total_minor
        self._window_closes_at = workflow.now() + timedelta(
            seconds=self._input.policy.clawback_window_seconds
        )
        return None

    async def _refund_window(self, request: CashbackInput) -> str:
        self.progress.enter("open for refunds")
        assert self._window_closes_at is not None
        while True:
            await self._settle_refunds()
            if self._refunded_minor >= request.amount_minor:
                return "the purchase was refunded in full"
            left_seconds = (self._window_closes_at - workflow.now()).total_seconds()
            if left_seconds <= 0 or not await wait_for(
                lambda: bool(self._pending), math.ceil(left_seconds)
            ):
                await self._settle_refunds()
                return "the clawback window closed"

    async def _settle_refunds(self) -> None:
        while self._pending:
            refund = self._pending[0]
            await self._claw_back(refund)
            # Dropped only once settled, so a cancellation mid-way settles it again
            # (with the same ledger keys).
            self._pending.pop(0)

    async def _claw_back(self, refund: CashbackRefund) -> None:
        request = self._input
        self.progress.enter("clawing back")
        refunded = self._refunded_minor + refund.amount_minor
        target = clawback_target_minor(self._reward_minor, request.amount_minor, refunded)
        due = max(0, target - self._clawed_back_minor)
        collected, detail = await self._collect(refund.refund_id, due) if due else (0, "")
        # Invariant: never more taken back than the refunds make due, nor than was paid.
        assert self._clawed_back_minor + collected <= target <= self._reward_minor
        self._refunded_minor = refunded
        self._clawed_back_minor += collected
        self._shortfall_minor = target - self._clawed_back_minor
        self._refunds.append(
            RefundRecord(
                refund_id=refund.refund_id,
                amount_minor=refund.amount_minor,
                clawed_back_minor=collected,
                shortfall_minor=self._shortfall_minor,
                detail=detail,
            )
        )
        self.progress.enter("open for refunds")

    async def _collect(self, refund_id: str, due: int) -> tuple[int, str]:
        """Take `due` from the wallet, or as much of it as the wallet holds."""
        request = self._input
        debit = wallet(request.customer_id, request.currency)
        credit = expense_cashback(request.currency)

        async def take(step_name: str, amount: int) -> tuple[TransferOutcome, int]:
            key = step_key(step_name)
            # Submitted before (a cancellation interrupted it): the same
            # payload again, so the ledger answers the first outcome.
            amount = self._clawbacks_submitted.setdefault(key, amount)
            outcome = await step(
                request,
                LedgerActivities.transfer,
                TransferRequest(
                    key=key,
                    debit=debit,
                    credit=credit,
                    amount_minor=amount,
                    currency=request.currency,
                ),
            )
            return outcome, amount

        outcome, _ = await take(clawback_step(refund_id), due)
        if outcome.accepted:
            return due, ""
        # A card payment may take the wallet between the read and the debit:
        # read again and retry, a bounded number of times, each with its own key.
        for attempt in range(1, request.policy.clawback_attempts_max + 1):
            if outcome.rejection is not Rejection.INSUFFICIENT_FUNDS:
                break
            step_name = clawback_step(refund_id, attempt)
            amount = self._clawbacks_submitted.get(step_key(step_name), 0)
            if not amount:
                balance = await step(request, LedgerActivities.balance, debit)
                amount = min(due, balance.available)
                if amount <= 0:
                    return 0, "the wallet is empty"
            outcome, amount = await take(step_name, amount)
            if outcome.accepted:
                return amount, f"the wallet covered {amount} of {due}"
        rejection = outcome.rejection.value if outcome.rejection else "rejected"
        return 0, f"the wallet refused the clawback: {rejection} {outcome.detail}".strip()

    async def _notify_reward(self, request: CashbackInput) -> None:
        earned = Money(amount_minor=self._reward_minor, currency=request.currency)
        at = f" at {request.merchant_name}" if request.merchant_name else ""
        try:
            await step(
                request,
                ProviderActivities.notify_customer,
                Notification(
                    key=step_key("notify/reward"),
                    customer_id=request.customer_id,
                    subject=f"You earned {earned} cashback",
                    body=f"You earned {earned} cashback on your purchase{at}.",
                ),
            )
        except ActivityError as error:
            workflow.logger.warning("the cashback notification failed: %s", error)
            return
        self._notified = True
        self.progress.show()

    # ----- messages -----------------------------------------------------------

    @workflow.signal(name=REFUND_SIGNAL)
    def refund(self, refund: CashbackRefund) -> None:
        # The gateway and the card process may deliver a refund twice.
        if refund.refund_id in self._refund_ids:
            return
        if len(self._refund_ids) >= self._input.policy.refunds_max:
            workflow.logger.warning(
                "refund %s ignored: %s refunds already taken",
                refund.refund_id,
                self._input.policy.refunds_max,
            )
            return
        self._refund_ids.add(refund.refund_id)
        self._pending.append(refund)

    @workflow.query
    def status(self) -> CashbackStatus:
        return CashbackStatus(
            transaction_id=self._input.transaction_id,
            stage=self.progress.stage,
            currency=self._input.currency,
            rewards=self._decision.rewards if self._reward_minor else [],
            verdicts=self._decision.verdicts,
            reward_minor=self._reward_minor,
            pending_minor=self._pending_minor(),
            refunded_minor=self._refunded_minor,
            clawed_back_minor=self._clawed_back_minor,
            shortfall_minor=self._shortfall_minor,
            refunds=self._refunds,
            notified=self._notified,
            window_closes_at=self._window_closes_at,
        )

    # ----- helpers ------------------------------------------------------------

    def _pending_minor(self) -> int:
        """The rewards decided and not paid yet (nothing is decided while evaluating)."""
        if self._reward_minor or self.progress.stage not in UNPAID_STAGES:
            return 0
        return self._decision.total_minor

    def _status_label(self, stage: str) -> str:
        """The ProcessStatus of `stage`: SHORTFALL_STATUS once a clawback
        could not be covered in full, whatever the stage."""
        return SHORTFALL_STATUS if self._shortfall_minor else stage

    def _details(self) -> str:
        request = self._input
        currency = request.currency

        def money(amount_minor: int) -> str:
            return str(Money(amount_minor=amount_minor, currency=currency))

        lines = [
            f"Cashback on {request.transaction_id}: {self.progress.stage}",
            f"purchase {money(request.amount_minor)} at {request.merchant_name or '-'} "
            f"(MCC {request.mcc}) on {request.occurred_at.isoformat()}",
        ]
        for line in self._decision.rewards if self._reward_minor else []:
            capped = ", capped" if line.capped else ""
            lines.append(
                f"reward {line.campaign_id} v{line.campaign_version}: {line.basis_points} bp "
                f"= {money(line.amount_minor)}{capped}"
            )
        if self._reward_minor:
            lines.append(f"notified: {'yes' if self._notified else 'not yet'}")
        if self._refunds or self._pending:
            lines.append(
                f"refunded {money(self._refunded_minor)}; clawed back "
                f"{money(self._clawed_back_minor)}; {len(self._pending)} refund(s) pending"
            )
        if self._shortfall_minor:
            lines.append(
                f"SHORTFALL {money(self._shortfall_minor)}: the wallet could not cover the "
                "clawback; an operator should recover it"
            )
        if self._window_closes_at is not None:
            lines.append(f"refunds claw back until {self._window_closes_at.isoformat()}")
        return "\n".join(lines)


_FINAL_STAGES: dict[str, str] = {
    "no_reward": "no reward",
    "not_paid": "not paid",
    "completed": "completed",
}
