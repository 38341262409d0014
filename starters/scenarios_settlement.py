"""The settlement ingest's scenario: a small synthetic day's file ingested
in a few chunks, with the differences the issuer simulator marks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.client import Client

from workers.settings import Settings

# A file of a few members: enough for chunks in parallel, small in history.
SCENARIO_VOLUME = 400
SCENARIO_MEMBER_RECORDS = 100
ADMIN_TIMEOUT_SECONDS = 10.0


async def _issuer_options(settings: Settings, options: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=ADMIN_TIMEOUT_SECONDS) as http:
        response = await http.put(
            f"{settings.providers_base_url}/_admin/options/issuer", json=options
        )
        response.raise_for_status()


async def settlement_ingested(client: Client, settings: Settings) -> str:
    """A synthetic day's settlement file (records cardflow never saw, all of
    them drift) ingested in chunks across the providers queue: every record
    classified, the small differences fixed, the day's totals posted."""
    from schemas.settlement_ingest import SettlementIngestPolicy
    from starters.settlement import settlement_input, start
    from workflows.settlement import settlement_workflow_id

    day = datetime.now(UTC).date() - timedelta(days=400)
    await _issuer_options(
        settings,
        {
            "settlement_file_volume": SCENARIO_VOLUME,
            "settlement_file_member_records": SCENARIO_MEMBER_RECORDS,
            "settlement_file_seed": 7,
        },
    )
    try:
        request = settlement_input(
            settings.task_queues,
            day,
            SettlementIngestPolicy(chunks_in_flight=2, batch_records=50),
        )
        workflow_id = f"{settlement_workflow_id('issuer', day)}/scenario-{uuid.uuid4().hex[:8]}"
        handle = await start(client, settings.task_queues, request, workflow_id=workflow_id)
        result = await handle.result()
    finally:
        await _issuer_options(settings, {"settlement_file_volume": 0})
    if result.counts.records != result.file.record_count or not result.day_postings:
        raise RuntimeError(f"the day's file was not ingested whole: {result}")
    return workflow_id
