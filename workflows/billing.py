"""Fees and statements `billing/{customer_id}/{period}` and the monthly driver
`billing-run/{period}`.

Billing, for one customer and one month (schemas/billing.py has the rules):
find the cards active in the period; charge each one's monthly fee from the
customer's wallet in the card's currency to `revenue:fees:{CCY}`, one
transfer per card keyed `billing/{customer}/{period}/fee/{card_id}`; then
write the statement (JSON and HTML) from the ledger. The same period never
charges twice: the process id is the period's, started with
ALLOW_DUPLICATE_FAILED_ONLY (a second start finds the first unless it
failed), and a repeated run's ledger keys return the first outcomes.

A fee the wallet cannot pay in full is waived and flagged (ProcessStatus
`billed_with_waivers`), never charged in part.

There is nothing to compensate: a fee once charged is owed, and writing the
statement is retried until it succeeds (it only reads the ledger). A
cancellation ends the process `cancelled` wherever it reaches it (a ledger
call in flight included); a fee it interrupted may still be charged, so the
process submits that fee again with its key and payload and records the
ledger's answer (the first outcome), and its status lists exactly the fees
charged. The period may then be billed again; its keys answer those fees.

Only a month that has ended is billed (schemas/periods.py): the process and
the driver, asked for this month or a later one by the workflow's own clock,
fail at once and non-retryably, charging nothing, so the month is left for
the run once it is over (the starters and the API refuse it before that).

The driver (what the monthly Temporal Schedule starts) pages through the
customers holding cards issued before the period's end and starts one
billing child per customer, a page at a time (bounded fan-out), waiting for
the page before the next; a child id that already exists means that customer's
period is billed already. After `pages_per_run_max` pages it continues as new.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.ledger.activities import LedgerActivities
    from schemas.accounts import revenue_fees, system_account, wallet
    from schemas.billing import (
        ActiveCard,
        ActiveCardsRequest,
        BillingInput,
        BillingResult,
        BillingRunInput,
        BillingRunResult,
        BillingRunStatus,
        BillingStatus,
        CustomersPageRequest,
        FeeCharge,
        StatementRequest,
        StatementSummary,
        period_bounds,
        previous_period,
    )
    from schemas.ledger import TransferRequest
    from schemas.money import Currency
    from schemas.periods import PERIOD_NOT_ENDED_ERROR, month_not_ended
    from schemas.search import AMOUNT_MINOR, CURRENCY, CUSTOMER_ID
    from workflows.cancellation import is_cancellation, shielded
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.steps import step, step_key

BILLING_WORKFLOW = "Billing"
BILLING_RUN_WORKFLOW = "BillingRun"
WAIVED_STATUS = "billed_with_waivers"
BILLED_STATUS = "billed"
# A billing child has this long to finish; it only reads and posts a few transfers.
BILLING_CHILD_RUN_TIMEOUT = timedelta(hours=1)
# A period billed once is never billed again; a run that failed may be run
# again, and its ledger keys return the fees the failed run already charged.
BILLING_ID_REUSE_POLICY = WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
# A cancellation that interrupts a fee's posting learns whether it was charged
# (the fee submitted again with its key); runs recorded before it end there
# with that fee unrecorded.
CANCELLED_FEE_PATCH = "billing-cancelled-fee-learned"
# Billings started before this patch replay as they ran: a month that had
# begun was billed. Since, a month is billed only once it has ended.
BILLING_PERIOD_ENDED_PATCH = "billing-period-ended"


def billing_workflow_id(customer_id: str, period: str) -> str:
    return f"billing/{customer_id}/{period}"


def billing_run_workflow_id(period: str) -> str:
    return f"billing-run/{period}"


def billing_start_metadata(request: BillingInput) -> StartMetadata:
    return start_metadata(
        f"Fees and statement of {request.customer_id} for {request.period}",
        {"customer": request.customer_id, "period": request.period},
        "nothing outside: it charges each active card's monthly fee, then writes the statement",
    )


def billing_run_start_metadata(request: BillingRunInput) -> StartMetadata:
    period = request.period or "the month before the scheduled time"
    return start_metadata(
        f"Billing run for {period}",
        {"period": period},
        "one `billing/{customer}/{period}` child per customer, page by page",
    )


def fee_step(card_id: str) -> str:
    return f"fee/{card_id}"


@workflow.defn(name=BILLING_WORKFLOW)
class Billing:
    @workflow.init
    def __init__(self, request: BillingInput) -> None:
        self._input = request
        self.progress = ProcessStage("starting", self._details)
        self._fees: list[FeeCharge] = []
        # The fee whose posting is awaited, with its card: a cancellation
        # leaves its outcome to learn.
        self._charging: tuple[ActiveCard, TransferRequest] | None = None
        self._statement: StatementSummary | None = None

    # ----- platform: search attributes, status, failure ----------------------

    @workflow.run
    async def run(self, request: BillingInput) -> BillingResult:
        self.progress.search(CUSTOMER_ID.value_set(request.customer_id))
        try:
            result = await self._bill(request)
        # Failures and cancellation, but not the SDK's eviction of a cached workflow.
        except (Exception, asyncio.CancelledError) as error:
            if not is_cancellation(error):
                self.progress.enter("failed")
                raise
            if self._charging is not None and workflow.patched(CANCELLED_FEE_PATCH):
                card, fee = self._charging
                await shielded(self._charge(request, card, fee))
            self.progress.enter("cancelled")
            raise
        waived = any(fee.status == "waived" for fee in self._fees)
        self.progress.enter(WAIVED_STATUS if waived else BILLED_STATUS)
        return result

    @workflow.query
    def status(self) -> BillingStatus:
        return BillingStatus(
            customer_id=self._input.customer_id,
            period=self._input.period,
            stage=self.progress.stage,
            fees=self._fees,
            statement=self._statement,
        )

    def _details(self) -> str:
        charged = sum(f.amount_minor for f in self._fees if f.status == "charged")
        return (
            f"Billing {self._input.customer_id} for {self._input.period}: {self.progress.stage}"
            f" | {len(self._fees)} cards, {charged} minor units of fees charged"
            + (f" | statement {self._statement.html_path}" if self._statement else "")
        )

    # ----- business steps ------------------------------------------------------

    async def _bill(self, request: BillingInput) -> BillingResult:
        start, end = period_bounds(request.period)
        if workflow.patched(BILLING_PERIOD_ENDED_PATCH):
            # The process fails without posting; the month is billed once over.
            refusal = month_not_ended(request.period, workflow.now())
            if refusal is not None:
                raise ApplicationError(refusal, type=PERIOD_NOT_ENDED_ERROR, non_retryable=True)
        elif start > workflow.now():
            raise ApplicationError(
                f"period {request.period} has not begun", type="PeriodNotBegun", non_retryable=True
            )
        self.progress.enter("finding_cards")
        cards = await step(
            request,
            BillingActivities.active_cards,
            ActiveCardsRequest(
                customer_id=request.customer_id,
                period_start=start,
                period_end=end,
                limit=request.policy.cards_max,
            ),
        )
        self.progress.enter("charging_fees")
        await self._charge_fees(request, cards)
        self.progress.enter("writing_statement")
        self._statement = await step(
            request,
            BillingActivities.write_statement,
            StatementRequest(
                customer_id=request.customer_id,
                period=request.period,
                period_start=start,
                period_end=end,
                statements_dir=request.statements_dir,
                fees=self._fees,
            ),
        )
        charged: dict[Currency, int] = {}
        waived: dict[Currency, int] = {}
        for fee in self._fees:
            totals = charged if fee.status == "charged" else waived
            if fee.status != "no_fee":
                totals[fee.currency] = totals.get(fee.currency, 0) + fee.amount_minor
        return BillingResult(
            customer_id=request.customer_id,
            period=request.period,
            fees=self._fees,
            fees_charged_minor=charged,
            fees_waived_minor=waived,
            statement=self._statement,
        )

    async def _charge_fees(self, request: BillingInput, cards: list[ActiveCard]) -> None:
        fees = request.policy.monthly_fee_minor
        currencies = sorted({c.currency for c in cards if fees.get(c.currency, 0) > 0})
        if currencies:
            await step(
                request,
                LedgerActivities.open_accounts,
                [system_account(revenue_fees(c)) for c in currencies],
            )
        for card in cards:
            amount = fees.get(card.currency, 0)
            if amount == 0:
                self._fees.append(
                    FeeCharge(
                        card_id=card.card_id,
                        currency=card.currency,
                        amount_minor=0,
                        status="no_fee",
                    )
                )
                continue
            fee = TransferRequest(
                key=step_key(fee_step(card.card_id)),
                debit=wallet(request.customer_id, card.currency),
                credit=revenue_fees(card.currency),
                amount_minor=amount,
                currency=card.currency,
            )
            await self._charge(request, card, fee)

    async def _charge(self, request: BillingInput, card: ActiveCard, fee: TransferRequest) -> None:
        """Charge one card's fee (or learn, submitting it again, how it went) and record it."""
        self._charging = (card, fee)
        outcome = await step(request, LedgerActivities.transfer, fee)
        self._charging = None
        self._fees.append(
            FeeCharge(
                card_id=card.card_id,
                currency=card.currency,
                amount_minor=fee.amount_minor,
                status="charged" if outcome.accepted else "waived",
                key=fee.key,
                transfer_id=outcome.transfer_id,
                reason="" if outcome.accepted else f"{outcome.rejection}: {outcome.detail}",
            )
        )
        charged = sum(f.amount_minor for f in self._fees if f.status == "charged")
        self.progress.search(
            AMOUNT_MINOR.value_set(charged), CURRENCY.value_set(card.currency.value)
        )
        self.progress.show()


