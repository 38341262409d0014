"""Settlement ingest `settlement/{provider}/{date}`: the issuer's daily
settlement file (schemas/settlement.py), every record matched against
cardflow's own card postings, the small differences fixed, the large ones
left to operators, and the day's interchange and fees posted once.

Steps (activities/settlement_ingest.py):
1. the manifest, recorded once per file content (`record_file`, providers
   queue);
2. every gzip member as its own chunk (`ingest_chunk`, providers queue, so
   chunks spread over every worker of that queue), `chunks_in_flight` at
   once: each streams its member in batches, stages, matches and classifies
   them set-based, posts the fixes under the auto-fix threshold through the
   ledger's batch API (keys from the record id) and records the rest for
   operators, heartbeats its progress (a retry resumes after it) and ends
   with a checkpoint (a checkpointed member is never read again);
3. once every chunk is done, the day's interchange revenue and issuer fees
   per currency in one ledger batch, keyed by provider, day and currency
   (`post_day_totals`, ledger queue);
4. drift (missing in the ledger, amount mismatch, unknown, duplicate: a
   transaction the issuer settled twice) counted and its
   rate in basis points of the card postings, by class, set as gauges for
   the dashboards (`record_drift`, ledger queue); operators e-mailed once
   when the rate reaches the policy's threshold;
5. the day's items over the auto-fix threshold still awaiting a decision
   (`operator_items`, at most the policy's decision_items_max, the oldest
   record ids first) named in one e-mail to the operators, who answer each
   with the `decide` update (adjust: the fix posted under the key of the
   record id, as an automatic fix would be; dismiss: nothing posted) until
   the policy's decision wait ends; the items undecided then are flagged in
   the result and stay open in the table for the day's next run.

A decision is recorded in the item's row before its fix is posted
(`decide_item`, ledger queue): the validator takes only an item this run
holds that awaits a decision, and the row takes only its first decision,
so a decision sent twice, or retried after a kill, posts its fix once.

The same file ingested twice, a chunk retried after a kill or a workflow
task run again changes nothing: every write is keyed by durable inputs (the
record ids, the file's sha256, the day). After `chunks_per_run` chunks the
workflow continues as new with its counts and the next member, so its
history stays short whatever the file's size.

Compensations: none. Every posting is a forward correction, idempotent by
key; undoing one would reopen the difference it explains.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.providers.http import NON_RETRYABLE_ERROR_TYPES
    from activities.reconciliation import OperatorNotice, ReconciliationProviderActivities
    from activities.settlement_decisions import SettlementDecisionActivities
    from activities.settlement_ingest import SettlementIngestActivities
    from schemas.reconciliation import DecisionAction
    from schemas.refusals import Refusal, refused
    from schemas.search import PROVIDER
    from schemas.settlement_ingest import (
        CARD_POSTING_CLASSES,
        DRIFT_CLASSES,
        NOTICE_ITEMS_MAX,
        SETTLEMENT_INGEST_WORKFLOW,
        ChunkCounts,
        ChunkRequest,
        DayTotalsRequest,
        DecisionRecord,
        DriftRate,
        DriftReport,
        IngestCarried,
        OperatorItem,
        OperatorItemsRequest,
        SettlementDecision,
        SettlementFileRequest,
        SettlementFileSummary,
        SettlementIngestInput,
        SettlementIngestResult,
        SettlementIngestStatus,
    )
    from schemas.units import BASIS_POINTS_PER_UNIT
    from workflows.metadata import StartMetadata, start_metadata
    from workflows.process import ProcessStage
    from workflows.reconciliation import DECIDE_UPDATE, STAGE_AWAITING_DECISIONS
    from workflows.steps import step, step_key, wait_for

STAGE_CHUNKS = "ingesting"


def settlement_workflow_id(provider: str, settlement_date: date) -> str:
    return f"settlement/{provider}/{settlement_date.isoformat()}"


def settlement_start_metadata(request: SettlementIngestInput) -> StartMetadata:
    day = request.settlement_date.isoformat()
    return start_metadata(
        f"Settlement file of the {request.provider} for {day}",
        {"provider": request.provider, "settlement date": day},
        "its chunks, processed across the providers queue's workers",
    )


def rate_bps(part: int, whole: int) -> int:
    """part / whole in basis points, rounded down (0 of nothing)."""
    return part * BASIS_POINTS_PER_UNIT // whole if whole else 0


@workflow.defn(name=SETTLEMENT_INGEST_WORKFLOW)
class SettlementIngest:
    def __init__(self) -> None:
        self._input: SettlementIngestInput | None = None
        self.progress = ProcessStage("starting", self._details)
        self._file: SettlementFileSummary | None = None
        self._chunks_done = 0
        self._counts = ChunkCounts()
        self._next_member = 0
        self._items: dict[str, OperatorItem] = {}
        self._deciding = False

    # ----- platform ---------------------------------------------------------

    @workflow.run
    async def run(self, request: SettlementIngestInput) -> SettlementIngestResult:
        self._input = request
        self.progress.search(PROVIDER.value_set(request.provider))
        result = await self._ingest(request)
        self._deciding = False
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    # ----- business steps ---------------------------------------------------

    async def _ingest(self, request: SettlementIngestInput) -> SettlementIngestResult:
        policy = request.policy
        carried = request.carried
        if carried is None:
            self.progress.enter("reading_manifest")
            self._file = await step(
                request,
                SettlementIngestActivities.record_file,
                SettlementFileRequest(
                    provider=request.provider,
                    settlement_date=request.settlement_date,
                    file_format=request.file_format,
                ),
            )
        else:
            self._file = carried.file
            self._next_member = carried.next_member
            self._chunks_done = carried.chunks_done
            self._counts = carried.counts
        file = self._file
        self.progress.enter(STAGE_CHUNKS)
        run_end = min(file.member_count, self._next_member + policy.chunks_per_run)
        lanes = [self._lane(request, run_end) for _ in range(policy.chunks_in_flight)]
        await asyncio.gather(*lanes)
        if self._next_member < file.member_count:
            workflow.continue_as_new(
                request.model_copy(
                    update={
                        "carried": IngestCarried(
                            file=file,
                            next_member=self._next_member,
                            chunks_done=self._chunks_done,
                            counts=self._counts,
                        )
                    }
                )
            )
        self.progress.enter("posting_day_totals")
        day_postings = await step(
            request,
            SettlementIngestActivities.post_day_totals,
            DayTotalsRequest(provider=request.provider, settlement_date=request.settlement_date),
        )
        card_postings = sum(self._counts.count(kind) for kind in CARD_POSTING_CLASSES)
        drift = sum(self._counts.count(kind) for kind in DRIFT_CLASSES)
        drift_rate = rate_bps(drift, card_postings)
        drift_by_class = [
            DriftRate(
                record_class=kind,
                records=self._counts.count(kind),
                rate_bps=rate_bps(self._counts.count(kind), card_postings),
            )
            for kind in sorted(DRIFT_CLASSES)
        ]
        await step(
            request,
            SettlementDecisionActivities.record_drift,
            DriftReport(
                provider=request.provider,
                settlement_date=request.settlement_date,
                counts=self._counts,
                drift_rate_bps=drift_rate,
                drift_by_class=drift_by_class,
                drift_alert_bps=policy.drift_alert_bps,
            ),
        )
        alerted = card_postings > 0 and drift_rate >= policy.drift_alert_bps
        if alerted:
            await self._alert(request, drift, drift_rate)
        not_held = await self._operator_decisions(request)
        self.progress.enter("drift" if drift else "settled")
        return SettlementIngestResult(
            file=file,
            chunks=self._chunks_done,
            counts=self._counts,
            day_postings=day_postings,
            drift_records=drift,
            drift_rate_bps=drift_rate,
            drift_by_class=drift_by_class,
            alerted=alerted,
            adjusted=self._decided("adjusted"),
            dismissed=self._decided("dismissed"),
            undecided=[
                item.record_id for item in self._items.values() if item.state == "undecided"
            ],
            items_not_held=not_held,
        )

    async def _operator_decisions(self, request: SettlementIngestInput) -> int:
        """Hold the day's items awaiting a decision, tell the operators once
        and wait for their decisions until the policy's wait ends; flag the
        ones left. Answers how many items await a decision beyond those held."""
        policy = request.policy
        found = await step(
            request,
            SettlementDecisionActivities.operator_items,
            OperatorItemsRequest(
                provider=request.provider,
                settlement_date=request.settlement_date,
                items_max=policy.decision_items_max,
            ),
        )
        if not found.items:
            return 0
        self._items = {item.record_id: item for item in found.items}
        await self._ask_operators(request, found.awaiting_total)
        self._deciding = True
        self.progress.enter(STAGE_AWAITING_DECISIONS)
        await wait_for(self._all_decided, policy.decision_wait_seconds)
        self._deciding = False
        for item in self._items.values():
            if item.state == "awaiting_decision":
                item.state = "undecided"
        return found.awaiting_total - len(found.items)

    def _all_decided(self) -> bool:
        return all(item.state != "awaiting_decision" for item in self._items.values())

    def _decided(self, state: str) -> int:
        return sum(1 for item in self._items.values() if item.state == state)

    async def _ask_operators(self, request: SettlementIngestInput, awaiting_total: int) -> None:
        workflow_id = workflow.info().workflow_id
        held = list(self._items.values())
        lines = [
            f"- {item.record_id}: {item.record_class.value}"
            + (f" of {item.transaction_id}" if item.transaction_id else "")
            + f", delta {item.delta_minor} {item.currency.value} minor"
            for item in held[:NOTICE_ITEMS_MAX]
        ]
        if len(held) > NOTICE_ITEMS_MAX:
            lines.append(
                f"- and {len(held) - NOTICE_ITEMS_MAX} more (`cardflow settlement status`)"
            )
        if awaiting_total > len(held):
            lines.append(
                f"{awaiting_total - len(held)} more wait for the day's next run"
                f" (this run holds {len(held)})."
            )
        day = request.settlement_date.isoformat()
        await step(
            request,
            ReconciliationProviderActivities.notify_operators,
            OperatorNotice(
                key=step_key("operator-items"),
                to=request.operators_email,
                subject=f"{workflow_id}: {len(held)} settlement records need a decision",
                body=(
                    f"Settlement ingest {workflow_id} found differences over the auto-fix"
                    " threshold:\n"
                    + "\n".join(lines)
                    + f"\nDecide each within {request.policy.decision_wait_seconds} s:"
                    f" cardflow settlement decide --date {day} ITEM --adjust|--dismiss"
                    " --reason TEXT --operator NAME"
                ),
            ),
        )

    async def _lane(self, request: SettlementIngestInput, run_end: int) -> None:
        """Take the next member not yet taken until this run's share is taken."""
        assert self._file is not None
        policy = request.policy
        while self._next_member < run_end:
            index = self._next_member
            self._next_member += 1
            result = await workflow.execute_activity_method(
                SettlementIngestActivities.ingest_chunk,
                ChunkRequest(
                    provider=request.provider,
                    file_id=self._file.file_id,
                    member_index=index,
                    batch_records=policy.batch_records,
                    auto_fix_threshold_minor=policy.auto_fix_threshold_minor,
                ),
                task_queue=request.providers_task_queue,
                start_to_close_timeout=timedelta(seconds=policy.chunk_timeout_seconds),
                heartbeat_timeout=timedelta(seconds=policy.chunk_heartbeat_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=policy.chunk_attempts_max,
                    non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
                ),
            )
            self._chunks_done += 1
            self._counts.add(result.counts)
            self.progress.show()

    async def _alert(self, request: SettlementIngestInput, drift: int, drift_rate: int) -> None:
        workflow_id = workflow.info().workflow_id
        lines = [
            f"- {kind.value}: {self._counts.count(kind)} records" for kind in sorted(DRIFT_CLASSES)
        ]
        await step(
            request,
            ReconciliationProviderActivities.notify_operators,
            OperatorNotice(
                key=step_key("drift-alert"),
                to=request.operators_email,
                subject=(
                    f"{workflow_id}: drift {drift_rate // 100}.{drift_rate % 100:02d}%"
                    " of card postings"
                    f" ({drift} records)"
                ),
                body=(
                    f"Settlement ingest {workflow_id} found drift over the policy's"
                    f" {request.policy.drift_alert_bps} bps:\n"
                    + "\n".join(lines)
                    + f"\n{self._counts.auto_fixed} fixed automatically,"
                    f" {self._counts.operator_items} left for a decision."
                ),
            ),
        )

    # ----- operators --------------------------------------------------------

    @workflow.update(name=DECIDE_UPDATE)
    async def decide(self, decision: SettlementDecision) -> OperatorItem:
        assert self._input is not None
        item = self._items[decision.item_id]
        # Taken now, before the activity runs, so that a second decision on
        # the item meanwhile is refused by the validator.
        adjust = decision.action is DecisionAction.ADJUST
        item.state = "adjusted" if adjust else "dismissed"
        recorded = await step(
            self._input,
            SettlementDecisionActivities.decide_item,
            DecisionRecord(
                provider=self._input.provider,
                settlement_date=self._input.settlement_date,
                decision=decision,
            ),
        )
        # The row's decision is the one that counts (a run before this one
        # may have recorded another).
        self._items[decision.item_id] = recorded
        self.progress.show()
        return recorded

    @decide.validator
    def _validate_decide(self, decision: SettlementDecision) -> None:
        item = self._items.get(decision.item_id)
        if item is None:
            raise refused(
                Refusal.NOT_FOUND,
                f"item_id: no item {decision.item_id!r} awaiting a decision in this ingest",
            )
        if not self._deciding or item.state != "awaiting_decision":
            raise refused(
                Refusal.WRONG_STATE,
                f"item_id: {decision.item_id!r} is {item.state}, not awaiting a decision",
            )

    @workflow.query
    def status(self) -> SettlementIngestStatus:
        assert self._input is not None
        return SettlementIngestStatus(
            stage=self.progress.stage,
            settlement_date=self._input.settlement_date,
            chunks_done=self._chunks_done,
            chunks_total=self._file.member_count if self._file else 0,
            records_done=self._counts.records,
            records_total=self._file.record_count if self._file else 0,
            counts=self._counts,
            items=list(self._items.values()),
        )

    # ----- current details --------------------------------------------------

    def _details(self) -> str:
        assert self._input is not None
        total = self._file.member_count if self._file else 0
        records_total = self._file.record_count if self._file else 0
        classes = ", ".join(
            f"{kind.value} {count.records}" for kind, count in sorted(self._counts.classes.items())
        )
        return (
            f"**{self._input.provider} {self._input.settlement_date.isoformat()}**: "
            f"{self.progress.stage}; chunks {self._chunks_done}/{total}, "
            f"records {self._counts.records}/{records_total}"
            + (f"; {classes}" if classes else "")
            + f"; {self._counts.auto_fixed} fixed, {self._counts.operator_items} for operators"
            + (
                f"; {self._decided('awaiting_decision')} of {len(self._items)} awaiting a decision"
                if self._items
                else ""
            )
        )
