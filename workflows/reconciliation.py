"""Reconciliation `reconciliation/{provider}/{date}`: the issuer's settlement
report for one UTC day against the ledger.

Only a day that has ended is reconciled (schemas/periods.py): a run asked
for today or a later day, by the workflow's own clock, fails at once and
non-retryably, before it touches anything, so the day's id is left for the
run once the day is over (the starters and the API refuse it before that).

Steps: download the report page by page into a staging table
(`reconciliation.download_settlement_report`, providers queue; it heartbeats
its cursor, so after a worker crash the retry resumes from the last page it
staged, on any worker); correct earlier fixes that no longer stand (below);
match every card-posting record (clearing, force post, refund) with the
card's postings on issuer:settlement:{CCY}, and the day's postings with the
report (`reconciliation.match`, ledger queue). Each difference is one item,
keyed by the issuer transaction id: missing in the ledger, missing at the
issuer, amount mismatch or duplicate, with its delta (what the issuer
settled minus what the card posted to issuer:settlement) and what
reconciliation's own transfers for the transaction already move there
(`fixed_before_minor`: a failed run of the same day fixed it already).

An item whose delta is below the currency's threshold is fixed at once: one
transfer between suspense:reconciliation:{CCY} and issuer:settlement:{CCY}
of the delta less what is already fixed, keyed
`{workflow id}/fix/{item id}/from/{fixed before}/to/{delta}`. A retry or a
re-run of the day that finds the same posts it once; a re-run after the
postings changed (between a failed run and its re-run) posts only what is
left, under another key, never meeting its own earlier key with another
amount. Larger items wait for an operator's `decide` update (adjust:
the same transfer; dismiss: nothing posted), after one e-mail to the
operations mailbox naming them; items undecided when the policy's wait ends
stay flagged `undecided` in the report. The report (JSON and CSV under
{CARDFLOW_HOME}/reports/) and the result carry the counts, the amounts and
the drift rates.

Late postings: a fix stands in for a posting the card has not made (or made
differently). Each fix is kept (`reconciliation_fixes`) with the card's
postings for the transaction at that moment, and every run first looks back
over the policy's `late_posting_lookback_days` (its own day included) at the
fixes not yet corrected: where the card's postings on issuer:settlement have
changed since (the held-back webhook of a missing clearing arrived; the card
posted the rest, or took back part, of a mismatched amount), the fix now
counts twice with them, and the run posts the correction once: card then -
card now, between issuer:settlement and suspense (for a late posting of a
missing clearing: the fix reversed in full), keyed `{fix key}/reversed` from
the ORIGINAL fix's key so that every run finding it posts the same transfer.
The report lists them as `late_posting_reversed`, with counts and amounts.
This holds for every kind of fix, since it compares the card's own postings
only: a missing-in-ledger fix, an amount mismatch whose card posting changes
later, a duplicate posted a third time.

Late settlements: a transaction fixed on an earlier day as not settled by
the issuer (missing at the issuer) may be settled by it on a later day; the
run of that day finds it in its own report. The earlier fix no longer
stands: the run takes back all that it (and any correction of it) still
moves on issuer:settlement, keyed `{fix key}/settled-late`, and the day's
matching takes the transaction over (issuer against card). Listed as
`late_settlement_reversed`. These corrections come before the matching, so
it reads reconciliation's own transfers as they now stand.

Compensations: none to register. Every posting is a forward correction into
suspense, idempotent by key; undoing one would re-open the difference it
explained. The report is written last and is rewritten by a re-run.

The daily driver that runs it from the Temporal Schedule is
workflows/scheduled_reconciliation.py; the report's figures are computed in
workflows/reconciliation_report.py.
"""

from __future__ import annotations

from datetime import date, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.ledger.activities import LedgerActivities
    from activities.ledger.errors import IdempotencyConflict
    from activities.providers.http import NON_RETRYABLE_ERROR_TYPES
    from activities.reconciliation import (
        OperatorNotice,
        ReconciliationLedgerActivities,
        ReconciliationProviderActivities,
        ReportWrite,
    )
    from schemas import accounts
    from schemas.ledger import TransferRequest
    from schemas.money import Currency
    from schemas.periods import PERIOD_NOT_ENDED_ERROR, day_not_ended
    from schemas.reconciliation import (
        Decision,
        DecisionAction,
        DownloadRequest,
        FixRecord,
        LatePosting,
        LatePostingLookup,
        MatchRequest,
        ReconciliationInput,
        ReconciliationItem,
        ReconciliationResult,
        ReconciliationStatus,
        ReversalKind,
        ReversalMark,
    )
    from schemas.refusals import Refusal, refused
    from schemas.search import AMOUNT_MINOR, PROVIDER
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.reconciliation_report import reconciliation_report
    from workflows.steps import step, step_key, wait_for