@workflow.defn(name=BILLING_RUN_WORKFLOW)
class BillingRun:
    @workflow.init
    def __init__(self, request: BillingRunInput) -> None:
        self._input = request
        self._period = request.period or ""
        self.progress = ProcessStage("starting", self._details)
        self._started = request.started
        self._already_billed = request.already_billed
        self._failed = list(request.failed)
        self._after = request.after

    @workflow.run
    async def run(self, request: BillingRunInput) -> BillingRunResult:
        # A scheduled run bills the month before the one it starts in.
        self._period = request.period or previous_period(workflow.now())
        try:
            done = await self._bill_pages(request)
        # Failures and cancellation, but not the SDK's eviction of a cached workflow.
        except (Exception, asyncio.CancelledError) as error:
            self.progress.enter("cancelled" if is_cancellation(error) else "failed")
            raise
        if not done:
            workflow.continue_as_new(
                request.model_copy(
                    update={
                        "period": self._period,
                        "after": self._after,
                        "started": self._started,
                        "already_billed": self._already_billed,
                        "failed": self._failed,
                    }
                )
            )
        self.progress.enter("failed_some" if self._failed else "done")
        return BillingRunResult(
            period=self._period,
            started=self._started,
            already_billed=self._already_billed,
            failed=self._failed,
        )

    @workflow.query
    def status(self) -> BillingRunStatus:
        return BillingRunStatus(
            period=self._period,
            stage=self.progress.stage,
            started=self._started,
            already_billed=self._already_billed,
            failed=self._failed,
        )

    def _details(self) -> str:
        return (
            f"Billing run {self._period}: {self.progress.stage} | {self._started} billed now,"
            f" {self._already_billed} billed before, {len(self._failed)} failed"
        )

    async def _bill_pages(self, request: BillingRunInput) -> bool:
        """Bill page after page; False when the run should continue as new."""
        _, end = period_bounds(self._period)
        if workflow.patched(BILLING_PERIOD_ENDED_PATCH):
            # A month not over starts no child: each would fail, and its
            # customers' months are left for the run once it is over.
            refusal = month_not_ended(self._period, workflow.now())
            if refusal is not None:
                raise ApplicationError(refusal, type=PERIOD_NOT_ENDED_ERROR, non_retryable=True)
        self._after = request.after
        for _ in range(request.policy.pages_per_run_max):
            self.progress.enter("billing")
            page = await step(
                request,
                BillingActivities.customers_page,
                CustomersPageRequest(
                    period_end=end, after=self._after, limit=request.policy.page_size
                ),
            )
            await asyncio.gather(*(self._bill_one(request, c) for c in page.customer_ids))
            if page.next_after is None:
                return True
            self._after = page.next_after
        return False

    async def _bill_one(self, request: BillingRunInput, customer_id: str) -> None:
        billing = BillingInput(
            customer_id=customer_id,
            period=self._period,
            statements_dir=request.statements_dir,
            policy=request.billing_policy,
            ledger_task_queue=request.ledger_task_queue,
            providers_task_queue=request.providers_task_queue,
            workflows_task_queue=request.workflows_task_queue,
        )
        metadata = billing_start_metadata(billing)
        try:
            await workflow.execute_child_workflow(
                Billing.run,
                billing,
                id=billing_workflow_id(customer_id, self._period),
                static_summary=metadata.summary,
                static_details=metadata.details,
                task_queue=request.workflows_task_queue,
                id_reuse_policy=BILLING_ID_REUSE_POLICY,
                parent_close_policy=ParentClosePolicy.ABANDON,
                run_timeout=BILLING_CHILD_RUN_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            self._already_billed += 1
            return
        except ChildWorkflowError:
            if len(self._failed) < 1_000:
                self._failed.append(customer_id)
            return
        self._started += 1
