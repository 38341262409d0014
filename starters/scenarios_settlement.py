"""The settlement ingest's scenario: a small synthetic day's file ingested
in a few chunks, with the differences the issuer simulator marks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.client import Client

from starters.scenario_steps import wait_until
from workers.settings import Settings

# A file of a few members: enough for chunks in parallel, small in history.
SCENARIO_VOLUME = 400
SCENARIO_MEMBER_RECORDS = 100
# Long enough for the scenario to decide two items; the rest are flagged.
SCENARIO_DECISION_SECONDS = 20
ADMIN_TIMEOUT_SECONDS = 10.0


async def _issuer_options(settings: Settings, options: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
        response = await http.put(
            f"{settings.providers_base_url}/_admin/options/issuer", json=options
        )
        response.raise_for_status()


async def settlement_ingested(client: Client, settings: Settings) -> list[str]:
    """A synthetic day's settlement file (records cardflow never saw, all of
    them drift) ingested in chunks across the providers queue, started by
    the daily schedule's action for that day: every record classified, the
    small differences fixed, the day's totals posted; of the items over the
    threshold, one adjusted and one dismissed by an operator, the rest
    flagged undecided when the wait ends."""
    from schemas.reconciliation import DecisionAction
    from schemas.settlement_ingest import (
        ScheduledSettlementInput,
        ScheduledSettlementResult,
        SettlementDecision,
        SettlementIngestPolicy,
        SettlementIngestResult,
    )
    from starters.settlement import SETTLEMENT_SCHEDULE_ID, decide, status
    from workflows.reconciliation import STAGE_AWAITING_DECISIONS
    from workflows.scheduled_settlement import (
        SCHEDULED_SETTLEMENT_WORKFLOW,
        scheduled_settlement_start_metadata,
    )

    day = datetime.now(UTC).date() - timedelta(days=400)
    await _issuer_options(
        settings,
        {
            "settlement_file_volume": SCENARIO_VOLUME,
            "settlement_file_member_records": SCENARIO_MEMBER_RECORDS,
            "settlement_file_seed": 7,
        },
    )
    queues = settings.task_queues
    driver = ScheduledSettlementInput(
        settlement_date=day,
        policy=SettlementIngestPolicy(
            chunks_in_flight=2, batch_records=50, decision_wait_seconds=SCENARIO_DECISION_SECONDS
        ),
        ledger_task_queue=queues.ledger,
        providers_task_queue=queues.providers,
        workflows_task_queue=queues.workflows,
    )
    driver_id = f"{SETTLEMENT_SCHEDULE_ID}-manual-{uuid.uuid4().hex[:8]}"
    metadata = scheduled_settlement_start_metadata(driver)
    try:
        started: ScheduledSettlementResult = await client.execute_workflow(
            SCHEDULED_SETTLEMENT_WORKFLOW,
            driver,
            id=driver_id,
            task_queue=queues.workflows,
            static_summary=metadata.summary,
            static_details=metadata.details,
            result_type=ScheduledSettlementResult,
        )

        async def awaiting() -> bool:
            return (await status(client, day)).stage == STAGE_AWAITING_DECISIONS

        await wait_until(awaiting, "the ingest waits for decisions")
        first, second, *_ = (await status(client, day)).items
        for item, action in ((first, DecisionAction.ADJUST), (second, DecisionAction.DISMISS)):
            await decide(
                client,
                day,
                SettlementDecision(
                    item_id=item.record_id, action=action, operator="ana", reason="scenario"
                ),
            )
        result = await client.get_workflow_handle(
            started.workflow_id, result_type=SettlementIngestResult
        ).result()
    finally:
        await _issuer_options(settings, {"settlement_file_volume": 0})
    if result.counts.records != result.file.record_count or not result.day_postings:
        raise RuntimeError(f"the day's file was not ingested whole: {result}")
    if (result.adjusted, result.dismissed) != (1, 1) or not result.undecided:
        raise RuntimeError(f"the day's decisions were not taken: {result}")
    return [started.workflow_id, driver_id]