DECIDE_UPDATE = "decide"
# The stage (and ProcessStatus) while differences wait for operators' decisions.
STAGE_AWAITING_DECISIONS = "awaiting_decisions"
RECONCILIATION_WORKFLOW = "Reconciliation"
# The ledger's error type for a key reused with another payload.
IDEMPOTENCY_CONFLICT = IdempotencyConflict.__name__


def reconciliation_workflow_id(provider: str, settlement_date: date) -> str:
    return f"reconciliation/{provider}/{settlement_date.isoformat()}"


def reconciliation_start_metadata(request: ReconciliationInput) -> StartMetadata:
    day = request.settlement_date.isoformat()
    return start_metadata(
        f"Reconciliation with the {request.provider} for {day}",
        {"provider": request.provider, "settlement date": day},
        "the issuer's settlement report; operators' `decide` updates for differences"
        " above the threshold",
    )


@workflow.defn(name=RECONCILIATION_WORKFLOW)
class Reconciliation:
    def __init__(self) -> None:
        self._input: ReconciliationInput | None = None
        self.progress = ProcessStage("starting", self._details)
        self._items: dict[str, ReconciliationItem] = {}
        self._reversals: list[LatePosting] = []
        self._deciding = False

    # ----- platform ---------------------------------------------------------

    @workflow.run
    async def run(self, request: ReconciliationInput) -> ReconciliationResult:
        self._input = request
        self.progress.search(PROVIDER.value_set(request.provider))
        refusal = day_not_ended(request.settlement_date, workflow.now())
        if refusal is not None:
            # Started past the starters' check: fail before touching anything,
            # so the day's id stays free for the run once the day is over.
            self.progress.enter("refused")
            raise ApplicationError(refusal, type=PERIOD_NOT_ENDED_ERROR, non_retryable=True)
        result = await self._reconcile(request)
        self._deciding = False
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    # ----- business steps ---------------------------------------------------

    async def _reconcile(self, request: ReconciliationInput) -> ReconciliationResult:
        policy = request.policy
        self.progress.enter("downloading")
        # Its own timeouts and heartbeat: a long report resumes from its last page.
        download = await workflow.execute_activity_method(
            ReconciliationProviderActivities.download,
            DownloadRequest(
                run_key=workflow.info().workflow_id,
                settlement_date=request.settlement_date,
                page_size=policy.page_size,
            ),
            task_queue=request.providers_task_queue,
            start_to_close_timeout=timedelta(seconds=policy.download_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=policy.download_heartbeat_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                maximum_attempts=policy.download_attempts_max,
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )
        # Earlier fixes that no longer stand are corrected first, so that the
        # matching reads what reconciliation has already moved as it now is.
        late = await self._find_late_postings(request)
        if late:
            await self._open_accounts({found.fix.difference.currency for found in late})
            self.progress.enter("reversing_late_postings")
            for found in late:
                await self._reverse_late_posting(found)
        self.progress.enter("matching")
        matched = await step(
            request,
            ReconciliationLedgerActivities.match,
            MatchRequest(
                run_key=workflow.info().workflow_id, settlement_date=request.settlement_date
            ),
        )
        for difference in matched.differences:
            small = abs(difference.delta_minor) < policy.threshold(difference.currency)
            self._items[difference.item_id] = ReconciliationItem(
                difference=difference, state="auto_fixed" if small else "awaiting_decision"
            )
        currencies = {item.difference.currency for item in self._items.values()}
        if currencies:
            await self._open_accounts(currencies)
        self.progress.enter("fixing")
        for item in self._items.values():
            if item.state == "auto_fixed":
                await self._post_fix(item)
        waiting = [item for item in self._items.values() if item.state == "awaiting_decision"]
        if waiting:
            await self._ask_operators(request, waiting)
            self._deciding = True
            # What waits for the operators is searchable (AmountMinor: the sum
            # of the differences), in the stage's own upsert.
            self.progress.enter(
                STAGE_AWAITING_DECISIONS,
                AMOUNT_MINOR.value_set(sum(abs(item.difference.delta_minor) for item in waiting)),
            )
            await wait_for(self._all_decided, policy.decision_wait_seconds)
            self._deciding = False
            for item in self._items.values():
                if item.state == "awaiting_decision":
                    item.state = "undecided"
        self.progress.enter("reporting")
        report = reconciliation_report(
            workflow.info().workflow_id,
            request,
            download,
            matched,
            list(self._items.values()),
            self._reversals,
        )
        paths = await step(
            request,
            ReconciliationLedgerActivities.write_report,
            ReportWrite(reports_dir=request.reports_dir, report=report),
        )
        unexplained = sum(summary.unexplained_minor for summary in report.currencies)
        self.progress.search(AMOUNT_MINOR.value_set(unexplained))
        self.progress.enter("drift" if unexplained else "reconciled")
        return ReconciliationResult(report=report, paths=paths)

    async def _open_accounts(self, currencies: set[Currency]) -> None:
        assert self._input is not None
        specs = []
        for currency in sorted(currencies):
            specs.append(accounts.system_account(accounts.issuer_settlement(currency)))
            specs.append(accounts.system_account(accounts.suspense_reconciliation(currency)))
        await step(self._input, LedgerActivities.open_accounts, specs)

    async def _post_fix(self, item: ReconciliationItem) -> None:
        """Bring issuer:settlement in line with the issuer through suspense:
        the difference less what earlier runs' fixes of the transaction still
        move (a failed run of the day, postings changed since), under a key
        that names the item and both amounts, so a re-run never meets its own
        key with another amount and never posts the same difference twice."""
        assert self._input is not None
        difference = item.difference
        before = difference.fixed_before_minor
        amount = difference.delta_minor - before
        if amount == 0:
            return  # earlier fixes of the transaction already stand for it
        settlement = accounts.issuer_settlement(difference.currency)
        suspense = accounts.suspense_reconciliation(difference.currency)
        # > 0: the issuer settled more than the ledger holds, so the
        # settlement account is credited from suspense; < 0 the other way.
        debit, credit = (suspense, settlement) if amount > 0 else (settlement, suspense)
        key = step_key(f"fix/{difference.item_id}/from/{before}/to/{difference.delta_minor}")
        outcome = await step(
            self._input,
            LedgerActivities.transfer,
            TransferRequest(
                key=key,
                debit=debit,
                credit=credit,
                amount_minor=abs(amount),
                currency=difference.currency,
            ),
        )
        # Both accounts are unconstrained system accounts: nothing can refuse it.
        assert outcome.accepted, outcome.detail
        item.transfer_key = key
        # Kept so that a later run can tell when the card's own posting
        # arrives after all and would count twice with this fix.
        await step(
            self._input,
            ReconciliationLedgerActivities.record_fix,
            FixRecord(
                fix_key=key,
                run_key=workflow.info().workflow_id,
                settlement_date=self._input.settlement_date,
                difference=difference,
            ),
        )

    async def _find_late_postings(self, request: ReconciliationInput) -> list[LatePosting]:
        """Earlier fixes (this day and the policy's look-back before it) whose
        transaction the card has posted to since they were made."""
        since = request.settlement_date - timedelta(days=request.policy.late_posting_lookback_days)
        return await step(
            request,
            ReconciliationLedgerActivities.find_late_postings,
            LatePostingLookup(
                since_date=since,
                until_date=request.settlement_date,
                run_key=workflow.info().workflow_id,
            ),
        )

    async def _reverse_late_posting(self, late: LatePosting) -> None:
        """Undo what a fix no longer stands for: a late card posting doubled
        it (issuer:settlement back to what the issuer settled), or the issuer
        settled its transaction on this later day (the fix taken back; this
        day's matching takes the transaction over). The key comes from the
        original fix's key, not from this run, so every run that finds the
        fix posts the same transfer and the ledger keeps it once."""
        assert self._input is not None
        assert late.correction_minor != 0, "the look-back returns fixes to correct only"
        fixed = late.fix.difference
        settlement = accounts.issuer_settlement(fixed.currency)
        suspense = accounts.suspense_reconciliation(fixed.currency)
        # correction > 0 credits the settlement account from suspense, like a
        # fix with delta > 0; a late posting of a missing clearing is the
        # opposite of its fix: settlement -> suspense.
        debit, credit = (
            (suspense, settlement) if late.correction_minor > 0 else (settlement, suspense)
        )
        key = late.correction_key
        try:
            outcome = await step(
                self._input,
                LedgerActivities.transfer,
                TransferRequest(
                    key=key,
                    debit=debit,
                    credit=credit,
                    amount_minor=abs(late.correction_minor),
                    currency=fixed.currency,
                ),
            )
        except ActivityError as error:
            cause = error.cause
            if isinstance(cause, ApplicationError) and cause.type == IDEMPOTENCY_CONFLICT:
                # Another run corrected this fix first, for a card posting
                # that has changed again since; that run reports it.
                return
            raise
        # Both accounts are unconstrained system accounts: nothing can refuse it.
        assert outcome.accepted, outcome.detail
        closed = await step(
            self._input,
            ReconciliationLedgerActivities.mark_reversed,
            ReversalMark(
                fix_key=late.fix.fix_key,
                reversal_key=key,
                correction_minor=late.correction_minor,
                ledger_amount_now_minor=late.ledger_amount_now_minor,
                reversed_by=workflow.info().workflow_id,
            ),
        )
        # A late settlement is this run's to report even when the fix was
        # closed before (by a late posting); a late posting, only if this
        # run closed the fix.
        if closed or late.kind is ReversalKind.LATE_SETTLEMENT_REVERSED:
            late.transfer_key = key
            self._reversals.append(late)

    async def _ask_operators(
        self, request: ReconciliationInput, waiting: list[ReconciliationItem]
    ) -> None:
        workflow_id = workflow.info().workflow_id
        lines = [
            f"- {item.difference.item_id}: {item.difference.kind.value}, "
            f"delta {item.difference.delta_minor} {item.difference.currency.value} minor"
            for item in waiting
        ]
        await step(
            request,
            ReconciliationProviderActivities.notify_operators,
            OperatorNotice(
                key=step_key("notify-operators"),
                to=request.operators_email,
                subject=f"{workflow_id}: {len(waiting)} differences need a decision",
                body=(
                    f"Reconciliation {workflow_id} found differences over the threshold:\n"
                    + "\n".join(lines)
                    + f"\nDecide each within {request.policy.decision_wait_seconds} s: "
                    f"cardflow reconcile decide --date {request.settlement_date.isoformat()} "
                    "--item ITEM --action adjust|dismiss --operator NAME"
                ),
            ),
        )

    def _all_decided(self) -> bool:
        return all(item.state != "awaiting_decision" for item in self._items.values())

    # ----- operators --------------------------------------------------------

    @workflow.update(name=DECIDE_UPDATE)
    async def decide(self, decision: Decision) -> ReconciliationItem:
        item = self._items[decision.item_id]
        action = DecisionAction(decision.action)
        item.state = "adjusted" if action is DecisionAction.ADJUST else "dismissed"
        item.decided_by = decision.operator
        item.reason = decision.reason or None
        if action is DecisionAction.ADJUST:
            await self._post_fix(item)
        self.progress.show()
        return item

    @decide.validator
    def _validate_decide(self, decision: Decision) -> None:
        if decision.action not in {action.value for action in DecisionAction}:
            raise refused(
                Refusal.INVALID_REQUEST,
                f"action: {decision.action!r} is not one of "
                f"{', '.join(action.value for action in DecisionAction)}",
            )
        item = self._items.get(decision.item_id)
        if item is None:
            raise refused(
                Refusal.NOT_FOUND,
                f"item_id: no difference {decision.item_id!r} in this reconciliation",
            )
        if not self._deciding or item.state != "awaiting_decision":
            raise refused(
                Refusal.WRONG_STATE,
                f"item_id: {decision.item_id!r} is {item.state}, not awaiting a decision",
            )

    @workflow.query
    def status(self) -> ReconciliationStatus:
        assert self._input is not None
        return ReconciliationStatus(
            stage=self.progress.stage,
            settlement_date=self._input.settlement_date,
            items=list(self._items.values()),
            reversals=list(self._reversals),
        )

    # ----- current details --------------------------------------------------

    def _details(self) -> str:
        assert self._input is not None
        waiting = sum(1 for item in self._items.values() if item.state == "awaiting_decision")
        return (
            f"**{self._input.provider} {self._input.settlement_date.isoformat()}**: "
            f"{self.progress.stage}; "
            f"{len(self._items)} differences, {waiting} awaiting a decision, "
            f"{len(self._reversals)} earlier fixes reversed after a late posting or settlement"
        )
