"""The daily settlement ingest driver `ScheduledSettlementIngest`: the action
of the daily Temporal Schedule `settlement-issuer-daily`. It starts the
day's ingest (workflows/settlement.py) as a child, `settlement/issuer/{day}`,
for the UTC day before the scheduled time (or the day a backfill names),
and ends once the child has started: the ingest outlives it (it may wait a
day for operators' decisions), so the next day's run is never skipped as
an overlap.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from schemas.periods import PERIOD_NOT_ENDED_ERROR, day_not_ended
    from schemas.reconciliation import ISSUER_PROVIDER
    from schemas.search import PROVIDER
    from schemas.settlement_ingest import (
        ScheduledSettlementInput,
        ScheduledSettlementResult,
        SettlementIngestInput,
    )
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.settlement import (
        SettlementIngest,
        settlement_start_metadata,
        settlement_workflow_id,
    )

SCHEDULED_SETTLEMENT_WORKFLOW = "ScheduledSettlementIngest"
# Set by the Temporal server on every workflow a schedule starts.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def scheduled_settlement_start_metadata(request: ScheduledSettlementInput) -> StartMetadata:
    day = request.settlement_date.isoformat() if request.settlement_date else None
    return start_metadata(
        f"Daily settlement ingest driver ({day or 'the day before the scheduled time'})",
        {
            "provider": ISSUER_PROVIDER,
            "settlement date": day or "the day before the scheduled time",
        },
        "the day's ingest starting (a child `settlement/issuer/{date}`)",
    )


@workflow.defn(name=SCHEDULED_SETTLEMENT_WORKFLOW)
class ScheduledSettlementIngest:
    """Start `settlement/issuer/{day}` for the UTC day before the scheduled
    time. A day ingested already (or being ingested) is left alone; a failed
    one is ingested again (every write of the ingest is keyed, so it changes
    only what is missing); a day not over (a backfill asked too early) is
    refused without starting it."""

    def __init__(self) -> None:
        self.progress = ProcessStage("starting", self._details)
        self._child_id: str | None = None

    @workflow.run
    async def run(self, request: ScheduledSettlementInput) -> ScheduledSettlementResult:
        day = request.settlement_date or self._previous_day()
        child_id = settlement_workflow_id(ISSUER_PROVIDER, day)
        self._child_id = child_id
        self.progress.search(PROVIDER.value_set(ISSUER_PROVIDER))
        refusal = day_not_ended(day, workflow.now())
        if refusal is not None:
            # The issuer writes a day's file once the day is over: a backfill
            # asked too early starts nothing, so the day's id stays free.
            self.progress.enter("refused")
            raise ApplicationError(refusal, type=PERIOD_NOT_ENDED_ERROR, non_retryable=True)
        self.progress.enter("starting_ingest")
        ingest = SettlementIngestInput(
            settlement_date=day,
            file_format=request.file_format,
            operators_email=request.operators_email,
            policy=request.policy,
            ledger_task_queue=request.ledger_task_queue,
            providers_task_queue=request.providers_task_queue,
            workflows_task_queue=request.workflows_task_queue,
        )
        metadata = settlement_start_metadata(ingest)
        try:
            await workflow.start_child_workflow(
                SettlementIngest.run,
                ingest,
                id=child_id,
                static_summary=metadata.summary,
                static_details=metadata.details,
                task_queue=request.workflows_task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                # The day's ingest outlives its driver.
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            self.progress.enter("already_ingested")
            return ScheduledSettlementResult(
                workflow_id=child_id, settlement_date=day, started=False
            )
        self.progress.enter("started")
        return ScheduledSettlementResult(workflow_id=child_id, settlement_date=day, started=True)

    def _previous_day(self) -> date:
        scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
        moment: datetime = scheduled if scheduled is not None else workflow.now()
        return moment.astimezone(UTC).date() - timedelta(days=1)

    @workflow.query
    def status(self) -> str:
        return self._details()

    def _details(self) -> str:
        return f"{self.progress.stage}: {self._child_id}"
