"""Fraud: the scheduled scan `fraud-scan` and an operator's case
`fraud-case/{case_id}`.

The scan (the Temporal Schedule `fraud-scan` starts one every interval,
starters/fraud.py; `cardflow fraud scan` by hand) scores, page by page, the
customers with activity in the policy's window (schemas/fraud.py says how)
and opens a case for each at or over the case threshold, as a child process
left running when the scan ends. The window ends at the run's `as_of` (its
workflow clock at its start unless the input names it), so a run started
again under its id scores the same window. A case's id is the customer's and
the scan day's (`{customer_id}-{YYYYMMDD}`): a second scan that day starts
none (the id is taken, whatever became of it), and a customer with an open
case (another day's) gets none either. Past PAGES_PER_RUN_MAX pages a scan
continues as new from the last customer scored.

A case records itself (fraud_cases, one open case per customer; one that
finds another open ends `duplicate`), freezes the customer's cards when its
score is at or over the auto-freeze threshold (through each card's own
`freeze` update, once per card: a card frozen or closed already is left,
and not counted as the case's), e-mails the operations mailbox, and waits
for an operator's `decide` update: `clear` unfreezes the cards the case
froze; `confirm` keeps them frozen, or closes every card of the customer
with `close_cards` (a card with open authorizations stays frozen, named).
Unanswered for `escalation_seconds`, the case is escalated (ProcessStatus
`escalated`, fraud_cases too) and the operators are e-mailed again, up to
`escalations_max` times; it keeps waiting.

Nothing is compensated: a frozen card stays frozen until an operator
decides; every card change is keyed by the case and the card.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.fraud import FraudLedgerActivities, FraudProviderActivities
    from schemas.fraud import (
        REPORT_SCORES_MAX,
        ActiveCustomersRequest,
        CaseChange,
        CaseRecord,
        FraudCardChange,
        FraudCaseInput,
        FraudCaseOutcome,
        FraudCaseState,
        FraudCaseStatus,
        FraudDecision,
        FraudNotice,
        FraudScanInput,
        FraudScanReport,
        FraudScore,
        ScorePageRequest,
        UsdtSourcesRequest,
        fraud_case_id,
    )
    from schemas.refusals import Refusal, refused
    from schemas.search import CUSTOMER_ID
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import Finished, ProcessStage
    from workflows.steps import step, step_key, wait_for

FRAUD_SCAN_WORKFLOW = "FraudScan"
FRAUD_CASE_WORKFLOW = "FraudCase"
# The schedule's runs get this id and the time Temporal appends to it.
FRAUD_SCAN_WORKFLOW_ID = "fraud-scan"
DECIDE_UPDATE = "decide"

# Pages one run scores before it continues as new (its history stays small).
PAGES_PER_RUN_MAX = 50

STAGE_SCORING = "scoring"
STAGE_DONE = "done"
STAGE_RECORDING = "recording"
STAGE_FREEZING = "freezing the cards"
STAGE_WAITING = "waiting for an operator"
STAGE_ESCALATED = "escalated"
STAGE_APPLYING = "applying the decision"
WAITING_STAGES = (STAGE_WAITING, STAGE_ESCALATED)


def fraud_case_workflow_id(case_id: str) -> str:
    return f"fraud-case/{case_id}"


def fraud_scan_start_metadata(request: FraudScanInput) -> StartMetadata:
    policy = request.policy
    return start_metadata(
        "Fraud scan: customers' recent activity scored; cases opened over the threshold",
        {
            "window": f"{policy.window_days} days",
            "case threshold": policy.case_threshold,
            "auto-freeze threshold": policy.auto_freeze_threshold,
        },
        "nothing: it reads and scores, and starts a case for each customer over the threshold",
    )


def fraud_case_start_metadata(request: FraudCaseInput) -> StartMetadata:
    return start_metadata(
        f"Fraud case {request.case_id}: customer {request.customer_id},"
        f" score {request.score.score}",
        {
            "case": request.case_id,
            "customer": request.customer_id,
            "score": request.score.score,
            "signals": ", ".join(
                signal.name.value for signal in request.score.signals if signal.points
            ),
            "opened by": request.opened_by or None,
        },
        "an operator's `decide` update (clear or confirm); escalated when unanswered",
    )


# ----- the scan --------------------------------------------------------------------------


@workflow.defn(name=FRAUD_SCAN_WORKFLOW)
class FraudScan:
    @workflow.init
    def __init__(self, request: FraudScanInput) -> None:
        self._input = request
        self._report = FraudScanReport(workflow_id=workflow.info().workflow_id, stage=STAGE_SCORING)
        self.progress = ProcessStage(STAGE_SCORING, self._details)

    @workflow.run
    async def run(self, request: FraudScanInput) -> FraudScanReport:
        self.progress.enter(STAGE_SCORING)
        as_of = request.as_of or workflow.now()
        window_start = as_of - timedelta(days=request.policy.window_days)
        self._report.as_of, self._report.window_start = as_of, window_start
        after = request.after_customer_id
        for _ in range(PAGES_PER_RUN_MAX):
            page = await self._score_page(request, as_of, window_start, after)
            if page is None:
                break
            after = page
        else:
            workflow.continue_as_new(
                request.model_copy(
                    update={
                        "as_of": as_of,
                        "after_customer_id": after,
                        "pages_before": request.pages_before + self._report.pages,
                    }
                )
            )
        self.progress.enter(STAGE_DONE)
        return self.status()

    async def _score_page(
        self, request: FraudScanInput, as_of: datetime, window_start: datetime, after: str | None
    ) -> str | None:
        """Score the next page; the last customer scored, or None at the end."""
        policy = request.policy
        active = await step(
            request,
            FraudLedgerActivities.active_customers,
            ActiveCustomersRequest(
                since=window_start, until=as_of, after_customer_id=after, limit=policy.page_size
            ),
        )
        if not active.customer_ids:
            return None
        sources = {}
        if active.usdt_customer_ids:
            found = await step(
                request,
                FraudProviderActivities.usdt_sources,
                UsdtSourcesRequest(customer_ids=active.usdt_customer_ids),
            )
            sources = found.sources
        scored = await step(
            request,
            FraudLedgerActivities.score_page,
            ScorePageRequest(
                customer_ids=active.customer_ids,
                window_start=window_start,
                window_end=as_of,
                policy=policy,
                usdt_sources=sources,
            ),
        )
        self._report.pages += 1
        self._report.customers_scored += len(active.customer_ids)
        over = [score for score in scored.scores if score.score >= policy.case_threshold]
        self._report.over_threshold += len(over)
        self._report.top_scores = sorted(
            [*self._report.top_scores, *scored.scores],
            key=lambda score: (-score.score, score.customer_id),
        )[:REPORT_SCORES_MAX]
        if over:
            open_cases = await step(
                request, FraudLedgerActivities.open_cases, [score.customer_id for score in over]
            )
            for score in over:
                await self._open_case(request, score, as_of, open_cases.get(score.customer_id))
        self.progress.show()
        if len(active.customer_ids) < policy.page_size:
            return None
        return active.customer_ids[-1]

    async def _open_case(
        self, request: FraudScanInput, score: FraudScore, as_of: datetime, open_case: str | None
    ) -> None:
        case_id = fraud_case_id(score.customer_id, as_of.date())
        if open_case is not None and open_case != case_id:
            self._report.cases_already_open.append(open_case)
            return
        case = FraudCaseInput(
            case_id=case_id,
            customer_id=score.customer_id,
            score=score,
            policy=request.policy,
            opened_by=workflow.info().workflow_id,
            operators_email=request.operators_email,
            ledger_task_queue=request.ledger_task_queue,
            providers_task_queue=request.providers_task_queue,
        )
        metadata = fraud_case_start_metadata(case)
        try:
            await workflow.start_child_workflow(
                FraudCase.run,
                case,
                id=fraud_case_workflow_id(case_id),
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                parent_close_policy=ParentClosePolicy.ABANDON,
                static_summary=metadata.summary,
                static_details=metadata.details,
            )
        except WorkflowAlreadyStartedError:
            # Opened by an earlier scan today (or this one, started again).
            self._report.cases_already_open.append(case_id)
            return
        self._report.cases_opened.append(case_id)

    @workflow.query
    def status(self) -> FraudScanReport:
        return self._report.model_copy(update={"stage": self.progress.stage})

    def _details(self) -> str:
        report = self._report
        lines = [
            f"**{self.progress.stage}**",
            "",
            f"- {report.customers_scored} customers scored in {report.pages} pages"
            f" ({self._input.pages_before} pages before this run)",
            f"- {report.over_threshold} at or over {self._input.policy.case_threshold}",
            f"- cases opened: {', '.join(report.cases_opened) or 'none'}",
        ]
        if report.cases_already_open:
            lines.append(f"- already open: {', '.join(report.cases_already_open)}")
        return "\n".join(lines)


# ----- a case ----------------------------------------------------------------------------


@workflow.defn(name=FRAUD_CASE_WORKFLOW)
class FraudCase:
    @workflow.init
    def __init__(self, request: FraudCaseInput) -> None:
        self._input = request
        self.progress = ProcessStage(STAGE_RECORDING, self._details)
        self._auto_freeze = request.score.score >= request.policy.auto_freeze_threshold
        self._frozen: list[str] = []
        self._unfrozen: list[str] = []
        self._closed: list[str] = []
        self._not_closed: list[str] = []
        self._escalations = 0
        self._decision: FraudDecision | None = None
        self._outcome: FraudCaseOutcome | None = None
        self._reason: str | None = None

    # ----- platform: outcome ----------------------------------------------------

    @workflow.run
    async def run(self, request: FraudCaseInput) -> FraudCaseStatus:
        self.progress.search(CUSTOMER_ID.value_set(request.customer_id))
        try:
            await self._handle(request)
            raise AssertionError("the case ended without an outcome")
        except Finished as finished:
            self._outcome, self._reason = finished.outcome, finished.reason
        assert self._outcome is not None
        self.progress.enter(self._outcome)
        return self.status()

    # ----- business steps -------------------------------------------------------

    async def _handle(self, request: FraudCaseInput) -> None:
        self.progress.enter(STAGE_RECORDING)
        recorded = await step(
            request,
            FraudLedgerActivities.record_case,
            CaseRecord(
                case_id=request.case_id,
                customer_id=request.customer_id,
                workflow_id=workflow.info().workflow_id,
                score=request.score.score,
                signals=request.score.signals,
                auto_freeze=self._auto_freeze,
            ),
        )
        if not recorded.open_here:
            raise Finished("duplicate", f"case {recorded.open_case_id} is open for the customer")
        if self._auto_freeze:
            await self._freeze(request)
        await self._tell_operators(request, "opened")
        await self._await_decision(request)
        decision = self._decision
        assert decision is not None
        self.progress.enter(STAGE_APPLYING)
        if decision.action == "clear":
            for card_id in self._frozen:
                if await self._card(card_id, "unfreeze", decision.reason):
                    self._unfrozen.append(card_id)
            outcome: FraudCaseOutcome = "cleared"
        else:
            if decision.close_cards:
                cards = await step(
                    request, FraudLedgerActivities.customer_cards, request.customer_id
                )
                for card_id in cards:
                    if await self._card(card_id, "close", decision.reason):
                        self._closed.append(card_id)
                    elif card_id in self._frozen:
                        self._not_closed.append(card_id)
            outcome = "confirmed"
        await self._change("cleared" if outcome == "cleared" else "confirmed")
        raise Finished(outcome, f"operator {decision.operator}: {decision.reason}")

    async def _freeze(self, request: FraudCaseInput) -> None:
        self.progress.enter(STAGE_FREEZING)
        cards = await step(request, FraudLedgerActivities.customer_cards, request.customer_id)
        for card_id in cards:
            if await self._card(card_id, "freeze", f"fraud case {request.case_id}"):
                self._frozen.append(card_id)
        await self._change("open")

    async def _await_decision(self, request: FraudCaseInput) -> None:
        policy = request.policy
        self.progress.enter(STAGE_WAITING)
        while not await wait_for(lambda: self._decision is not None, policy.escalation_seconds):
            if self._escalations >= policy.escalations_max:
                await workflow.wait_condition(lambda: self._decision is not None)
                return
            self._escalations += 1
            self.progress.enter(STAGE_ESCALATED)
            await self._change("escalated")
            await self._tell_operators(request, f"escalated/{self._escalations}")

    async def _card(self, card_id: str, action: str, reason: str) -> bool:
        outcome = await step(
            self._input,
            FraudLedgerActivities.change_card,
            FraudCardChange(
                card_id=card_id,
                action="freeze"
                if action == "freeze"
                else "unfreeze"
                if action == "unfreeze"
                else "close",
                update_id=step_key(f"{action}/{card_id}"),
                reason=reason[:200],
            ),
        )
        return outcome.changed

    async def _change(self, status: FraudCaseState) -> None:
        await step(
            self._input,
            FraudLedgerActivities.change_case,
            CaseChange(
                case_id=self._input.case_id,
                status=status,
                frozen_cards=self._frozen,
                escalations=self._escalations,
                decision=self._decision if status in ("cleared", "confirmed") else None,
            ),
        )

    async def _tell_operators(self, request: FraudCaseInput, occasion: str) -> None:
        workflow_id = workflow.info().workflow_id
        escalated = occasion.startswith("escalated")
        subject = (
            f"{workflow_id}: unanswered, escalated ({self._escalations})"
            if escalated
            else f"{workflow_id}: customer {request.customer_id} scored {request.score.score}"
        )
        frozen = (
            f"Cards frozen by the case: {', '.join(self._frozen)}"
            if self._frozen
            else "No card was frozen by the case."
        )
        await step(
            request,
            FraudProviderActivities.notify_operators,
            FraudNotice(
                key=step_key(f"notify/{occasion}"),
                to=request.operators_email,
                subject=subject,
                body=(
                    f"Fraud case {request.case_id} for customer {request.customer_id},"
                    f" score {request.score.score}:\n\n"
                    + "\n".join(request.score.describe())
                    + f"\n\n{frozen}\n\n"
                    f"cardflow fraud decide {request.case_id} --clear|--confirm"
                    " --reason ... --operator ..."
                ),
            ),
        )

    # ----- messages -------------------------------------------------------------

    @workflow.update(name=DECIDE_UPDATE)
    async def decide(self, decision: FraudDecision) -> str:
        self._decision = decision
        return f"{decision.action} recorded"

    @decide.validator
    def _validate_decide(self, decision: FraudDecision) -> None:
        if self._outcome is not None:
            raise refused(Refusal.FINISHED, f"fraud case already finished ({self._outcome})")
        if self._decision is not None:
            raise refused(
                Refusal.ALREADY_DONE, f"this case was already decided ({self._decision.action})"
            )
        if self.progress.stage not in WAITING_STAGES:
            raise refused(
                Refusal.WRONG_STATE, f"no decision is pending yet (stage: {self.progress.stage})"
            )

    @workflow.query
    def status(self) -> FraudCaseStatus:
        request = self._input
        return FraudCaseStatus(
            case_id=request.case_id,
            customer_id=request.customer_id,
            stage=self.progress.stage,
            score=request.score.score,
            signals=request.score.signals,
            auto_freeze=self._auto_freeze,
            frozen_cards=self._frozen,
            unfrozen_cards=self._unfrozen,
            closed_cards=self._closed,
            cards_not_closed=self._not_closed,
            escalations=self._escalations,
            decision=self._decision,
            outcome=self._outcome,
            reason=self._reason,
        )

    def _details(self) -> str:
        request = self._input
        lines = [
            f"**{self.progress.stage}**",
            "",
            f"Customer {request.customer_id}, score {request.score.score}"
            f" (case at {request.policy.case_threshold},"
            f" auto-freeze at {request.policy.auto_freeze_threshold})",
            *request.score.describe(),
        ]
        if self._frozen:
            lines.append(f"Frozen by the case: {', '.join(self._frozen)}")
        if self._escalations:
            lines.append(f"Escalated {self._escalations} times")
        if self._decision is not None:
            lines.append(
                f"Decision: {self._decision.action} by {self._decision.operator}:"
                f" {self._decision.reason}"
            )
        return "\n".join(lines)
