"""The daily reconciliation driver `ScheduledReconciliation`: the action of
the daily Temporal Schedule. It runs the day's reconciliation
(workflows/reconciliation.py) as a child, `reconciliation/issuer/{day}`, for
the UTC day before the scheduled time (or the day a backfill names).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from schemas.periods import PERIOD_NOT_ENDED_ERROR, day_not_ended
    from schemas.reconciliation import (
        ReconciliationInput,
        ScheduledReconciliationInput,
        ScheduledReconciliationResult,
    )
    from schemas.search import PROVIDER
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.reconciliation import (
        Reconciliation,
        reconciliation_start_metadata,
        reconciliation_workflow_id,
    )

SCHEDULED_RECONCILIATION_WORKFLOW = "ScheduledReconciliation"
# Set by the Temporal server on every workflow a schedule starts.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def scheduled_reconciliation_start_metadata(
    request: ScheduledReconciliationInput,
) -> StartMetadata:
    day = request.settlement_date.isoformat() if request.settlement_date else None
    return start_metadata(
        f"Daily reconciliation driver ({day or 'the day before the scheduled time'})",
        {"provider": "issuer", "settlement date": day or "the day before the scheduled time"},
        "the day's reconciliation (a child `reconciliation/issuer/{date}`)",
    )


@workflow.defn(name=SCHEDULED_RECONCILIATION_WORKFLOW)
class ScheduledReconciliation:
    """The daily schedule's action: run `reconciliation/issuer/{day}` for the
    UTC day before the scheduled time. A day already reconciled (or running)
    is left alone; a failed one is run again; a day not over (a backfill
    asked too early) is refused without starting it."""

    def __init__(self) -> None:
        self.progress = ProcessStage("starting", self._details)
        self._child_id: str | None = None

    @workflow.run
    async def run(self, request: ScheduledReconciliationInput) -> ScheduledReconciliationResult:
        day = request.settlement_date or self._previous_day()
        child_id = reconciliation_workflow_id("issuer", day)
        self._child_id = child_id
        self.progress.search(PROVIDER.value_set("issuer"))
        refusal = day_not_ended(day, workflow.now())
        if refusal is not None:
            # A backfill asked for a day not over: no child, so the day's id
            # is free for the scheduled run.
            self.progress.enter("refused")
            raise ApplicationError(refusal, type=PERIOD_NOT_ENDED_ERROR, non_retryable=True)
        self.progress.enter("reconciling")
        reconciliation = ReconciliationInput(
            settlement_date=day,
            reports_dir=request.reports_dir,
            operators_email=request.operators_email,
            policy=request.policy,
            ledger_task_queue=request.ledger_task_queue,
            providers_task_queue=request.providers_task_queue,
            workflows_task_queue=request.workflows_task_queue,
        )
        metadata = reconciliation_start_metadata(reconciliation)
        try:
            await workflow.execute_child_workflow(
                Reconciliation.run,
                reconciliation,
                id=child_id,
                static_summary=metadata.summary,
                static_details=metadata.details,
                task_queue=request.workflows_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                # The day's reconciliation outlives a driver that is terminated.
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            self.progress.enter("already_reconciled")
            return ScheduledReconciliationResult(
                workflow_id=child_id, settlement_date=day, started=False
            )
        self.progress.enter("done")
        return ScheduledReconciliationResult(
            workflow_id=child_id, settlement_date=day, started=True
        )

    def _previous_day(self) -> date:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
        moment: datetime = scheduled if scheduled is not None else workflow.now()
        return moment.astimezone(UTC).date() - timedelta(days=1)

    @workflow.query
    def status(self) -> str:
        return self._details()

    def _details(self) -> str:
        return f"{self.progress.stage}: {self._child_id}"
